"""The dropout family (``jaxreg.stochastic``): semantics, statistics, transforms.

Statistical bounds (stated once, used throughout): a count of ``n`` Bernoulli(p)
draws must lie within ``4 * sqrt(n p (1 - p))`` of ``n p``; a sample mean within 4
standard errors of its expectation (the standard error from the known variance
where the maths gives it, else the empirical one, by the central limit theorem).
Keys are fixed, so each test is deterministic for a given generator; for a correct
generator each bound fails with probability about 6e-5. Tests check public
semantics, never particular mask values.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import FUSABLE, assert_binomial, fold_key
from jax.test_util import check_grads

import jaxreg
from jaxreg import (
    alpha_dropout,
    drop_path,
    dropblock,
    dropout,
    gaussian_dropout,
    gaussian_noise,
    keep_mask,
    keep_probability,
    spatial_dropout,
    zoneout,
)

BASE = jax.random.key(77)
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _key(*path):
    return fold_key(BASE, *path)


def _assert_mean(sample, expected, stderr, what="mean"):
    sample = float(sample)
    assert abs(sample - expected) < 4 * stderr, (
        f"{what} {sample:.6g}, expected {expected:.6g} +- 4*{stderr:.3g}"
    )


def _x(shape, seed=0, dtype=jnp.float32):
    """Data bounded away from zero, so a zero output means 'dropped'.

    Made with NumPy: every JAX op on a new shape costs a compilation.
    """
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.5, 2.0, shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return jnp.asarray((mag * sign).astype(np.float32), dtype)


def _ones(shape, dtype=np.float32):
    return jnp.asarray(np.ones(shape, dtype))


# Every function with the arguments of one typical call; "x" is its data input.
X2 = _x((6, 10))
X4 = _x((2, 7, 7, 3), 1)
CALLS = {
    "dropout": lambda k, x, r, **kw: dropout(k, x, r, **kw),
    "dropout_classic": lambda k, x, r, **kw: dropout(k, x, r, inverted=False, **kw),
    "spatial_dropout": lambda k, x, r, **kw: spatial_dropout(k, x, r, **kw),
    "gaussian_dropout": lambda k, x, r, **kw: gaussian_dropout(k, x, r, **kw),
    "gaussian_noise": lambda k, x, r, **kw: gaussian_noise(k, x, r, **kw),
    "alpha_dropout": lambda k, x, r, **kw: alpha_dropout(k, x, r, **kw),
    "drop_path": lambda k, x, r, **kw: drop_path(k, x, r, **kw),
    "drop_path_batch": lambda k, x, r, **kw: drop_path(k, x, r, mode="batch", **kw),
    "dropblock": lambda k, x, r, **kw: dropblock(k, x, r, block_size=3, **kw),
    "zoneout": lambda k, x, r, **kw: zoneout(k, 0.5 * x, x, r, **kw),
}
INPUT = {name: X4 if name in ("spatial_dropout", "dropblock") else X2 for name in CALLS}
# rate 1 is valid for all but the Gaussian ones (infinite noise at rate 1)
RATE_ONE_OK = sorted(set(CALLS) - {"gaussian_dropout", "gaussian_noise"})
RATE_CHECKED = sorted(set(CALLS) - {"gaussian_noise"})  # gaussian_noise: stddev


# Compiling dominates this file's run time, so each jitted variant of a function is
# built once and shared by the tests below (the rate is a traced argument, so one
# compilation serves every rate).
@functools.cache
def _jit(name):
    """``CALLS[name]`` jitted with a traced rate: (key, x, rate) -> output."""
    return jax.jit(CALLS[name])


def _loss(name, x, key, rate):
    return 0.5 * jnp.sum(CALLS[name](key, x, rate) ** 2)


@functools.cache
def _jit_value_and_grad(name, checkpoint=False):
    """value_and_grad of a scalar loss of ``CALLS[name]``, w.r.t. x, jitted."""
    loss = functools.partial(_loss, name)
    return jax.jit(jax.value_and_grad(jax.checkpoint(loss) if checkpoint else loss))


# --- dropout: values, expectation, classic vs inverted ---------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_values_are_zero_or_x_over_p(rate):
    key, x = _key(1), _x((300, 200), 2)
    y = dropout(key, x, rate)
    p = keep_probability(rate)
    kept = np.asarray(y) != 0
    # the mask is the sampler's mask for the same key, shape and rate
    np.testing.assert_array_equal(kept, keep_mask(key, x.shape, rate))
    expected = np.asarray(x, np.float32) * np.float32(1 / p)
    np.testing.assert_array_equal(np.asarray(y)[kept], expected[kept])
    assert_binomial(int(kept.sum()), kept.size, 1 - rate)


@pytest.mark.parametrize("rate", [0.001, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_scale_times_keep_probability_is_one(rate):
    # The exact identity behind E[dropout(x)] == x: every kept unit is multiplied by
    # 1 / keep_probability(rate), rounded once to float32.
    y = dropout(_key(2), _ones(4000), rate)
    scale = np.unique(np.asarray(y)[np.asarray(y) != 0])
    assert scale.size == 1
    assert abs(float(scale[0]) * keep_probability(rate) - 1.0) <= 2.0**-23


def _mean_over_keys(fn, x, num_keys, seed):
    keys = jax.random.split(_key(3, seed), num_keys)
    return jax.vmap(lambda k: fn(k, x))(keys).mean(0)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("inverted", [True, False], ids=["inverted", "classic"])
def test_dropout_expectation(rate, inverted):
    # Average of K = 4096 draws for each of d = 256 elements. Per element,
    # z = (mean - E) / (|x| sqrt((1-p) / (p K))) (times p for classic) is
    # approximately N(0, 1): we require |sum z| / sqrt(d) < 4 and, Bonferroni over
    # d elements, max |z| < 5.5 (each fails with probability < 1e-4).
    num_keys, x = 4096, _x((256,), 3)
    p = keep_probability(rate)
    mean = _mean_over_keys(
        lambda k, v: dropout(k, v, rate, inverted=inverted), x, num_keys, int(rate * 10)
    )
    expected = x if inverted else x * p
    sd = np.abs(x) * math.sqrt((1 - p) / (p * num_keys)) * (1 if inverted else p)
    z = (np.asarray(mean, np.float64) - np.asarray(expected)) / sd
    assert abs(z.sum()) / math.sqrt(z.size) < 4
    assert np.abs(z).max() < 5.5
    # the inference path returns exactly this expectation
    np.testing.assert_allclose(
        dropout(None, x, rate, deterministic=True, inverted=inverted),
        expected,
        rtol=1e-7,
    )


@pytest.mark.parametrize("rate", [0.2, 0.75])
def test_classic_and_inverted_share_the_mask_and_differ_by_p(rate):
    key, x = _key(4), _x((100, 100), 4)
    p = keep_probability(rate)
    inv = dropout(key, x, rate)
    cls = dropout(key, x, rate, inverted=False)
    np.testing.assert_array_equal(inv != 0, cls != 0)
    np.testing.assert_array_equal(cls, np.where(np.asarray(cls) != 0, x, 0))  # x*mask
    np.testing.assert_allclose(inv * p, cls, rtol=1e-6)


def test_inference_paths():
    x, rate = _x((5, 8), 5), 0.3
    np.testing.assert_array_equal(dropout(None, x, rate, deterministic=True), x)
    classic = dropout(None, x, rate, deterministic=True, inverted=False)
    np.testing.assert_allclose(classic, x * 0.7, rtol=1e-6)
    # deterministic ignores the key, if given
    np.testing.assert_array_equal(dropout(_key(5), x, rate, deterministic=True), x)


def test_dropout_broadcast_dims():
    x = _x((4, 50, 6), 6)
    y = dropout(_key(6), x, 0.5, broadcast_dims=(0, 2))
    kept = np.asarray(y) != 0
    assert (kept == kept[:1, :, :1]).all()
    assert 0 < kept[0, :, 0].sum() < 50
    y = dropout(_key(6), x, 0.5, broadcast_dims=-1)  # a single int is accepted
    kept = np.asarray(y) != 0
    assert (kept == kept[..., :1]).all()


# --- rate 0 and rate 1 -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CALLS))
def test_rate_zero_returns_the_input(name):
    x = INPUT[name]
    fn = CALLS[name]
    expected = x  # zoneout at rate 0: always update to h_new = x
    out = fn(_key(7), x, 0.0)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, expected)
    # a traced rate of 0 gives the same, bit for bit
    traced = _jit(name)(_key(7), x, 0.0)
    np.testing.assert_array_equal(traced, expected)


@pytest.mark.parametrize("name", RATE_ONE_OK)
@pytest.mark.parametrize("traced", [False, True], ids=["static", "traced"])
def test_rate_one_gives_zeros_and_finite_gradients(name, traced):
    x, fn = INPUT[name], CALLS[name]
    expected = 0.5 * x if name == "zoneout" else jnp.zeros_like(x)  # zoneout: h_prev
    if traced:
        out = _jit(name)(_key(8), x, 1.0)
        _, grad = _jit_value_and_grad(name)(x, _key(8), 1.0)
    else:
        out = fn(_key(8), x, 1.0)
        grad = jax.grad(_loss, 1)(name, x, _key(8), 1.0)
    np.testing.assert_array_equal(out, expected)
    assert bool(jnp.isfinite(grad).all())
    if name != "zoneout":  # zoneout's output depends on h_prev = 0.5 * x
        np.testing.assert_array_equal(grad, jnp.zeros_like(x))


def test_rate_one_zoneout_gradient_flows_to_h_prev():
    h_prev, h_new = _x((4, 5), 9), _x((4, 5), 10)
    g_prev, g_new = jax.grad(lambda a, b: zoneout(_key(9), a, b, 1.0).sum(), (0, 1))(
        h_prev, h_new
    )
    np.testing.assert_array_equal(g_prev, jnp.ones_like(h_prev))
    np.testing.assert_array_equal(g_new, jnp.zeros_like(h_new))


def test_rate_one_needs_no_key():
    for name in RATE_ONE_OK:
        x = INPUT[name]
        out = CALLS[name](None, x, 1.0)
        assert out.shape == x.shape
        out = CALLS[name](None, x, 0.0)
        assert out.shape == x.shape


# --- gradients, jit, vmap, scan, checkpoint ------------------------------------------


@pytest.mark.parametrize("name", sorted(CALLS))
def test_check_grads_at_fixed_key(name):
    # At a fixed key every function is affine in its input, so a large finite
    # difference step has no truncation error and little float32 rounding error.
    # (First order only: second derivatives of an affine map are zero, and order 2
    # would triple this file's compile time.)
    x, fn = INPUT[name], CALLS[name]
    check_grads(
        lambda v: fn(_key(10), v, 0.3), (x,), order=1, modes=("fwd", "rev"), eps=0.05
    )


def test_check_grads_zoneout_both_states():
    h_prev, h_new = _x((3, 4), 11), _x((3, 4), 12)
    check_grads(
        lambda a, b: zoneout(_key(11), a, b, 0.4),
        (h_prev, h_new),
        order=1,
        modes=("fwd", "rev"),
        eps=0.05,
    )


@pytest.mark.parametrize("name", sorted(CALLS))
def test_jit_equals_eager(name):
    x, fn = INPUT[name], CALLS[name]
    eager = fn(_key(12), x, 0.3)
    static_rate = jax.jit(lambda k, v: fn(k, v, 0.3))(_key(12), x)
    traced_rate = _jit(name)(_key(12), x, 0.3)
    np.testing.assert_allclose(static_rate, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(traced_rate, eager, rtol=1e-6, atol=1e-6)
    # the keep decisions (zero pattern) are identical, not just close
    np.testing.assert_array_equal(static_rate == 0, eager == 0)
    np.testing.assert_array_equal(traced_rate == 0, eager == 0)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_vmap_over_keys_equals_loop(name):
    x, fn = INPUT[name], CALLS[name]
    keys = jax.random.split(_key(13), 4)
    batched = jax.vmap(lambda k: fn(k, x, 0.5))(keys)
    looped = jnp.stack([fn(k, x, 0.5) for k in keys])
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-6)
    if name != "drop_path_batch":  # (one coin per key: may repeat across 4 keys)
        assert any(not np.array_equal(batched[0], batched[i]) for i in range(1, 4))


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_vmap_over_rbg_keys_gives_different_masks(impl):
    # JAX batches rbg bit generation from one key of the batch (jax PR #20094), so
    # vmap need not equal the loop for rbg keys; masks must still differ per key
    # and keep the right rate.
    keys = jax.random.split(jax.random.key(0, impl=impl), 8)
    ys = jax.vmap(lambda k: dropout(k, _ones((100, 100)), 0.3))(keys)
    kept = np.asarray(ys) != 0
    for i in range(1, 8):
        assert not np.array_equal(kept[0], kept[i])
    assert_binomial(int(kept.sum()), kept.size, 0.7)


def test_vmap_over_data_shares_the_key():
    # vmap over inputs with one key: each example sees the same mask.
    x = _x((5, 20, 30), 14)
    ys = jax.vmap(lambda v: dropout(_key(14), v, 0.5))(x)
    kept = np.asarray(ys) != 0
    assert (kept == kept[:1]).all()


@pytest.mark.parametrize("rate", [0.3, 0.6])
def test_scan_same_key_every_step_gives_a_constant_mask(rate):
    # Variational (time-shared) RNN dropout: the same key at every step.
    steps, key = 12, _key(15)
    xs = _x((steps, 8, 16), 15)

    def step(h, x_t):
        dropped = dropout(key, h, rate)
        h = jnp.tanh(dropped + x_t)
        return h, dropped != 0

    h0 = _x((8, 16), 16)
    _, masks = jax.lax.scan(step, h0, xs)
    masks = np.asarray(masks)
    assert (masks == masks[:1]).all()
    assert 0 < masks[0].sum() < masks[0].size


def test_scan_with_a_mask_broadcast_over_time():
    # A mask for a (T, B, H) sequence shared over the time axis, applied in scan.
    steps = 10
    xs = _x((steps, 6, 12), 17)
    ys = dropout(_key(17), xs, 0.4, broadcast_dims=(0,))

    def step(carry, y_t):
        return carry, y_t != 0

    _, masks = jax.lax.scan(step, None, ys)
    masks = np.asarray(masks)
    assert (masks == masks[:1]).all()
    assert 0 < masks[0].sum() < masks[0].size


def test_scan_with_per_step_keys_changes_the_mask():
    keys = jax.random.split(_key(18), 6)
    _, masks = jax.lax.scan(
        lambda c, k: (c, dropout(k, _ones((10, 10)), 0.5) != 0), None, keys
    )
    masks = np.asarray(masks)
    for i in range(1, 6):
        assert not np.array_equal(masks[0], masks[i])


def test_scan_with_a_traced_rate_schedule():
    rates = jnp.array([0.0, 0.25, 0.5, 1.0])
    keys = jax.random.split(_key(19), 4)
    _, ys = jax.lax.scan(
        lambda c, kr: (c, dropout(kr[0], _ones(20000), kr[1])), None, (keys, rates)
    )
    ys = np.asarray(ys)
    np.testing.assert_array_equal(ys[0], np.ones(20000))
    np.testing.assert_array_equal(ys[3], np.zeros(20000))
    for i, r in [(1, 0.25), (2, 0.5)]:
        kept = int((ys[i] != 0).sum())
        assert_binomial(kept, 20000, 1 - r)
        np.testing.assert_allclose(ys[i][ys[i] != 0], 1 / (1 - r), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_checkpoint_gives_the_same_values_and_grads(name):
    x = INPUT[name]
    value, grad = _jit_value_and_grad(name)(x, _key(20), 0.4)
    value_c, grad_c = _jit_value_and_grad(name, checkpoint=True)(x, _key(20), 0.4)
    np.testing.assert_allclose(value_c, value, rtol=1e-6)
    np.testing.assert_allclose(grad_c, grad, rtol=1e-6, atol=1e-6)
    assert float(value) > 0


# --- dtypes ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_dtype_is_preserved(name, dtype):
    x = INPUT[name].astype(dtype)
    assert CALLS[name](_key(21), x, 0.3).dtype == dtype
    assert CALLS[name](_key(21), x, 0.3, deterministic=True).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("rate", [0.01, 0.3, 0.9])
def test_low_precision_keep_rate(dtype, rate):
    # The keep decision happens in integer bit space, so the rate is right whatever
    # the data dtype: 10^6 draws, 4-sigma binomial bound.
    n = 10**6
    y = dropout(_key(22, int(rate * 100)), _ones((1000, 1000), dtype), rate)
    assert y.dtype == dtype
    y = np.asarray(y)
    kept = y != 0
    assert_binomial(int(kept.sum()), n, 1 - rate)
    # kept units hold 1/p rounded once from float32 to the data dtype
    scale = np.float32(1 / keep_probability(rate)).astype(jnp.dtype(dtype))
    assert (y[kept] == scale).all()


# --- spatial_dropout ---------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, channel_axis",
    [
        ((16, 9, 32), -1),  # 1-D maps, NLC
        ((16, 32, 9), 1),  # 1-D maps, NCL
        ((8, 5, 6, 32), -1),  # 2-D maps, NHWC
        ((8, 32, 5, 6), 1),  # 2-D maps, NCHW
        ((4, 3, 4, 5, 32), 4),  # 3-D maps, NDHWC
        ((4, 32, 3, 4, 5), -4),  # 3-D maps, NCDHW
    ],
)
def test_spatial_dropout_is_constant_over_space(shape, channel_axis):
    x = _x(shape, 23)
    rate = 0.4
    y = spatial_dropout(_key(23), x, rate, channel_axis=channel_axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    ch = channel_axis % len(shape)
    kept = np.moveaxis((np.asarray(y) != 0), ch, -1)
    kept = kept.reshape(shape[0], -1, shape[ch])  # (N, positions, C)
    assert (kept == kept[:, :1, :]).all(), "mask varies over spatial positions"
    per_unit = kept[:, 0, :]  # one decision per (example, channel)
    assert 0 < per_unit.sum() < per_unit.size
    assert not (per_unit == per_unit[:1]).all(), "examples share a mask"
    p = keep_probability(rate)
    yk, xk = np.asarray(y)[np.asarray(y) != 0], np.asarray(x)[np.asarray(y) != 0]
    np.testing.assert_allclose(yk, xk / p, rtol=1e-6)


def test_spatial_dropout_keep_rate():
    # One decision per (example, channel): 2000 x 500 = 10^6 decisions.
    rate = 0.25
    y = spatial_dropout(_key(24), _ones((2000, 2, 500)), rate)
    kept = np.asarray(y)[:, 0, :] != 0
    assert_binomial(int(kept.sum()), kept.size, 1 - rate)


def test_spatial_dropout_inference():
    x = _x((2, 3, 4, 5), 25)
    np.testing.assert_array_equal(spatial_dropout(None, x, 0.5, deterministic=True), x)


# --- gaussian_dropout, gaussian_noise ----------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_gaussian_dropout_noise_has_mean_one_and_variance_rate_over_keep(rate):
    # y = x * noise with noise ~ N(1, rate / (1 - rate)). With n = 10^6 draws the
    # sample mean has standard error sqrt(v / n) and the sample variance (of a
    # normal) sqrt(2 / (n - 1)) * v.
    n = 10**6
    v = rate / (1 - rate)
    noise = np.asarray(gaussian_dropout(_key(26, int(rate * 10)), _ones(n), rate))
    noise = noise.astype(np.float64)
    _assert_mean(noise.mean(), 1.0, math.sqrt(v / n), "noise mean")
    _assert_mean(noise.var(ddof=1), v, math.sqrt(2 / (n - 1)) * v, "noise variance")


def test_gaussian_dropout_multiplies_the_input():
    x = _x((50, 40), 27)
    y = gaussian_dropout(_key(27), x, 0.3)
    ones = gaussian_dropout(_key(27), _ones(x.shape), 0.3)
    np.testing.assert_allclose(y, x * ones, rtol=1e-6)
    np.testing.assert_array_equal(gaussian_dropout(None, x, 0.3, deterministic=True), x)


@pytest.mark.parametrize("stddev", [0.1, 2.0])
def test_gaussian_noise_moments(stddev):
    n = 10**6
    x = jnp.asarray(np.full(n, 3.0, np.float32))
    noise = np.asarray(gaussian_noise(_key(28), x, stddev) - x, np.float64)
    _assert_mean(noise.mean(), 0.0, stddev / math.sqrt(n), "noise mean")
    _assert_mean(
        noise.var(ddof=1), stddev**2, math.sqrt(2 / (n - 1)) * stddev**2, "variance"
    )
    np.testing.assert_array_equal(
        gaussian_noise(None, x, stddev, deterministic=True), x
    )


# --- alpha_dropout -----------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5, 0.9])
def test_alpha_dropout_keeps_mean_zero_and_variance_one(rate):
    # For x ~ N(0, 1) (fresh per element) the output is iid with mean 0 and variance
    # 1 exactly (Klambauer et al. 2017). Bounds: 4 standard errors of the sample
    # mean (1 / sqrt(n)) and of the sample variance (empirical sd of the squared
    # deviations / sqrt(n)), n = 10^6.
    n = 10**6
    x = jax.random.normal(_key(29, 0), (n,))
    y = np.asarray(alpha_dropout(_key(29, int(rate * 100)), x, rate), np.float64)
    _assert_mean(y.mean(), 0.0, 1 / math.sqrt(n), "mean")
    sq = (y - y.mean()) ** 2
    _assert_mean(sq.mean(), 1.0, sq.std() / math.sqrt(n), "variance")


def test_alpha_dropout_values():
    rate, x = 0.3, _x((200, 100), 30)
    y = alpha_dropout(_key(30), x, rate)
    kept = np.asarray(keep_mask(_key(30), x.shape, rate))
    q = keep_probability(rate)
    alpha_p = -1.0507009873554805 * 1.6732632423543772
    a = (q + alpha_p**2 * q * (1 - q)) ** -0.5
    b = -a * alpha_p * (1 - q)
    np.testing.assert_allclose(np.asarray(y)[kept], a * np.asarray(x)[kept] + b, 1e-5)
    np.testing.assert_allclose(np.asarray(y)[~kept], a * alpha_p + b, rtol=1e-5)
    np.testing.assert_array_equal(alpha_dropout(None, x, rate, deterministic=True), x)


# --- drop_path -----------------------------------------------------------------------


def test_drop_path_row_drops_whole_rows():
    rate = 0.3
    x = _x((100_000, 3, 2), 31)
    y = drop_path(_key(31), x, rate)
    kept = (np.asarray(y) != 0).reshape(len(x), -1)
    assert (kept == kept[:, :1]).all(), "a row is partly dropped"
    assert_binomial(int(kept[:, 0].sum()), len(x), 1 - rate)
    p = keep_probability(rate)
    rows = kept[:, 0]
    np.testing.assert_allclose(np.asarray(y)[rows], np.asarray(x)[rows] / p, rtol=1e-6)


def test_drop_path_batch_drops_the_whole_batch():
    rate, num_keys = 0.3, 4000
    x = _x((4, 5), 32)
    keys = jax.random.split(_key(32), num_keys)
    ys = jax.vmap(lambda k: drop_path(k, x, rate, mode="batch"))(keys)
    kept = (np.asarray(ys) != 0).reshape(num_keys, -1)
    assert (kept == kept[:, :1]).all(), "the batch is partly dropped"
    assert_binomial(int(kept[:, 0].sum()), num_keys, 1 - rate)


def test_drop_path_inference_and_residual_use():
    x = _x((8, 4), 33)
    np.testing.assert_array_equal(drop_path(None, x, 0.5, deterministic=True), x)
    # scalar input is fine for mode="batch"
    y = drop_path(_key(33), jnp.float32(2.0), 0.5, mode="batch")
    assert y.shape == () and float(y) in (0.0, 4.0)


# --- dropblock -------------------------------------------------------------------------


def _opening(dropped, b):
    """Positions covered by a b x b square entirely inside ``dropped``.

    The map is padded by b - 1 with "dropped" on every side (blocks are clipped by
    the border), eroded with a b x b window and dilated back.
    """
    pad = b - 1
    d = np.pad(dropped, ((pad, pad), (pad, pad)), constant_values=True)
    h, w = d.shape
    full = np.ones((h - pad, w - pad), bool)  # windows whose top-left is (i, j)
    for i in range(b):
        for j in range(b):
            full &= d[i : h - pad + i, j : w - pad + j]
    covered = np.zeros_like(d)
    for i in range(b):
        for j in range(b):
            covered[i : h - pad + i, j : w - pad + j] |= full
    return covered[pad : pad + dropped.shape[0], pad : pad + dropped.shape[1]]


@pytest.mark.parametrize("block_size, rate", [(3, 0.1), (3, 0.3), (5, 0.2), (7, 0.1)])
def test_dropblock_drops_contiguous_squares(block_size, rate):
    x = _x((4, 24, 24, 8), 34)
    y = dropblock(_key(34, block_size), x, rate, block_size=block_size)
    dropped = np.asarray(y) == 0
    assert dropped.any() and not dropped.all()
    for n in range(dropped.shape[0]):
        for c in range(dropped.shape[3]):
            d = dropped[n, :, :, c]
            np.testing.assert_array_equal(
                _opening(d, block_size), d, err_msg=f"map ({n}, {c}) has a non-block"
            )


def test_plain_dropout_masks_fail_the_block_check():
    # The check above can fail: a Bernoulli mask at the same rate is not a union
    # of 3 x 3 squares.
    d = ~np.asarray(keep_mask(_key(35), (24, 24), 0.3))
    assert not np.array_equal(_opening(d, 3), d)


@pytest.mark.parametrize("block_size, rate", [(3, 0.1), (3, 0.5), (5, 0.2), (7, 0.3)])
def test_dropblock_realised_drop_fraction(block_size, rate):
    # Maps are independent across (example, channel), positions within a map are
    # not; the mean drop fraction over m = 2048 maps is checked within 4 empirical
    # standard errors of `rate`. Each position, corners included, is dropped with
    # probability `rate`: the corner counts over the maps are binomial.
    y = dropblock(
        _key(36, block_size), _ones((128, 16, 16, 16)), rate, block_size=block_size
    )
    dropped = (np.asarray(y) == 0).transpose(0, 3, 1, 2).reshape(-1, 16, 16)
    frac = dropped.reshape(len(dropped), -1).mean(1)
    se = frac.std(ddof=1) / math.sqrt(len(frac))
    _assert_mean(frac.mean(), rate, se, "drop fraction")
    for i, j in [(0, 0), (0, 15), (15, 0), (15, 15), (8, 8)]:
        assert_binomial(int(dropped[:, i, j].sum()), len(dropped), rate)
    # kept units are scaled by 1 / (1 - rate), so E[output] == x
    kept_values = np.unique(np.asarray(y)[~(np.asarray(y) == 0)])
    assert kept_values.size == 1
    assert abs(float(kept_values[0]) * (1 - rate) - 1) < 1e-6


def test_dropblock_block_larger_than_map_and_block_one():
    y = dropblock(_key(37), _x((64, 4, 4, 8), 37), 0.5, block_size=7)
    assert y.shape == (64, 4, 4, 8)
    dropped = np.asarray(y) == 0
    assert dropped.any() and not dropped.all()
    # block_size=1 is Bernoulli dropout at the same rate
    y = dropblock(_key(38), _ones((100, 50, 50, 4)), 0.3, block_size=1)
    assert_binomial(int((y != 0).sum()), y.size, 0.7)


def test_dropblock_channels_are_independent():
    y = dropblock(_key(39), _ones((16, 32, 32, 2)), 0.3, block_size=3)
    d = (np.asarray(y) == 0).astype(np.float64)
    c = np.corrcoef(d[..., 0].ravel(), d[..., 1].ravel())[0, 1]
    # positions are correlated within a map, so use a generous 4 / sqrt(maps) bound
    assert abs(c) < 4 / math.sqrt(16)


# --- zoneout ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_zoneout_train_picks_h_prev_with_probability_rate(rate):
    n = 10**6
    h_prev, h_new = _ones(n) * 0, _ones(n)
    h = zoneout(_key(40, int(rate * 10)), h_prev, h_new, rate)
    h = np.asarray(h)
    assert set(np.unique(h)) <= {0.0, 1.0}
    assert_binomial(int((h == 0).sum()), n, rate)


def test_zoneout_values_and_inference():
    rate = 0.3
    h_prev, h_new = _x((40, 30), 41), _x((40, 30), 42)
    h = zoneout(_key(41), h_prev, h_new, rate)
    mask = keep_mask(_key(41), h_new.shape, rate)
    np.testing.assert_array_equal(h, np.where(mask, h_new, h_prev))
    p = keep_probability(rate)
    np.testing.assert_allclose(
        zoneout(None, h_prev, h_new, rate, deterministic=True),
        p * h_new + (1 - p) * h_prev,
        rtol=1e-6,
    )
    np.testing.assert_array_equal(zoneout(_key(41), h_prev, h_new, 0.0), h_new)
    np.testing.assert_array_equal(zoneout(_key(41), h_prev, h_new, 1.0), h_prev)


def test_zoneout_expectation_equals_inference():
    rate, num_keys = 0.4, 4096
    h_prev, h_new = _x((128,), 43), _x((128,), 44)
    keys = jax.random.split(_key(43), num_keys)
    mean = jax.vmap(lambda k: zoneout(k, h_prev, h_new, rate))(keys).mean(0)
    expected = zoneout(None, h_prev, h_new, rate, deterministic=True)
    # per element: sd = |h_new - h_prev| sqrt(rate (1 - rate) / K); Bonferroni 5.5
    sd = np.abs(np.asarray(h_new - h_prev)) * math.sqrt(rate * (1 - rate) / num_keys)
    z = np.asarray(mean - expected) / sd
    assert np.abs(z).max() < 5.5
    assert abs(z.sum()) / math.sqrt(z.size) < 4


def test_zoneout_dtype_follows_h_new():
    h = zoneout(_key(44), jnp.zeros(5), jnp.ones(5, jnp.bfloat16), 0.5)
    assert h.dtype == jnp.bfloat16
    h = zoneout(None, jnp.zeros(5), jnp.ones(5, jnp.float16), 0.5, deterministic=True)
    assert h.dtype == jnp.float16


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", RATE_CHECKED)
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), -1, 2])
def test_bad_rate(name, bad):
    shown = re.escape(repr(float(bad)))
    with pytest.raises(ValueError, match=rf"`rate`.*got rate={shown}"):
        CALLS[name](_key(45), INPUT[name], bad)
    # also on the deterministic path: a bad rate is a bug wherever it is used
    with pytest.raises(ValueError, match=rf"`rate`.*got rate={shown}"):
        CALLS[name](None, INPUT[name], bad, deterministic=True)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_rate_keep_mask(bad):
    with pytest.raises(ValueError, match=rf"`rate`.*got rate={re.escape(repr(bad))}"):
        keep_mask(_key(46), (3,), bad)


@pytest.mark.parametrize("name", RATE_CHECKED)
@pytest.mark.parametrize(
    "bad, error, shown",
    [
        ("0.5", TypeError, r"`rate` must be a real scalar.*str '0\.5'"),
        (None, TypeError, r"`rate` must be a real scalar.*NoneType None"),
        (True, TypeError, r"`rate` must be a real scalar.*bool True"),
        (np.ones(2) * 0.5, ValueError, r"`rate` must be a scalar.*shape \(2,\)"),
        (1j, TypeError, r"`rate` must be a real scalar.*complex"),
    ],
)
def test_rate_of_the_wrong_type(name, bad, error, shown):
    with pytest.raises(error, match=shown):
        CALLS[name](_key(47), INPUT[name], bad)


def test_gaussian_dropout_rate_one_is_an_error():
    with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\); got rate=1\.0"):
        gaussian_dropout(_key(48), X2, 1.0)


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_gaussian_noise_bad_stddev(bad):
    with pytest.raises(ValueError, match=rf"`stddev` must be >= 0; got stddev={bad}"):
        gaussian_noise(_key(49), X2, bad)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_, jnp.complex64])
def test_non_float_input(name, dtype):
    x = INPUT[name].astype(dtype)
    arg = "h_(prev|new)" if name == "zoneout" else "x"
    shown = jnp.dtype(dtype).name
    with pytest.raises(
        TypeError, match=rf"`{arg}` must have a floating dtype.*{shown}"
    ):
        CALLS[name](_key(50), x, 0.5)


def test_zoneout_checks_h_new_dtype():
    with pytest.raises(TypeError, match=r"`h_new` must have a floating dtype.*int32"):
        zoneout(_key(51), jnp.zeros(3), jnp.zeros(3, jnp.int32), 0.5)


@pytest.mark.parametrize("bad", [None, [1.0, 2.0], "x"])
def test_non_array_input(bad):
    with pytest.raises(TypeError, match=r"`x` must be an array of floating dtype"):
        dropout(_key(52), bad, 0.5)


@pytest.mark.parametrize(
    "dims, shown",
    [((2,), r"\(2,\) has axis 2"), ((0, -3), r"\(0, -3\) has axis -3"), (5, "axis 5")],
)
def test_broadcast_dims_out_of_range(dims, shown):
    with pytest.raises(ValueError, match=rf"`broadcast_dims`=.*{shown}.*rank 2"):
        dropout(_key(53), X2, 0.5, broadcast_dims=dims)
    with pytest.raises(ValueError, match=rf"`broadcast_dims`=.*{shown}.*rank 2"):
        keep_mask(_key(53), (6, 10), 0.5, broadcast_dims=dims)


@pytest.mark.parametrize("dims", [(0.5,), ("a",), (True,), 1.0])
def test_broadcast_dims_of_the_wrong_type(dims):
    with pytest.raises(TypeError, match=r"`broadcast_dims` must"):
        dropout(_key(54), X2, 0.5, broadcast_dims=dims)


@pytest.mark.parametrize(
    "axis, error, shown",
    [
        (4, ValueError, r"`channel_axis`=4 is out of range.*rank 4"),
        (-5, ValueError, r"`channel_axis`=-5 is out of range.*rank 4"),
        (0, ValueError, r"`channel_axis`=0 is the batch axis"),
        (-4, ValueError, r"`channel_axis`=-4 is the batch axis \(axis 0"),
        (1.0, TypeError, r"`channel_axis` must be an int; got float 1\.0"),
        (None, TypeError, r"`channel_axis` must be an int; got NoneType None"),
    ],
)
def test_bad_channel_axis(axis, error, shown):
    with pytest.raises(error, match=shown):
        spatial_dropout(_key(55), X4, 0.5, channel_axis=axis)


@pytest.mark.parametrize("shape", [(5,), (4, 5), (1, 2, 3, 4, 5, 6)])
def test_spatial_dropout_bad_rank(shape):
    with pytest.raises(ValueError, match=rf"`x` must be .*rank 3, 4 or 5.*{shape}"):
        spatial_dropout(_key(56), jnp.ones(shape), 0.5)


@pytest.mark.parametrize("mode", ["col", "Row", None, 1])
def test_drop_path_bad_mode(mode):
    with pytest.raises(ValueError, match=rf"`mode` must be 'row' or 'batch'.*{mode!r}"):
        drop_path(_key(57), X2, 0.5, mode=mode)


def test_drop_path_row_needs_a_batch_axis():
    with pytest.raises(ValueError, match=r"`x` must have a batch axis.*mode='batch'"):
        drop_path(_key(58), jnp.float32(1.0), 0.5)


@pytest.mark.parametrize(
    "block_size, error, shown",
    [
        (0, ValueError, r"`block_size` must be >= 1; got block_size=0"),
        (-3, ValueError, r"`block_size` must be >= 1; got block_size=-3"),
        (2.0, TypeError, r"`block_size` must be a Python int; got float 2\.0"),
        (True, TypeError, r"`block_size` must be a Python int; got bool True"),
        ("3", TypeError, r"`block_size` must be a Python int; got str '3'"),
    ],
)
def test_dropblock_bad_block_size(block_size, error, shown):
    with pytest.raises(error, match=shown):
        dropblock(_key(59), X4, 0.5, block_size=block_size)


def test_dropblock_numpy_int_block_size_is_an_int():
    key = _key(61)
    expected = dropblock(key, X4, 0.5, block_size=3)
    for block_size in (np.int32(3), np.int64(3)):
        y = dropblock(key, X4, 0.5, block_size=block_size)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


def test_dropblock_needs_nhwc():
    with pytest.raises(ValueError, match=r"`x` must be an NHWC .*rank 4.*\(7, 7, 3\)"):
        dropblock(_key(60), jnp.ones((7, 7, 3)), 0.5, block_size=3)


def test_zoneout_shape_mismatch():
    with pytest.raises(
        ValueError, match=r"`h_prev` and `h_new` .*h_prev.shape=\(3,\).*\(4,\)"
    ):
        zoneout(_key(61), jnp.zeros(3), jnp.zeros(4), 0.5)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("bad", [1, "yes", None, np.bool_(True)])
def test_deterministic_must_be_a_bool(name, bad):
    with pytest.raises(TypeError, match=r"`deterministic` must be a Python bool"):
        CALLS[name](_key(62), INPUT[name], 0.5, deterministic=bad)


def test_public_names():
    for name in [
        "dropout",
        "spatial_dropout",
        "gaussian_dropout",
        "gaussian_noise",
        "alpha_dropout",
        "drop_path",
        "dropblock",
        "zoneout",
    ]:
        assert name in jaxreg.__all__
        assert getattr(jaxreg, name) is getattr(jaxreg.stochastic, name)


# --- Lead's additions: gaps the first pass of this file reported. ---


def test_gaussian_dropout_traced_rate_one_is_zero_and_nan_free():
    x = jnp.linspace(-1.0, 1.0, 16)

    def f(x, rate):
        return jaxreg.gaussian_dropout(jax.random.key(0), x, rate).sum()

    value, grad = jax.jit(jax.value_and_grad(f))(x, jnp.float32(1.0))
    assert value == 0.0
    assert bool(jnp.all(grad == 0.0))


@pytest.mark.parametrize("inverted", ["no", 1, None])
def test_dropout_inverted_must_be_bool(inverted):
    with pytest.raises(TypeError, match=r"`inverted` must be a Python bool"):
        jaxreg.dropout(jax.random.key(0), jnp.ones(3), 0.5, inverted=inverted)


@pytest.mark.parametrize(
    "call",
    [
        lambda k: jaxreg.dropout(k, jnp.ones(3), 0.5, deterministic=True),
        lambda k: jaxreg.dropout(k, jnp.ones(3), 0.0),
        lambda k: jaxreg.dropout(k, jnp.ones(3), 1.0),
        lambda k: jaxreg.gaussian_noise(k, jnp.ones(3), 0.0),
        lambda k: jaxreg.alpha_dropout(k, jnp.ones(3), 0.5, deterministic=True),
        lambda k: jaxreg.zoneout(k, jnp.ones(3), jnp.ones(3), 0.5, deterministic=True),
    ],
)
def test_key_is_checked_even_when_unused(call):
    with pytest.raises(TypeError, match=r"`key` must be a JAX PRNG key"):
        call(123)
    with pytest.raises(ValueError, match=r"jax\.vmap"):
        call(jax.random.split(jax.random.key(0), 2))


# --- Key-only memory of alpha dropout and DropBlock ----------------------------------
# Both keep only the key's two seed words (and scalars) for the backward pass, which
# regenerates the mask. The references below are the previous implementations (a
# stored keep_mask, and for DropBlock the 2-D window minimum); outputs must be equal
# bit for bit.


def _alpha_from_mask(mask, x, q):
    """The previous alpha dropout, given its mask and keep probability ``q``."""
    ct = jnp.promote_types(x.dtype, jnp.float32)
    q = jnp.asarray(q, ct)
    safe_q = jnp.where(q > 0, q, 1.0)
    alpha = jaxreg.stochastic._ALPHA_PRIME
    a = jnp.where(q > 0, (safe_q + alpha**2 * safe_q * (1 - safe_q)) ** -0.5, 0)
    b = -a * alpha * (1 - q)
    y = jnp.where(mask, x.astype(ct), jnp.asarray(alpha, ct))
    return (a * y + jnp.where(q > 0, b, 0.0)).astype(x.dtype)


def _alpha_reference(key, x, rate):
    return _alpha_from_mask(keep_mask(key, x.shape, rate), x, keep_probability(rate))


def _dropblock_gamma_scale(rate, block_size):
    gamma = jaxreg.stochastic._dropblock_center_rate(rate, block_size)
    keep = keep_probability(gamma) ** (block_size * block_size)
    return gamma, 1.0 / keep  # keep > 0 for the rates used here


def _dropblock_mask(key, shape, rate, block_size):
    """The previous DropBlock mask: seeds on the padded grid, 2-D window minimum."""
    n, h, w, c = shape
    pad = block_size - 1
    gamma, _ = _dropblock_gamma_scale(rate, block_size)
    seeds = keep_mask(key, (n, h + pad, w + pad, c), gamma)
    window = (1, block_size, block_size, 1)
    kept = jax.lax.reduce_window(
        seeds.astype(jnp.uint8), jnp.uint8(1), jax.lax.min, window, (1,) * 4, "VALID"
    )
    return kept.astype(bool)


def _dropblock_from_mask(mask, x, scale):
    y = x.astype(jnp.promote_types(x.dtype, jnp.float32)) * scale
    return jax.lax.select(mask, y, jnp.zeros_like(y)).astype(x.dtype)


def _dropblock_reference(key, x, rate, block_size):
    _, scale = _dropblock_gamma_scale(rate, block_size)
    return _dropblock_from_mask(
        _dropblock_mask(key, x.shape, rate, block_size), x, scale
    )


def _bitwise_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(
        np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", [0.05, 0.3, 0.9])
def test_alpha_dropout_key_only_equals_the_stored_mask_formula(dtype, rate):
    key = _key(901, round(rate * 100))
    x = _x((5, 7, 3), seed=1, dtype=dtype)
    # Eager against eager and jit against jit: under jit XLA contracts the affine
    # map ``a * y + b`` into a fused multiply-add and folds ``b`` itself, so jit
    # and eager may differ in the last bit (both before and after key-only memory).
    _bitwise_equal(alpha_dropout(key, x, rate), _alpha_reference(key, x, rate))
    _bitwise_equal(
        jax.jit(alpha_dropout, static_argnums=2)(key, x, rate),
        jax.jit(_alpha_reference, static_argnums=2)(key, x, rate),
    )
    # A traced rate takes the traced-threshold path of the sampler.
    traced = jax.jit(alpha_dropout)(key, x, jnp.float32(rate))
    _bitwise_equal(traced, jax.jit(_alpha_reference)(key, x, jnp.float32(rate)))
    # Both values of the mask occur, so the comparison covers both branches.
    mask = keep_mask(key, x.shape, rate)
    assert bool(mask.any()) and not bool(mask.all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "block_size", "rate"),
    [
        ((2, 9, 6, 3), 1, 0.3),
        ((2, 9, 6, 3), 2, 0.3),
        ((2, 9, 6, 3), 3, 0.5),
        ((1, 7, 11, 2), 5, 0.2),
        ((1, 4, 4, 2), 7, 0.5),  # block larger than the map
    ],
)
def test_dropblock_key_only_equals_the_stored_mask_formula(
    dtype, shape, block_size, rate
):
    key = _key(902, block_size, round(rate * 100))
    x = _x(shape, seed=2, dtype=dtype)
    ref = _dropblock_reference(key, x, rate, block_size)
    _bitwise_equal(dropblock(key, x, rate, block_size=block_size), ref)
    static = jax.jit(dropblock, static_argnums=2, static_argnames="block_size")
    _bitwise_equal(static(key, x, rate, block_size=block_size), ref)
    jitted = jax.jit(dropblock, static_argnames="block_size")
    traced = jitted(key, x, jnp.float32(rate), block_size=block_size)
    ref_traced = jax.jit(_dropblock_reference, static_argnums=3)(
        key, x, jnp.float32(rate), block_size
    )
    _bitwise_equal(traced, ref_traced)
    mask = _dropblock_mask(key, shape, rate, block_size)
    assert bool(mask.any()) and not bool(mask.all())


def _residual_sizes(f, x):
    _, vjp = jax.vjp(f, x)
    return [np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp)]


@pytest.mark.parametrize("name", ["alpha", "dropblock"])
def test_alpha_dropout_and_dropblock_residuals_are_seed_words(name):
    # What the vjp closure keeps: the 2 uint32 seed words, the uint32 threshold,
    # the bool "drop all" flag and one float scalar (alpha dropout's slope ``a``,
    # DropBlock's scale): 6 elements in all, none of them depends on x's size.
    # The stored-mask references keep x.size-element masks, which this check sees.
    key = _key(903, len(name))
    x = _x((4, 8, 8, 2), seed=3)
    if name == "alpha":
        new = lambda x: alpha_dropout(key, x, 0.3)  # noqa: E731
        old = lambda x: _alpha_reference(key, x, 0.3)  # noqa: E731
    else:
        new = lambda x: dropblock(key, x, 0.3, block_size=3)  # noqa: E731
        old = lambda x: _dropblock_reference(key, x, 0.3, 3)  # noqa: E731
    sizes = _residual_sizes(new, x)
    assert max(sizes) <= 2 and sum(sizes) <= 6, sizes
    _, vjp = jax.vjp(new, x)
    seed = jax.random.bits(key, (2,), jnp.uint32)
    words = [
        leaf
        for leaf in jax.tree_util.tree_leaves(vjp)
        if np.shape(leaf) == (2,) and leaf.dtype == jnp.uint32
    ]
    assert len(words) == 1
    np.testing.assert_array_equal(words[0], seed)
    assert max(_residual_sizes(old, x)) == x.size


def test_alpha_dropout_and_dropblock_check_grads():
    key = _key(904)
    x = _x((2, 5, 4, 3), seed=4)
    check_grads(
        lambda x: alpha_dropout(key, x, 0.4), (x,), order=2, modes=["fwd", "rev"]
    )
    check_grads(
        lambda x: dropblock(key, x, 0.3, block_size=2),
        (x,),
        order=2,
        modes=["fwd", "rev"],
    )
    # The gradients are the stored-mask ones: a * mask and scale * blocks.
    g = jax.grad(lambda x: jnp.sum(alpha_dropout(key, x, 0.4)))(x)
    g_ref = jax.grad(lambda x: jnp.sum(_alpha_reference(key, x, 0.4)))(x)
    _bitwise_equal(g, g_ref)
    assert bool(jnp.all((g == 0) == ~keep_mask(key, x.shape, 0.4)))
    g = jax.grad(lambda x: jnp.sum(dropblock(key, x, 0.3, block_size=2) * x))(x)
    g_ref = jax.grad(lambda x: jnp.sum(_dropblock_reference(key, x, 0.3, 2) * x))(x)
    _bitwise_equal(g, g_ref)


@pytest.mark.parametrize("name", ["alpha", "dropblock"])
def test_alpha_dropout_and_dropblock_jit_and_vmap_over_keys(name):
    keys = jax.random.split(_key(905, len(name)), 3)
    x = _x((3, 2, 6, 5, 2), seed=5)
    if name == "alpha":
        f = lambda k, x: alpha_dropout(k, x, 0.25)  # noqa: E731
    else:
        f = lambda k, x: dropblock(k, x, 0.25, block_size=3)  # noqa: E731
    batched = jax.vmap(f)(keys, x)
    for i in range(3):
        eager = f(keys[i], x[i])
        jitted = jax.jit(f)(keys[i], x[i])
        if name == "alpha":
            # The same mask; the affine map ``a * y + b`` is a fused multiply-add
            # under jit (see the test above), a last-bit difference.
            np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
            dropped = ~keep_mask(keys[i], x[i].shape, 0.25)
            assert bool(jnp.all(jnp.where(dropped, jitted == jitted[dropped][0], True)))
        else:
            _bitwise_equal(jitted, eager)
        _bitwise_equal(batched[i], eager)
    # Same for the gradients (the regenerated masks under vmap).
    grad = jax.grad(lambda x, k: jnp.sum(f(k, x) * x))
    gb = jax.vmap(grad)(x, keys)
    for i in range(3):
        _bitwise_equal(gb[i], grad(x[i], keys[i]))


def _temp_bytes(loss, *args):
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", ["alpha", "dropblock"])
def test_alpha_dropout_and_dropblock_memory_per_layer_is_that_of_a_given_mask(name):
    # A net of `depth` layers in a scan, differentiated under jit. Within one XLA
    # program without loops the stored-mask version costs nothing extra (XLA
    # fuses the hash into both passes), but a scan stacks each step's residuals,
    # so there a stored mask costs its bytes per layer. Compared: the key-only
    # function, the same net with the masks passed in as arguments (which
    # temp_size_in_bytes does not count), and the stored-mask reference. The
    # depth cancels the one-layer regeneration workspace: per extra layer the
    # key-only net may need at most 64 bytes more than the given-mask net (seed
    # words and scalars, with alignment), the stored-mask net at least the mask.
    rate = 0.3
    if name == "alpha":
        x = _x((16, 64), seed=6)
        shape = x.shape
        q = keep_probability(rate)

        def layer(w, h):
            return jnp.tanh(h @ w)

        new = lambda k, h, m: alpha_dropout(k, h, rate)  # noqa: E731
        old = lambda k, h, m: _alpha_reference(k, h, rate)  # noqa: E731
        given = lambda k, h, m: _alpha_from_mask(m, h, q)  # noqa: E731
        make_mask = lambda k: keep_mask(k, shape, rate)  # noqa: E731
        weight = (64, 64)
    else:
        x = _x((2, 8, 8, 8), seed=6)
        shape = x.shape
        _, scale = _dropblock_gamma_scale(rate, 3)

        def layer(w, h):
            dims = ("NHWC", "HWIO", "NHWC")
            conv = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", None, None, dims)
            return jnp.tanh(conv)

        new = lambda k, h, m: dropblock(k, h, rate, block_size=3)  # noqa: E731
        old = lambda k, h, m: _dropblock_reference(k, h, rate, 3)  # noqa: E731
        given = lambda k, h, m: _dropblock_from_mask(m, h, scale)  # noqa: E731
        make_mask = lambda k: _dropblock_mask(k, shape, rate, 3)  # noqa: E731
        weight = (3, 3, 8, 8)

    def net(f, depth):
        keys = jax.random.split(_key(906, len(name)), depth)
        masks = jax.vmap(make_mask)(keys)
        ws = jnp.full((depth,) + weight, 0.05, jnp.float32)

        def loss(ws, x, masks):
            def body(h, args):
                w, k, m = args
                return f(k, layer(w, h), m), None

            h, _ = jax.lax.scan(body, x, (ws, keys, masks))
            return jnp.sum(h**2)

        return _temp_bytes(loss, ws, x, masks)

    mask_bytes = math.prod(shape)  # one bool per element
    shallow, deep = 2, 6
    per_layer = {
        label: (net(f, deep) - net(f, shallow)) / (deep - shallow)
        for label, f in [("new", new), ("given", given), ("old", old)]
    }
    assert per_layer["new"] <= per_layer["given"] + 64, per_layer
    assert per_layer["old"] >= per_layer["given"] + mask_bytes, per_layer


# --- dropout(activation=...): the fused activation + dropout --------------------


def _fused_inputs(dtype=jnp.float32, shape=(48, 37)):
    x = 2.0 * jax.random.normal(jax.random.key(11), shape)
    return x.astype(dtype), jax.random.key(12)


@pytest.mark.parametrize("inverted", [True, False])
@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_activation_equals_the_composition_exactly(name, inverted):
    x, key = _fused_inputs()
    f = FUSABLE[name]
    want = jaxreg.dropout(key, f(x), 0.3, inverted=inverted)
    for activation in (name, f):
        got = jaxreg.dropout(key, x, 0.3, inverted=inverted, activation=activation)
        np.testing.assert_array_equal(got, want)
    dims = jaxreg.dropout(key, x, 0.3, broadcast_dims=(0,), activation=name)
    np.testing.assert_array_equal(
        dims, jaxreg.dropout(key, f(x), 0.3, broadcast_dims=(0,))
    )


def test_fused_activation_accepts_the_flax_and_lax_spellings():
    import flax.linen as nn
    from flax import nnx

    x, key = _fused_inputs()
    want = jaxreg.dropout(key, jnp.tanh(x), 0.2)
    for f in (nn.tanh, nnx.tanh, jax.nn.tanh, jax.lax.tanh):
        np.testing.assert_array_equal(jaxreg.dropout(key, x, 0.2, activation=f), want)
    want = jaxreg.dropout(key, jax.nn.sigmoid(x), 0.2)
    got = jaxreg.dropout(key, x, 0.2, activation=jax.lax.logistic)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_fused_activation_low_precision_within_one_rounding(dtype):
    # f(x) is computed in float32 and rounded once; the composition rounds f(x)
    # to ``dtype`` first, so the two differ by at most one ulp of the output.
    x, key = _fused_inputs(dtype)
    got = jaxreg.dropout(key, x, 0.3, activation="tanh")
    want = jaxreg.dropout(key, jnp.tanh(x), 0.3)
    assert got.dtype == dtype
    ulp = np.asarray(jnp.finfo(dtype).eps, np.float32) * np.abs(
        np.asarray(want, np.float32)
    )
    np.testing.assert_array_less(
        np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32)),
        2 * ulp + 1e-30,
    )
    np.testing.assert_array_equal(got == 0, want == 0)


@pytest.mark.parametrize("inverted", [True, False])
@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_activation_gradients_equal_the_composition(name, inverted):
    x, key = _fused_inputs()
    f = FUSABLE[name]

    def loss(x, fused):
        if fused:
            h = jaxreg.dropout(key, x, 0.3, inverted=inverted, activation=name)
        else:
            h = jaxreg.dropout(key, f(x), 0.3, inverted=inverted)
        return jnp.sum(jnp.sin(h))

    g_fused = jax.grad(loss)(x, True)
    g_plain = jax.grad(loss)(x, False)
    np.testing.assert_allclose(g_fused, g_plain, rtol=1e-5, atol=1e-6)
    # Dropped elements get exactly no gradient.
    dropped = ~jaxreg.keep_mask(key, x.shape, 0.3)
    assert bool((g_fused[dropped] == 0).all())


@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_activation_check_grads_second_order(name):
    # Finite differences need float64 (in float32 they fail for the unfused
    # composition too). Second order checks the derivative rule's own derivative.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (6, 7), jnp.float64)
        key = jax.random.key(5)
        check_grads(
            lambda x: jaxreg.dropout(key, x, 0.4, activation=name),
            (x,),
            order=2,
            modes=["fwd", "rev"],
        )


def test_fused_activation_keeps_only_its_output_for_the_backward_pass():
    x, key = _fused_inputs()

    def residuals(fn):
        out, vjp = jax.vjp(fn, x)
        return out, [leaf for leaf in jax.tree_util.tree_leaves(vjp)]

    out, leaves = residuals(lambda x: jaxreg.dropout(key, x, 0.3, activation="tanh"))
    big = [leaf for leaf in leaves if np.size(leaf) > 2]
    assert len(big) == 1, [np.shape(leaf) for leaf in leaves]
    np.testing.assert_array_equal(big[0], out)  # the output itself
    # Control: the unfused composition keeps x-sized residuals for tanh's
    # derivative that are not its output.
    out, leaves = residuals(lambda x: jaxreg.dropout(key, jnp.tanh(x), 0.3))
    big = [leaf for leaf in leaves if np.size(leaf) > 2]
    assert big and not any(np.array_equal(leaf, out) for leaf in big)


def test_fused_activation_compiled_memory_matches_no_dropout():
    # A 4-layer tanh MLP: with the fused form the step's temporary memory is that
    # of the net without dropout; applying tanh and dropout separately adds about
    # one activation buffer per layer.
    width, batch, depth = 128, 256, 4
    ws = [jnp.eye(width) * 0.5] * depth
    x, key = jnp.ones((batch, width)), jax.random.key(0)

    def loss(ws, x, mode):
        h = x
        for i, w in enumerate(ws):
            k = jax.random.fold_in(key, i)
            if mode == "none":
                h = jnp.tanh(h @ w)
            elif mode == "fused":
                h = jaxreg.dropout(k, h @ w, 0.1, activation="tanh")
            else:
                h = jaxreg.dropout(k, jnp.tanh(h @ w), 0.1)
        return jnp.sum(h)

    def temp(mode):
        c = jax.jit(jax.grad(functools.partial(loss, mode=mode))).lower(ws, x).compile()
        return c.memory_analysis().temp_size_in_bytes

    act = batch * width * 4
    none, fused, plain = temp("none"), temp("fused"), temp("plain")
    assert fused <= none + 1024, (none, fused)
    assert plain >= none + (depth - 1) * act, (none, plain)


def test_fused_activation_inference_and_edge_rates():
    x, key = _fused_inputs()
    p = jaxreg.keep_probability(0.3)
    relu = jax.nn.relu(x)
    np.testing.assert_array_equal(
        jaxreg.dropout(None, x, 0.3, deterministic=True, activation="relu"), relu
    )
    classic = jaxreg.dropout(
        None, x, 0.3, deterministic=True, inverted=False, activation="relu"
    )
    np.testing.assert_allclose(classic, relu * p, rtol=1e-6)
    np.testing.assert_array_equal(jaxreg.dropout(key, x, 0.0, activation="relu"), relu)
    np.testing.assert_array_equal(
        jaxreg.dropout(key, x, 1.0, activation="relu"), jnp.zeros_like(x)
    )
    # A traced rate: same mask as the static rate; rate 1 gives zeros with finite,
    # zero gradients.
    f = jax.jit(lambda x, r: jaxreg.dropout(key, x, r, activation="tanh"))
    static = jaxreg.dropout(key, x, 0.3, activation="tanh")
    np.testing.assert_allclose(f(x, 0.3), static, rtol=1e-6)
    np.testing.assert_array_equal(f(x, 0.3) == 0, static == 0)
    g = jax.grad(lambda x: jnp.sum(f(x, 1.0)))(x)
    assert bool((f(x, 1.0) == 0).all()) and bool((g == 0).all())


def test_fused_activation_jit_vmap_scan_remat():
    x, key = _fused_inputs()
    fn = lambda k, x: jaxreg.dropout(k, x, 0.5, activation="sigmoid")  # noqa: E731
    np.testing.assert_array_equal(jax.jit(fn)(key, x), fn(key, x))
    keys = jax.random.split(key, 3)
    xs = jnp.stack([x, -x, 2 * x])
    batched = jax.vmap(fn)(keys, xs)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], fn(keys[i], xs[i]))
    grad = jax.grad(lambda x, k: jnp.sum(fn(k, x)))
    gb = jax.vmap(grad)(xs, keys)
    for i in range(3):
        np.testing.assert_array_equal(gb[i], grad(xs[i], keys[i]))

    def body(h, k):
        return jax.checkpoint(fn)(k, h), None

    out, _ = jax.lax.scan(body, x, keys)
    want = x
    for k in keys:
        want = fn(k, want)
    np.testing.assert_array_equal(out, want)
    g_scan = jax.grad(lambda x: jnp.sum(jax.lax.scan(body, x, keys)[0]))(x)
    g_loop = jax.grad(
        lambda x: jnp.sum(functools.reduce(lambda h, k: fn(k, h), keys, x))
    )(x)
    np.testing.assert_allclose(g_scan, g_loop, rtol=1e-6)


def test_fused_activation_keeps_exactly_the_keep_mask():
    # relu of positive inputs is positive, so the non-zeros are the kept elements.
    x = jnp.abs(jax.random.normal(jax.random.key(3), (1000, 1000))) + 0.1
    key = jax.random.key(4)
    out = jaxreg.dropout(key, x, 0.1, activation="relu")
    np.testing.assert_array_equal(out != 0, jaxreg.keep_mask(key, x.shape, 0.1))


@pytest.mark.parametrize(
    "bad", ["gelu", "Tanh", jax.nn.gelu, jax.nn.silu, lambda x: x, [jnp.tanh], 3]
)
def test_fused_activation_rejects_what_it_cannot_fuse(bad):
    x, key = _fused_inputs()
    with pytest.raises(ValueError, match="`activation` must be None, one of"):
        jaxreg.dropout(key, x, 0.3, activation=bad)
    with pytest.raises(ValueError, match="derivative is a function of its output"):
        jaxreg.dropout(None, x, 0.3, deterministic=True, activation=bad)
