"""Statistical quality and mechanics of the sampler's counter-based generator.

``jaxreg._sampler`` draws one 32-bit word per mask element from the element's
counter with a keyed three-round Feistel network (see its module docstring). These
tests check the words themselves, not only the masks:

* byte-frequency chi-square (each byte position, 255 degrees of freedom): the
  statistic must stay below the chi-square quantile at ``1 - 1e-6``;
* bit balance of each of the 32 bit positions: ones within 5 binomial sigmas;
* serial correlation (lags 1, 2, 3 and one row) and cross-key correlation:
  Pearson ``|r| < 5 / sqrt(n)``; the cross-key check at *every* circular lag
  (``2**19`` lags) uses ``6.5 / sqrt(n)``, since the maximum of ``2**19``
  near-Gaussian correlations reaches about 5.3 sigma (false alarm ``4e-5``);
* marginal uniformity over keys (the same index under ``2**16`` keys);
* the battery of ``tests/_randomness.py`` (monobit, bit positions, byte
  frequency, GF(2) rank of 32x32 and 128x128 bit matrices, adjacent xor,
  birthday collisions), each passing at ``p >= 1e-6`` (two-sided), on one mask's
  words, on words of split keys interleaved, on the interleaved words of seeds
  one bit apart, and on keep bits at rates 0.5 and 0.1 (rate 0.1 through Elias'
  extractor, whose exact fairness is checked here too).

Each bound fails for a correct generator with probability below ``2e-4`` (the
family-wise rate is stated per test); the seeds are fixed, so the suite is
deterministic. Negative controls show the tests have power: the all-lag
cross-key test catches masks of two keys that are index permutations of each
other, and the battery catches both faults of the generator used before (kept in
``_randomness.previous_hash``): no repeated words (a bijection of the index) and
GF(2)-linear relations between the words of seeds one bit apart, at the sizes
the tests use.

The remaining tests check the regenerate-in-backward path of ``masked_scale``
(used by ``jaxreg.dropout``): it agrees with ``keep_mask`` bit for bit, keeps only
seed-sized residuals, and works under vmap over keys, traced rates, scan, remat
and jvp; plus the 64-bit counters of masks with more than ``2**32`` elements.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _randomness import (
    battery,
    birthday,
    elias,
    elias_table,
    interleave,
    matrix_rank,
    pack_bits,
    previous_hash,
)
from jax.test_util import check_grads
from scipy import stats

import jaxreg
from jaxreg._sampler import _bits, _counter, _hash, _mix, _seed, keep_mask, masked_scale

N = 2**19
KEY = jax.random.key(7)


@functools.partial(jax.jit, static_argnums=1)
def _words(seed, shape):
    return _bits(seed, shape)


def _np_words(key, shape=(N,)):
    return np.asarray(_words(_seed(key), shape)).astype(np.uint64)


def _standardized(u):
    v = u.astype(np.float64) / 2.0**32 - 0.5
    return v / math.sqrt(1 / 12)


def _max_abs_cross_corr(a, b):
    """Max over all circular lags of |corr(a[i], b[i + lag])| for standardized a, b."""
    fa = np.fft.rfft(a - a.mean())
    fb = np.fft.rfft(b - b.mean())
    cc = np.fft.irfft(np.conj(fa) * fb, n=a.size) / (a.size * a.std() * b.std())
    return float(np.abs(cc).max())


# ----------------------------------------------------------------------------
# Statistical quality of the words.


@pytest.mark.parametrize("shape", [(N,), (512, 2048), (16, 256, 256)])
def test_byte_frequency_chi_square(shape):
    u = _np_words(KEY, shape).ravel()
    limit = stats.chi2.ppf(1 - 1e-6, 255)  # 4 byte positions x 3 shapes: 1.2e-5
    for byte in range(4):
        counts = np.bincount(((u >> (8 * byte)) & 0xFF).astype(np.int64), minlength=256)
        expected = u.size / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < limit, f"byte {byte}: chi2 {chi2:.1f} >= {limit:.1f}"


def test_bit_balance_per_position():
    u = _np_words(jax.random.key(11), (4 * N,))
    n = u.size
    sigma = math.sqrt(n) / 2
    for bit in range(32):  # 32 positions at 5 sigma: family-wise 2e-5
        ones = int(((u >> bit) & 1).sum())
        assert abs(ones - n / 2) < 5 * sigma, f"bit {bit}: {ones} ones of {n}"


@pytest.mark.parametrize("lag", [1, 2, 3, 2048])
def test_serial_correlation(lag):
    v = _standardized(_np_words(jax.random.key(3), (512, 2048)).ravel())
    r = float(np.corrcoef(v[:-lag], v[lag:])[0, 1])
    assert abs(r) < 5 / math.sqrt(v.size), f"lag {lag}: r = {r:.2e}"


def test_serial_correlation_of_masks():
    m = np.asarray(keep_mask(jax.random.key(5), (4 * N,), 0.1), np.float64)
    r = float(np.corrcoef(m[:-1], m[1:])[0, 1])
    assert abs(r) < 5 / math.sqrt(m.size), r


def test_cross_key_correlation_all_lags():
    a = _standardized(_np_words(jax.random.key(0)))
    b = _standardized(_np_words(jax.random.key(1)))
    assert abs(float(np.corrcoef(a, b)[0, 1])) < 5 / math.sqrt(N)
    assert _max_abs_cross_corr(a, b) < 6.5 / math.sqrt(N)


@pytest.mark.parametrize("word", [0, 1])
@pytest.mark.parametrize("bit", [0, 1, 16, 31])
def test_seeds_one_bit_apart_are_unrelated_at_every_lag(word, bit):
    # The worst case for a keyed hash: seeds that differ in a single bit.
    seed = _seed(jax.random.key(42))
    flipped = seed.at[word].set(seed[word] ^ np.uint32(1 << bit))
    a = _standardized(np.asarray(_words(seed, (N,))).astype(np.uint64))
    b = _standardized(np.asarray(_words(flipped, (N,))).astype(np.uint64))
    assert _max_abs_cross_corr(a, b) < 6.5 / math.sqrt(N)


@pytest.mark.parametrize("weakness", ["xor_first_round", "key_multiplier"])
def test_negative_control_weak_constructions_are_caught(weakness):
    # Two weak keyings the all-lag statistic must flag (else the test above has no
    # power): g(g(i ^ k0) ^ k1), where flipping bit 0 of k0 maps word i to word
    # i ^ 1; and g(g(i * (k2 | 1) + k0) ^ k1), where flipping bit 31 of k2 leaves
    # every even index unchanged.
    def weak(seed, n):
        i = jnp.arange(n, dtype=jnp.uint32)
        if weakness == "xor_first_round":
            return _mix(_mix(i ^ seed[0]) ^ seed[1])
        return _mix(_mix(i * (seed[2] | np.uint32(1)) + seed[0]) ^ seed[1])

    seed = jax.random.bits(jax.random.key(42), (3,), jnp.uint32)
    word, bit = (0, 0) if weakness == "xor_first_round" else (2, 31)
    flipped = seed.at[word].set(seed[word] ^ np.uint32(1 << bit))
    a = _standardized(np.asarray(weak(seed, N)).astype(np.uint64))
    b = _standardized(np.asarray(weak(flipped, N)).astype(np.uint64))
    assert _max_abs_cross_corr(a, b) > 0.4


def test_marginal_uniform_over_keys():
    # The word of a fixed index is uniform over keys (exact in theory: it is a
    # bijection of k1). 2**16 keys, 8 positions, top byte: chi2 per position.
    keys = jax.random.split(jax.random.key(9), 2**16)
    u = jax.vmap(lambda k: _bits(_seed(k), (8,)))(keys)
    u = np.asarray(u).astype(np.uint64)
    limit = stats.chi2.ppf(1 - 1e-6, 255)
    for pos in range(8):
        counts = np.bincount((u[:, pos] >> 24).astype(np.int64), minlength=256)
        expected = u.shape[0] / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < limit, f"position {pos}: chi2 {chi2:.1f}"


# ----------------------------------------------------------------------------
# The battery of tests/_randomness.py (each p-value two-sided, fails below 1e-6;
# the number of p-values per test is stated, family-wise about that times 1e-6).


def _assert_battery(words, **kw):
    results = battery(words, **kw)
    failed = [r for r in results if not r.passed]
    assert not failed, failed


def test_battery_on_one_mask():
    # 2**20 words of a (1024, 1024) mask: 7 p-values, birthday included (a
    # bijection of the index, like the previous generator, gives p = 5e-56).
    _assert_battery(_np_words(jax.random.key(21), (1024, 1024)).astype(np.uint32))


def test_battery_across_split_keys():
    # Word j of 128 split keys in turn, 4096 positions (2**19 words, 6 p-values).
    keys = jax.random.split(jax.random.key(22), 128)
    u = jax.vmap(lambda k: _words(_seed(k), (4096,)))(keys)
    _assert_battery(np.asarray(u).T.ravel())


def _related_pair(words_of, word, bit, n=2**16):
    seed = _seed(jax.random.key(23))
    flipped = seed.at[word].set(seed[word] ^ np.uint32(1 << bit))
    return interleave(np.asarray(words_of(seed, n)), np.asarray(words_of(flipped, n)))


def _new_words(seed, n):
    return _words(seed, (n,))


def _previous_words(seed, n):
    return previous_hash(seed, jnp.arange(n, dtype=jnp.uint32))


@pytest.mark.parametrize(("word", "bit"), [(0, 0), (0, 31), (1, 0), (1, 16), (1, 31)])
def test_seeds_one_bit_apart_interleaved(word, bit):
    # 2**17 words (2**16 of each seed, alternating), 6 p-values: the GF(2) rank
    # of 128x128 matrices sees a linear relation between the two streams.
    _assert_battery(_related_pair(_new_words, word, bit))


def test_related_seed_control_fails_with_the_previous_generator():
    # Same size as above: every 128x128 matrix of the previous generator's
    # interleaved words (second seed word, bit 31) is rank-deficient, so the test
    # above has power; its words of one mask never repeat (birthday p < 1e-50).
    rank = matrix_rank(_related_pair(_previous_words, 1, 31), 128)
    assert rank.p < 1e-50, rank
    one_mask = np.asarray(_previous_words(_seed(jax.random.key(21)), 2**20))
    assert birthday(one_mask).statistic == 0
    assert birthday(one_mask).p < 1e-50


def test_keep_bits_at_rate_half_and_tenth():
    # Rate 0.5: the keep bits packed 32 a word (2**18 words). Rate 0.1: Elias'
    # extraction of the keep bits in blocks of 16 (independent fair bits exactly
    # when the mask elements are independent Bernoulli draws), 2**25 elements.
    key = jax.random.key(24)
    half = pack_bits(np.asarray(keep_mask(key, (2**23,), 0.5)))
    _assert_battery(half, rank_sizes=(32,))
    tenth = elias(np.asarray(keep_mask(key, (2**25,), 0.1)))
    _assert_battery(tenth, rank_sizes=(32,))


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_elias_extractor_is_exact(n):
    # The extractor used on biased keep bits: among the C(n, w) blocks of weight
    # w, those giving e bits give each e-bit value exactly once (so the output
    # is fair given its length), and the lengths are the powers of two in the
    # binary expansion of C(n, w), each once.
    values, lengths = elias_table(n)
    weight = np.array([bin(b).count("1") for b in range(2**n)])
    for w in range(n + 1):
        size = math.comb(n, w)
        parts = [e for e in range(size.bit_length()) if size >> e & 1]
        for e in range(n + 1):
            got = np.sort(values[(weight == w) & (lengths == e)])
            expected = np.arange(2**e) if e in parts else np.arange(0)
            np.testing.assert_array_equal(got, expected, err_msg=f"w={w}, e={e}")


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_every_key_impl_and_legacy_keys(impl):
    typed = jax.random.key(3, impl=impl)
    if impl != "unsafe_rbg":  # raw 4-word keys are read as rbg unless configured
        legacy = jax.random.key_data(typed)
        same = keep_mask(typed, (64,), 0.5) == keep_mask(legacy, (64,), 0.5)
        assert bool(same.all())
    m = keep_mask(typed, (N,), 0.3)
    kept, p = int(m.sum()), 0.7
    assert abs(kept - N * p) < 4 * math.sqrt(N * p * (1 - p))


# ----------------------------------------------------------------------------
# masked_scale: the mask regenerated from the seed words.


def _reference(key, x, rate, scale, dims=()):
    m = keep_mask(key, x.shape, rate, broadcast_dims=dims)
    y = x.astype(jnp.float32) * scale
    return jnp.where(m, y, 0).astype(x.dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("dims", [(), (0,), (1, 2)])
def test_masked_scale_equals_keep_mask(dtype, dims):
    x = jax.random.normal(jax.random.key(1), (5, 6, 7)).astype(dtype)
    key = jax.random.key(2)
    got = masked_scale(key, x, 0.3, 1 / 0.7, broadcast_dims=dims)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, _reference(key, x, 0.3, 1 / 0.7, dims))
    np.testing.assert_array_equal(
        jax.jit(lambda k, x: masked_scale(k, x, 0.3, 1 / 0.7, broadcast_dims=dims))(
            key, x
        ),
        got,
    )


def test_dropout_matches_keep_mask_and_traced_rate():
    x = jax.random.normal(jax.random.key(1), (33, 17))
    key = jax.random.key(4)
    p = jaxreg.keep_probability(0.25)
    want = jnp.where(keep_mask(key, x.shape, 0.25), x / p, 0)
    np.testing.assert_array_equal(jaxreg.dropout(key, x, 0.25), want)
    traced = jax.jit(lambda r: jaxreg.dropout(key, x, r))(0.25)
    np.testing.assert_allclose(traced, want, rtol=1e-6)
    np.testing.assert_array_equal(traced != 0, want != 0)
    assert bool((jax.jit(lambda r: jaxreg.dropout(key, x, r))(1.0) == 0).all())


def test_residuals_are_seed_words_not_masks():
    # Differentiating dropout keeps only scalars and the 2 seed words: no
    # residual with as many elements as x (neither a mask nor random bits).
    x = jnp.ones((64, 128))
    key = jax.random.key(0)
    _, vjp = jax.vjp(lambda x: jaxreg.dropout(key, x, 0.1), x)
    sizes = [np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp)]
    assert max(sizes) <= 2, sizes


def test_gradients_regenerate_the_same_mask():
    x = jax.random.normal(jax.random.key(1), (16, 8))
    key = jax.random.key(3)
    p = jaxreg.keep_probability(0.4)
    g = jax.grad(lambda x: jnp.sum(jaxreg.dropout(key, x, 0.4) * x))(x)
    m = keep_mask(key, x.shape, 0.4)
    np.testing.assert_allclose(g, jnp.where(m, 2 * x / p, 0), rtol=1e-6)
    check_grads(lambda x: jaxreg.dropout(key, x, 0.4), (x,), order=2)


def test_vmap_over_keys_grad_scan_and_remat():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(jax.random.key(1), (4, 10, 3))
    f = lambda k, x: jaxreg.dropout(k, x, 0.5)  # noqa: E731
    batched = jax.vmap(f)(keys, x)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], f(keys[i], x[i]))
    gb = jax.vmap(jax.grad(lambda k, x: jnp.sum(f(k, x) ** 2), argnums=1))(keys, x)
    for i in range(4):
        np.testing.assert_array_equal(gb[i], 2 * f(keys[i], x[i]) / 0.5)

    def body(h, k):
        return jax.checkpoint(f)(k, h), None

    out, _ = jax.lax.scan(body, x[0], keys)
    ref = x[0]
    for k in keys:
        ref = f(k, ref)
    np.testing.assert_array_equal(out, ref)
    g = jax.grad(lambda h: jnp.sum(jax.lax.scan(body, h, keys)[0]))(x[0])
    assert g.shape == x[0].shape and bool(jnp.isfinite(g).all())


def test_forward_mode():
    x = jax.random.normal(jax.random.key(1), (8,))
    key = jax.random.key(3)
    y, t = jax.jvp(lambda x: jaxreg.dropout(key, x, 0.5), (x,), (jnp.ones(8),))
    np.testing.assert_array_equal(t, jnp.where(y != 0, 2.0, 0.0))
    h = jax.hessian(lambda x: jnp.sum(jaxreg.dropout(key, x, 0.5) ** 2))(x)
    np.testing.assert_allclose(jnp.diag(h), jnp.where(y != 0, 8.0, 0.0))


def test_zoneout_keeps_only_seed_words_and_matches_keep_mask():
    h_prev = jax.random.normal(jax.random.key(1), (32, 16))
    h_new = jax.random.normal(jax.random.key(2), (32, 16))
    key = jax.random.key(6)
    m = keep_mask(key, h_new.shape, 0.3)
    out = jaxreg.zoneout(key, h_prev, h_new, 0.3)
    np.testing.assert_array_equal(out, jnp.where(m, h_new, h_prev))
    _, vjp = jax.vjp(lambda a, b: jaxreg.zoneout(key, a, b, 0.3), h_prev, h_new)
    sizes = [np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp)]
    assert max(sizes) <= 2, sizes
    g_prev, g_new = vjp(jnp.ones_like(out))
    np.testing.assert_array_equal(g_new, m.astype(jnp.float32))
    np.testing.assert_array_equal(g_prev, (~m).astype(jnp.float32))


# ----------------------------------------------------------------------------
# Counters of masks with more than 2**32 elements: (hi, lo) row-major indices.


def test_counter_of_a_huge_mask_block():
    # A block of a (2**20, 2**13, 3) mask (3 * 2**33 elements): hi is the index
    # along axis 0, lo the row-major index over axes 1 and 2.
    block = ((2**20, 2**13, 3), (jnp.uint32(70_000), 5, 0))
    hi, lo = _counter((2, 3, 3), block=block)
    i, j, k = np.meshgrid(np.arange(2), np.arange(3), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(hi, 70_000 + i)
    np.testing.assert_array_equal(lo, (5 + j) * 3 + k)
    seed = _seed(KEY)
    np.testing.assert_array_equal(
        _bits(seed, (2, 3, 3), block=block), _hash(seed, lo, hi)
    )


def test_counter_of_a_mask_of_at_most_2_32_elements_is_the_linear_index():
    hi, lo = jax.eval_shape(lambda: _counter((2**16, 2**16)))  # exactly 2**32
    assert hi is None
    assert lo.shape == (2**16, 2**16)
    hi, lo = _counter((4, 5))
    np.testing.assert_array_equal(lo, np.arange(20).reshape(4, 5))
    seed = _seed(KEY)
    zeros = jnp.zeros(20, jnp.uint32)
    np.testing.assert_array_equal(
        _hash(seed, lo.ravel()), _hash(seed, lo.ravel(), zeros)
    )


def test_rows_of_a_huge_mask_are_unrelated():
    # Words at (hi, lo) and (hi + 1, lo): uncorrelated at every lag, and the
    # battery passes on them interleaved (6 p-values).
    seed = _seed(jax.random.key(25))
    lo = jnp.arange(N, dtype=jnp.uint32)
    rows = [np.asarray(_hash(seed, lo, jnp.full(N, h, jnp.uint32))) for h in (0, 1)]
    a, b = (_standardized(r.astype(np.uint64)) for r in rows)
    assert _max_abs_cross_corr(a, b) < 6.5 / math.sqrt(N)
    _assert_battery(interleave(rows[0][: N // 4], rows[1][: N // 4]))


def test_huge_masks_trace_and_bad_shapes_are_rejected():
    key = jax.random.key(0)
    out = jax.eval_shape(lambda: keep_mask(key, (2**17, 2**16), 0.5))
    assert out.shape == (2**17, 2**16)
    with pytest.raises(ValueError, match="two 32-bit row-major indices"):
        _counter((2**33,))
