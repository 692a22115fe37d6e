"""Tests for jaxreg.augment: mixup, cutmix, cutout, random_shift."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxreg

KEY = jax.random.key(0)
SHAPES = [(6, 20), (6, 20, 3), (6, 10, 12, 2)]


def _onehot(n):
    return jax.nn.one_hot(jnp.arange(n), n)


# --------------------------------------------------------------------------- mixup
def test_mixup_mixes_inputs_and_labels_with_the_same_coefficient():
    # x == y == identity: the mixed inputs must equal the mixed labels exactly.
    eye = _onehot(12)
    for i in range(5):
        xm, ym = jaxreg.mixup(jax.random.key(i), eye, eye, alpha=0.5)
        np.testing.assert_allclose(xm, ym, rtol=0, atol=0)
        np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
        # each row mixes exactly its own example and one partner
        assert bool(jnp.all((ym > 0).sum(-1) <= 2))


def _mixup_lambda(key, alpha, n=12):
    # With x = identity, x_mixed[i, i] = lam for every non-fixed point of the
    # permutation and 1 for fixed points; the identity permutation has
    # probability 1/12! (about 2e-9).
    xm, _ = jaxreg.mixup(key, _onehot(n), _onehot(n), alpha=alpha)
    return jnp.min(jnp.diagonal(xm))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 3.0])
def test_mixup_coefficient_is_beta_distributed(alpha):
    n = 20_000
    keys = jax.random.split(jax.random.key(7), n)
    lam = np.asarray(jax.jit(jax.vmap(lambda k: _mixup_lambda(k, alpha)))(keys))
    mean, var = 0.5, 1.0 / (4 * (2 * alpha + 1))  # Beta(a, a) moments
    assert abs(lam.mean() - mean) < 4 * math.sqrt(var / n)
    # Chi-square goodness of fit on 20 equiprobable Beta(a, a) bins; reject only
    # at p < 1e-4. (Binned rather than Kolmogorov-Smirnov: for small alpha about
    # 2% of float32 draws round to exactly 1.0, an atom that KS would flag.)
    edges = stats.beta(alpha, alpha).ppf(np.linspace(0, 1, 21))
    counts = np.histogram(lam, bins=edges)[0]
    assert counts.sum() == n
    assert stats.chisquare(counts).pvalue > 1e-4
    # sample variance within 4 sigma (fourth central moment of Beta(a, a))
    mu4 = 3 * (2 * alpha + 1) * var**2 / (2 * alpha + 3)
    assert abs(lam.var(ddof=1) - var) < 4 * math.sqrt((mu4 - var**2) / n)


def test_mixup_partner_is_a_uniform_permutation():
    # Each example's partner is uniform over the batch: P(partner of 0 is j) = 1/4.
    n = 8000
    keys = jax.random.split(jax.random.key(3), n)
    eye = _onehot(4)
    ym = jax.vmap(lambda k: jaxreg.mixup(k, eye, eye, alpha=1.0)[1])(keys)
    partner = np.asarray(jnp.argmax(ym[:, 0].at[:, 0].set(-1.0), -1))
    fixed = np.asarray(ym[:, 0, 0] == 1.0)
    partner = np.where(fixed, 0, partner)
    counts = np.bincount(partner, minlength=4) / n
    assert np.all(np.abs(counts - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)), counts


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_mixup_shapes_dtypes_and_determinism(dtype):
    x = jax.random.normal(KEY, (5, 3, 2)).astype(dtype)
    y = _onehot(5).astype(dtype)
    xm, ym = jaxreg.mixup(jax.random.key(1), x, y, alpha=1.0)
    assert xm.shape == x.shape and xm.dtype == dtype
    assert ym.shape == y.shape and ym.dtype == dtype
    xm2, ym2 = jaxreg.mixup(jax.random.key(1), x, y, alpha=1.0)
    assert bool((xm == xm2).all() and (ym == ym2).all())
    xm3, _ = jaxreg.mixup(jax.random.key(2), x, y, alpha=1.0)
    assert not bool((xm == xm3).all())


def test_mixup_soft_labels_still_sum_to_one():
    logits = jax.random.normal(KEY, (16, 7))
    y = jax.nn.softmax(logits)
    _, ym = jaxreg.mixup(jax.random.key(4), jnp.ones((16, 2)), y, alpha=0.3)
    np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-5)


# -------------------------------------------------------------------------- cutmix
@pytest.mark.parametrize("shape", SHAPES)
def test_cutmix_label_weights_equal_pixel_shares(shape):
    # Example i is filled with the value i, so each mixed example's pixels say
    # where they came from; its label must be the histogram of its pixels.
    n = shape[0]
    x = jnp.broadcast_to(
        jnp.arange(n, dtype=jnp.float32).reshape((n,) + (1,) * (len(shape) - 1)),
        shape,
    )
    y = _onehot(n)
    for seed in range(8):
        xm, ym = jaxreg.cutmix(jax.random.key(seed), x, y, alpha=1.0)
        src = xm.astype(jnp.int32).reshape(n, -1)
        share = jax.nn.one_hot(src, n).mean(1)
        np.testing.assert_allclose(ym, share, atol=1e-6)
        np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
        # one box for the whole batch: pasted positions agree across examples
        pasted = np.asarray(src != jnp.arange(n)[:, None])
        movers = pasted.any(1)
        if movers.sum() > 1:
            rows = pasted[movers]
            assert (rows == rows[0]).all()


def test_cutmix_box_is_a_rectangle_spanning_all_channels():
    n, h, w, c = 4, 16, 12, 3
    x = jnp.zeros((n, h, w, c)).at[1:].set(1.0)  # example 0 zeros, others ones
    y = _onehot(n)
    for seed in range(10):
        xm, _ = jaxreg.cutmix(jax.random.key(seed), x, y, alpha=1.0)
        box = np.asarray(xm[0] == 1.0)  # what example 0 received
        assert (box == box[..., :1]).all()  # all channels together
        b = box[..., 0]
        if b.any():
            rows, cols = np.where(b.any(1))[0], np.where(b.any(0))[0]
            assert b[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
            assert b.sum() == len(rows) * len(cols)


def test_cutmix_dtypes_jit_vmap_and_determinism():
    x = jax.random.normal(KEY, (4, 8, 8, 1)).astype(jnp.bfloat16)
    y = _onehot(4)
    xm, ym = jaxreg.cutmix(KEY, x, y, alpha=1.0)
    assert xm.dtype == jnp.bfloat16 and xm.shape == x.shape and ym.dtype == y.dtype
    xj, yj = jax.jit(lambda k: jaxreg.cutmix(k, x, y, alpha=1.0))(KEY)
    assert bool((xm == xj).all() and (ym == yj).all())
    keys = jax.random.split(KEY, 3)
    xv, yv = jax.vmap(lambda k: jaxreg.cutmix(k, x, y, alpha=1.0))(keys)
    x1, y1 = jaxreg.cutmix(keys[1], x, y, alpha=1.0)
    assert bool((xv[1] == x1).all() and (yv[1] == y1).all())


def test_mixing_under_jit_with_traced_alpha():
    x = jnp.ones((4, 10))
    y = _onehot(4)
    f = jax.jit(lambda a: jaxreg.mixup(KEY, x, y, alpha=a))
    np.testing.assert_allclose(f(0.7)[1], jaxreg.mixup(KEY, x, y, alpha=0.7)[1])
    g = jax.jit(lambda a: jaxreg.cutmix(KEY, x, y, alpha=a))
    np.testing.assert_allclose(g(0.7)[1], jaxreg.cutmix(KEY, x, y, alpha=0.7)[1])


# -------------------------------------------------------------------------- cutout
def test_cutout_1d_patches_are_contiguous_sized_and_independent():
    n, length, size = 4000, 20, 5
    y = np.asarray(jaxreg.cutout(KEY, jnp.ones((n, length)), size=size))
    zero = y == 0
    counts = zero.sum(1)
    assert (
        counts.max() == size and counts.min() >= size - size // 2 and counts.min() > 0
    )
    for row in zero[:200]:
        idx = np.where(row)[0]
        assert (np.diff(idx) == 1).all()
    # centre uniform over the 20 positions: a full-size patch occurs unless the
    # patch is clipped; clipped at the left iff centre < 2, right iff centre > 17.
    full = (counts == size).mean()
    p_full = (length - 2 - 2) / length
    assert abs(full - p_full) < 4 * math.sqrt(p_full * (1 - p_full) / n)
    assert not (zero == zero[0]).all()  # independent per example


def test_cutout_2d_square_all_channels_and_tuple_size():
    x = jnp.ones((50, 16, 16, 3))
    y = np.asarray(jaxreg.cutout(jax.random.key(2), x, size=(4, 6)))
    zero = y == 0
    assert (zero == zero[..., :1]).all()
    z = zero[..., 0]
    for b in z:
        rows, cols = np.where(b.any(1))[0], np.where(b.any(0))[0]
        assert len(rows) <= 4 and len(cols) <= 6
        assert b.sum() == len(rows) * len(cols)
    assert (z.sum((1, 2)) == 24).any()


@pytest.mark.parametrize("shape", SHAPES)
def test_cutout_dtype_shape_determinism_jit(shape):
    x = jax.random.normal(KEY, shape).astype(jnp.float16)
    a = jaxreg.cutout(jax.random.key(1), x, size=3)
    assert a.shape == x.shape and a.dtype == jnp.float16
    b = jax.jit(lambda k: jaxreg.cutout(k, x, size=3))(jax.random.key(1))
    assert bool((a == b).all())
    c = jaxreg.cutout(jax.random.key(9), x, size=3)
    assert not bool((a == c).all())
    # untouched values are passed through exactly
    kept = a != 0
    assert bool((a[kept] == x[kept]).all())


# -------------------------------------------------------------------- random_shift
def _find_shift(row, ref, max_shift):
    found = [s for s in range(-max_shift, max_shift + 1) if np.array_equal(row, ref(s))]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("mode", ["constant", "edge", "wrap", "reflect"])
def test_random_shift_1d_matches_numpy_pad_and_offsets_are_uniform(mode):
    n, length, m = 3000, 11, 3
    x = jnp.broadcast_to(jnp.arange(1.0, length + 1), (n, length))
    y = np.asarray(jaxreg.random_shift(KEY, x, max_shift=m, mode=mode))
    base = np.arange(1.0, length + 1)
    padded = np.pad(base, m, mode=mode)

    def ref(s):  # output[t] = input[t - s]
        return padded[m - s : m - s + length]

    shifts = np.asarray([_find_shift(r, ref, m) for r in y])
    counts = np.bincount(shifts + m, minlength=2 * m + 1) / n
    p = 1 / (2 * m + 1)
    assert np.all(np.abs(counts - p) < 4 * math.sqrt(p * (1 - p) / n)), counts


def test_random_shift_2d_and_channels():
    n, h, w, c = 40, 6, 7, 2
    base = np.arange(h * w * c, dtype=np.float32).reshape(h, w, c) + 1
    x = jnp.broadcast_to(jnp.asarray(base), (n, h, w, c))
    y = np.asarray(jaxreg.random_shift(KEY, x, max_shift=(2, 1), mode="wrap"))
    seen = set()
    for r in y:
        hits = [
            (a, b)
            for a in range(-2, 3)
            for b in range(-1, 2)
            if np.array_equal(r, np.roll(base, (a, b), axis=(0, 1)))
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 5  # independent per example, both axes move
    z = np.asarray(jaxreg.random_shift(KEY, x, max_shift=0))
    np.testing.assert_array_equal(z, x)


def test_random_shift_dtype_jit_vmap():
    x = jax.random.normal(KEY, (3, 9, 2)).astype(jnp.bfloat16)
    a = jaxreg.random_shift(jax.random.key(5), x, max_shift=2)
    assert a.dtype == jnp.bfloat16 and a.shape == x.shape
    b = jax.jit(lambda k: jaxreg.random_shift(k, x, max_shift=2))(jax.random.key(5))
    assert bool((a == b).all())
    keys = jax.random.split(KEY, 4)
    v = jax.vmap(lambda k: jaxreg.random_shift(k, x, max_shift=2))(keys)
    assert bool((v[2] == jaxreg.random_shift(keys[2], x, max_shift=2)).all())


# ----------------------------------------------------------------------- bad input
def test_bad_inputs():
    x = jnp.ones((4, 8))
    y = _onehot(4)
    for f in (jaxreg.mixup, jaxreg.cutmix):
        with pytest.raises(ValueError, match="alpha"):
            f(KEY, x, y, alpha=0.0)
        with pytest.raises(ValueError, match="alpha"):
            f(KEY, x, y, alpha=float("nan"))
        with pytest.raises(TypeError, match="one_hot"):
            f(KEY, x, jnp.arange(4), alpha=1.0)
        with pytest.raises(ValueError, match="batch size"):
            f(KEY, x, _onehot(5), alpha=1.0)
        with pytest.raises(TypeError, match="`x`"):
            f(KEY, jnp.ones((4, 8), jnp.int32), y, alpha=1.0)
        with pytest.raises(ValueError, match="`key` is None"):
            f(None, x, y, alpha=1.0)
    with pytest.raises(ValueError, match="rank"):
        jaxreg.cutmix(KEY, jnp.ones((4,)), y, alpha=1.0)
    with pytest.raises(ValueError, match="rank"):
        jaxreg.cutout(KEY, jnp.ones((2, 3, 4, 5, 6)), size=2)
    with pytest.raises(ValueError, match="size"):
        jaxreg.cutout(KEY, x, size=0)
    with pytest.raises(TypeError, match="size"):
        jaxreg.cutout(KEY, x, size=2.0)
    with pytest.raises(ValueError, match="size.*2 ints"):
        jaxreg.cutout(KEY, jnp.ones((2, 5, 5, 1)), size=(2, 2, 2))
    with pytest.raises(ValueError, match="max_shift"):
        jaxreg.random_shift(KEY, x, max_shift=-1)
    with pytest.raises(TypeError, match="max_shift"):
        jaxreg.random_shift(KEY, x, max_shift=None)
    with pytest.raises(ValueError, match="mode"):
        jaxreg.random_shift(KEY, x, max_shift=1, mode="nearest")
    with pytest.raises(ValueError, match="max_shift.*reflect"):
        jaxreg.random_shift(KEY, x, max_shift=8, mode="reflect")
    with pytest.raises(ValueError, match="batch of keys"):
        jaxreg.random_shift(jax.random.split(KEY, 2), x, max_shift=1)
