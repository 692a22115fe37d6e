"""PatchDropout (``jaxreg.patch_dropout``): counts, uniformity, shapes, gradients.

Statistical bounds: a count of ``n`` Bernoulli(p) events lies within 4 sigma of
``n p``; a chi-square statistic with ``d`` degrees of freedom lies below its
``1 - 6e-5`` quantile (the same false-alarm rate as 4 sigma). Keys are fixed,
so each test is deterministic. Selections are integer computations: equalities
between eager, ``jit`` and ``vmap`` are exact.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial
from scipy import stats

from jaxreg import patch_dropout

KEY = jax.random.key(31)


def _tokens(b=3, n=10, d=2, dtype=jnp.float32):
    return jnp.arange(b * n * d, dtype=dtype).reshape(b, n, d)


@pytest.mark.parametrize(
    "n, prefix, rate",
    [
        (10, 0, 0.5),
        (10, 1, 0.5),
        (197, 1, 0.75),
        (9, 2, 0.3),
        (5, 0, 0.99),
        (4, 3, 0.5),
    ],
)
def test_count_indices_and_prefix(n, prefix, rate):
    x = _tokens(4, n)
    kept, idx = patch_dropout(KEY, x, rate, num_prefix_tokens=prefix)
    num_keep = max(1, int((n - prefix) * (1 - rate)))  # timm's count
    assert kept.shape == (4, prefix + num_keep, 2) and kept.dtype == x.dtype
    assert idx.shape == (4, prefix + num_keep) and idx.dtype == jnp.int32
    idx = np.asarray(idx)
    np.testing.assert_array_equal(idx[:, :prefix], np.tile(np.arange(prefix), (4, 1)))
    patches = idx[:, prefix:]
    assert np.all((patches >= prefix) & (patches < n))
    assert all(len(set(row)) == num_keep for row in patches)  # without replacement
    assert np.all(np.diff(patches, axis=1) > 0)  # ordered=True: original order
    np.testing.assert_array_equal(
        kept, np.take_along_axis(np.asarray(x), idx[..., None], 1)
    )


def test_unordered_selects_the_same_tokens():
    x = _tokens(5, 12)
    _, ordered = patch_dropout(KEY, x, 0.5, num_prefix_tokens=1)
    kept, unordered = patch_dropout(KEY, x, 0.5, num_prefix_tokens=1, ordered=False)
    np.testing.assert_array_equal(np.sort(unordered, axis=1), ordered)
    np.testing.assert_array_equal(kept, jnp.take_along_axis(x, unordered[..., None], 1))


def test_selection_is_uniform_without_replacement():
    # 8 patch tokens, keep 3: every one of the C(8, 3) = 56 subsets equally likely,
    # hence every position kept with probability 3/8.
    b, n, keep = 16_000, 8, 3
    _, idx = patch_dropout(KEY, jnp.zeros((b, n)), 0.625)
    idx = np.asarray(idx)
    assert idx.shape == (b, keep)
    per_position = np.bincount(idx.ravel(), minlength=n)
    for count in per_position:
        assert_binomial(int(count), b, keep / n)
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(n), keep))}
    counts = np.bincount([subsets[tuple(row)] for row in idx.tolist()], minlength=56)
    expected = b / len(subsets)
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < stats.chi2.ppf(1 - 6e-5, len(subsets) - 1), chi2


def test_examples_are_independent_and_keys_matter():
    b, n = 8_000, 6
    _, idx = patch_dropout(KEY, jnp.zeros((b, n)), 0.5)  # keep 3 of 6
    kept = np.zeros((b, n), bool)
    np.put_along_axis(kept, np.asarray(idx), True, axis=1)
    # Neighbouring examples: position 0 kept in both with probability 1/4.
    both = kept[:-1:2, 0] & kept[1::2, 0]
    assert_binomial(int(both.sum()), b // 2, 0.25)
    _, again = patch_dropout(KEY, jnp.zeros((b, n)), 0.5)
    np.testing.assert_array_equal(again, idx)  # same key, same selection
    _, other = patch_dropout(jax.random.key(32), jnp.zeros((b, n)), 0.5)
    assert_binomial(int(np.sum(np.all(other == idx, axis=1))), b, 1 / 20)  # C(6,3)=20


def test_deterministic_and_rate_zero_return_all_tokens():
    x = _tokens()
    for kwargs in ({"deterministic": True}, {}):
        rate = 0.5 if kwargs else 0.0
        kept, idx = patch_dropout(None, x, rate, num_prefix_tokens=1, **kwargs)
        assert kept is x or np.array_equal(kept, x)
        np.testing.assert_array_equal(idx, np.tile(np.arange(10), (3, 1)))


def test_jit_and_vmap_agree_with_eager():
    x = _tokens(4, 16, 3)
    eager = patch_dropout(KEY, x, 0.5, num_prefix_tokens=1)
    jitted = jax.jit(lambda k, x: patch_dropout(k, x, 0.5, num_prefix_tokens=1))(KEY, x)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(a, b)
    keys = jax.random.split(KEY, 3)
    batched = jax.vmap(lambda k: patch_dropout(k, x, 0.5, num_prefix_tokens=1))(keys)
    for i in range(3):
        single = patch_dropout(keys[i], x, 0.5, num_prefix_tokens=1)
        np.testing.assert_array_equal(batched[0][i], single[0])
        np.testing.assert_array_equal(batched[1][i], single[1])


def test_gradient_reaches_kept_tokens_only():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 9, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 5, 4)), jnp.float32)  # 1 + 4 of 8

    def loss(x):
        kept, _ = patch_dropout(KEY, x, 0.5, num_prefix_tokens=1)
        return jnp.sum(kept * w)

    grad = np.asarray(jax.grad(loss)(x))
    _, idx = patch_dropout(KEY, x, 0.5, num_prefix_tokens=1)
    expected = np.zeros_like(grad)
    np.put_along_axis(expected, np.asarray(idx)[..., None], np.asarray(w), axis=1)
    np.testing.assert_array_equal(grad, expected)


def test_any_dtype_and_feature_shape():
    ids = jnp.arange(2 * 7).reshape(2, 7)  # integer token ids, no feature axis
    kept, idx = patch_dropout(KEY, ids, 0.5)
    assert kept.dtype == ids.dtype and kept.shape == (2, 3)
    np.testing.assert_array_equal(kept, jnp.take_along_axis(ids, idx, 1))
    maps = jnp.ones((2, 6, 3, 3), jnp.bfloat16)  # tokens with 2-D features
    assert patch_dropout(KEY, maps, 0.5)[0].shape == (2, 3, 3, 3)


def test_saves_compute_under_jit():
    # The compiled program works on the kept tokens only: a matmul after patch
    # dropout has a quarter of the FLOPs at rate 0.75.
    x = jnp.ones((2, 64, 32))
    w = jnp.ones((32, 32))

    def f(x, rate):
        kept, _ = patch_dropout(KEY, x, rate)
        return kept @ w

    def flops(rate):
        cost = jax.jit(f, static_argnums=1).lower(x, rate).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return cost.get("flops", math.nan)

    full, dropped = flops(0.0), flops(0.75)
    if math.isnan(full) or math.isnan(dropped):
        pytest.skip("this backend reports no FLOP count")
    assert dropped < 0.3 * full


@pytest.mark.parametrize(
    "call, err, match",
    [
        (
            lambda: patch_dropout(KEY, jnp.zeros(5), 0.5),
            ValueError,
            r"shape \(B, N, \.\.\.\); got shape \(5,\)",
        ),
        (lambda: patch_dropout(KEY, [[1.0, 2.0]], 0.5), TypeError, r"got list"),
        (
            lambda: patch_dropout(KEY, _tokens(), 1.0),
            ValueError,
            r"\[0, 1\); got rate=1\.0",
        ),
        (lambda: patch_dropout(KEY, _tokens(), -0.2), ValueError, r"rate=-0\.2"),
        (lambda: patch_dropout(KEY, _tokens(), float("nan")), ValueError, r"rate=nan"),
        (
            lambda: jax.jit(lambda r: patch_dropout(KEY, _tokens(), r))(0.5),
            TypeError,
            r"`rate` must be a Python float: it fixes the number of kept tokens",
        ),
        (
            lambda: patch_dropout(KEY, _tokens(), 0.5, num_prefix_tokens=10),
            ValueError,
            r"smaller than the number of tokens N=10.*num_prefix_tokens=10",
        ),
        (
            lambda: patch_dropout(KEY, _tokens(), 0.5, num_prefix_tokens=-1),
            ValueError,
            r"`num_prefix_tokens` must be >= 0; got num_prefix_tokens=-1",
        ),
        (
            lambda: patch_dropout(KEY, _tokens(), 0.5, num_prefix_tokens=1.0),
            TypeError,
            r"`num_prefix_tokens` must be a Python int",
        ),
        (
            lambda: patch_dropout(KEY, _tokens(), 0.5, ordered=1),
            TypeError,
            r"`ordered` must be a Python bool",
        ),
        (
            lambda: patch_dropout(KEY, _tokens(), 0.5, deterministic="no"),
            TypeError,
            r"`deterministic` must be a Python bool",
        ),
        (
            lambda: patch_dropout(None, _tokens(), 0.5),
            ValueError,
            r"`key` is None, but patch dropout draws which tokens to keep",
        ),
        (
            lambda: patch_dropout(jax.random.split(KEY), _tokens(), 0.5),
            ValueError,
            r"batch of keys",
        ),
        (
            lambda: patch_dropout(
                jax.random.split(KEY), _tokens(), 0.5, deterministic=True
            ),
            ValueError,
            r"batch of keys",
        ),
    ],
)
def test_bad_inputs(call, err, match):
    with pytest.raises(err, match=match):
        call()
