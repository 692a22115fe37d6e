"""What every function of the dropout family (``jaxreg.stochastic``) shares: rate 0
and 1, gradients, jit, vmap, scan, checkpoint, dtypes, argument checks.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial
from _stochastic import (
    CALLS,
    DTYPES,
    INPUT,
    RATE_CHECKED,
    RATE_ONE_OK,
    data,
    jit_call,
    jit_value_and_grad,
    key_at,
    loss_of,
    ones_of,
)
from jax.test_util import check_grads

import jaxreg
from jaxreg import (
    dropout,
)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_rate_zero_returns_the_input(name):
    x = INPUT[name]
    fn = CALLS[name]
    expected = x  # zoneout at rate 0: always update to h_new = x
    out = fn(key_at(7), x, 0.0)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, expected)
    # a traced rate of 0 gives the same, bit for bit
    traced = jit_call(name)(key_at(7), x, 0.0)
    np.testing.assert_array_equal(traced, expected)


@pytest.mark.parametrize("name", RATE_ONE_OK)
@pytest.mark.parametrize("traced", [False, True], ids=["static", "traced"])
def test_rate_one_gives_zeros_and_finite_gradients(name, traced):
    x, fn = INPUT[name], CALLS[name]
    expected = 0.5 * x if name == "zoneout" else jnp.zeros_like(x)  # zoneout: h_prev
    if traced:
        out = jit_call(name)(key_at(8), x, 1.0)
        _, grad = jit_value_and_grad(name)(x, key_at(8), 1.0)
    else:
        out = fn(key_at(8), x, 1.0)
        grad = jax.grad(loss_of, 1)(name, x, key_at(8), 1.0)
    np.testing.assert_array_equal(out, expected)
    assert bool(jnp.isfinite(grad).all())
    if name != "zoneout":  # zoneout's output depends on h_prev = 0.5 * x
        np.testing.assert_array_equal(grad, jnp.zeros_like(x))


def test_rate_one_needs_no_key():
    for name in RATE_ONE_OK:
        x = INPUT[name]
        out = CALLS[name](None, x, 1.0)
        assert out.shape == x.shape
        out = CALLS[name](None, x, 0.0)
        assert out.shape == x.shape


@pytest.mark.parametrize("name", sorted(CALLS))
def test_check_grads_at_fixed_key(name):
    # At a fixed key every function is affine in its input, so a large finite
    # difference step has no truncation error and little float32 rounding error.
    # (First order only: second derivatives of an affine map are zero, and order 2
    # would triple this file's compile time.)
    x, fn = INPUT[name], CALLS[name]
    check_grads(
        lambda v: fn(key_at(10), v, 0.3), (x,), order=1, modes=("fwd", "rev"), eps=0.05
    )


@pytest.mark.parametrize("name", sorted(CALLS))
def test_jit_equals_eager(name):
    x, fn = INPUT[name], CALLS[name]
    eager = fn(key_at(12), x, 0.3)
    static_rate = jax.jit(lambda k, v: fn(k, v, 0.3))(key_at(12), x)
    traced_rate = jit_call(name)(key_at(12), x, 0.3)
    np.testing.assert_allclose(static_rate, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(traced_rate, eager, rtol=1e-6, atol=1e-6)
    # the keep decisions (zero pattern) are identical, not just close
    np.testing.assert_array_equal(static_rate == 0, eager == 0)
    np.testing.assert_array_equal(traced_rate == 0, eager == 0)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_vmap_over_keys_equals_loop(name):
    x, fn = INPUT[name], CALLS[name]
    keys = jax.random.split(key_at(13), 4)
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
    ys = jax.vmap(lambda k: dropout(k, ones_of((100, 100)), 0.3))(keys)
    kept = np.asarray(ys) != 0
    for i in range(1, 8):
        assert not np.array_equal(kept[0], kept[i])
    assert_binomial(int(kept.sum()), kept.size, 0.7)


def test_vmap_over_data_shares_the_key():
    # vmap over inputs with one key: each example sees the same mask.
    x = data((5, 20, 30), 14)
    ys = jax.vmap(lambda v: dropout(key_at(14), v, 0.5))(x)
    kept = np.asarray(ys) != 0
    assert (kept == kept[:1]).all()


@pytest.mark.parametrize("rate", [0.3, 0.6])
def test_scan_same_key_every_step_gives_a_constant_mask(rate):
    # Variational (time-shared) RNN dropout: the same key at every step.
    steps, key = 12, key_at(15)
    xs = data((steps, 8, 16), 15)

    def step(h, x_t):
        dropped = dropout(key, h, rate)
        h = jnp.tanh(dropped + x_t)
        return h, dropped != 0

    h0 = data((8, 16), 16)
    _, masks = jax.lax.scan(step, h0, xs)
    masks = np.asarray(masks)
    assert (masks == masks[:1]).all()
    assert 0 < masks[0].sum() < masks[0].size


def test_scan_with_a_mask_broadcast_over_time():
    # A mask for a (T, B, H) sequence shared over the time axis, applied in scan.
    steps = 10
    xs = data((steps, 6, 12), 17)
    ys = dropout(key_at(17), xs, 0.4, broadcast_dims=(0,))

    def step(carry, y_t):
        return carry, y_t != 0

    _, masks = jax.lax.scan(step, None, ys)
    masks = np.asarray(masks)
    assert (masks == masks[:1]).all()
    assert 0 < masks[0].sum() < masks[0].size


def test_scan_with_per_step_keys_changes_the_mask():
    keys = jax.random.split(key_at(18), 6)
    _, masks = jax.lax.scan(
        lambda c, k: (c, dropout(k, ones_of((10, 10)), 0.5) != 0), None, keys
    )
    masks = np.asarray(masks)
    for i in range(1, 6):
        assert not np.array_equal(masks[0], masks[i])


def test_scan_with_a_traced_rate_schedule():
    rates = jnp.array([0.0, 0.25, 0.5, 1.0])
    keys = jax.random.split(key_at(19), 4)
    _, ys = jax.lax.scan(
        lambda c, kr: (c, dropout(kr[0], ones_of(20000), kr[1])), None, (keys, rates)
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
    value, grad = jit_value_and_grad(name)(x, key_at(20), 0.4)
    value_c, grad_c = jit_value_and_grad(name, checkpoint=True)(x, key_at(20), 0.4)
    np.testing.assert_allclose(value_c, value, rtol=1e-6)
    np.testing.assert_allclose(grad_c, grad, rtol=1e-6, atol=1e-6)
    assert float(value) > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_dtype_is_preserved(name, dtype):
    x = INPUT[name].astype(dtype)
    assert CALLS[name](key_at(21), x, 0.3).dtype == dtype
    assert CALLS[name](key_at(21), x, 0.3, deterministic=True).dtype == dtype


@pytest.mark.parametrize("name", RATE_CHECKED)
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), -1, 2])
def test_bad_rate(name, bad):
    shown = re.escape(repr(float(bad)))
    with pytest.raises(ValueError, match=rf"`rate`.*got rate={shown}"):
        CALLS[name](key_at(45), INPUT[name], bad)
    # also on the deterministic path: a bad rate is a bug wherever it is used
    with pytest.raises(ValueError, match=rf"`rate`.*got rate={shown}"):
        CALLS[name](None, INPUT[name], bad, deterministic=True)


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
        CALLS[name](key_at(47), INPUT[name], bad)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_, jnp.complex64])
def test_non_float_input(name, dtype):
    x = INPUT[name].astype(dtype)
    arg = "h_(prev|new)" if name == "zoneout" else "x"
    shown = jnp.dtype(dtype).name
    with pytest.raises(
        TypeError, match=rf"`{arg}` must have a floating dtype.*{shown}"
    ):
        CALLS[name](key_at(50), x, 0.5)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("bad", [1, "yes", None, np.bool_(True)])
def test_deterministic_must_be_a_bool(name, bad):
    with pytest.raises(TypeError, match=r"`deterministic` must be a Python bool"):
        CALLS[name](key_at(62), INPUT[name], 0.5, deterministic=bad)


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
