"""jaxreg.linen.Dropout(activation=...): the fused activation and dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import FUSED_CASES, FUSED_IDS, check_fused_grads, check_fused_residuals
from _modules import KEY, X, assert_close_to_sum_rounding, module_key

import jaxreg
import jaxreg.linen as jl


@pytest.mark.parametrize("activation, f", FUSED_CASES, ids=FUSED_IDS)
@pytest.mark.parametrize("rate, dims, inverted", [(0.3, (), True), (0.5, (1,), False)])
def test_dropout_activation_equals_fused_function_and_unfused_module(
    activation, f, rate, dims, inverted
):
    key = jax.random.key(21)
    fused = jl.Dropout(rate, dims, activation=activation, inverted=inverted)
    unfused = jl.Dropout(rate, dims, inverted=inverted)
    rngs = {"dropout": key}
    y = fused.apply({}, X, deterministic=False, rngs=rngs)
    assert y.dtype == X.dtype and y.shape == X.shape
    # The key the module draws with make_rng, fed to the fused pure function.
    expected = jaxreg.dropout(
        module_key(fused, key),
        X,
        rate,
        broadcast_dims=dims,
        inverted=inverted,
        activation=activation,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    # The same mask and values as activation-then-dropout (bit-exact in float32).
    y_unfused = unfused.apply({}, f(X), deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_unfused))
    # A key passed to the call is used as is.
    y = fused.apply({}, X, deterministic=False, rng=key)
    np.testing.assert_array_equal(
        np.asarray(y), np.asarray(unfused.apply({}, f(X), deterministic=False, rng=key))
    )
    assert not bool(jnp.all(y == f(X)))  # something was dropped


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
def test_dropout_activation_deterministic_rate_zero_and_one(activation, f):
    fx = f(X)
    for where in ("constructor", "call"):
        if where == "constructor":
            y = jl.Dropout(0.4, deterministic=True, activation=activation).apply({}, X)
        else:
            y = jl.Dropout(0.4, activation=activation).apply({}, X, deterministic=True)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(fx))
    # Classic dropout scales at inference, like the unfused module on f(x).
    classic = jl.Dropout(0.4, deterministic=True, inverted=False, activation=activation)
    y = classic.apply({}, X)
    np.testing.assert_array_equal(
        np.asarray(y),
        np.asarray(jl.Dropout(0.4, deterministic=True, inverted=False).apply({}, fx)),
    )
    assert not bool(jnp.all(y == fx))
    # Rate 0 returns f(x) and rate 1 zeros without drawing a key (no rngs given).
    y0 = jl.Dropout(0.0, activation=activation).apply({}, X, deterministic=False)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(fx))
    y1 = jl.Dropout(1.0, activation=activation).apply({}, X, deterministic=False)
    np.testing.assert_array_equal(np.asarray(y1), 0.0)


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
@pytest.mark.parametrize("inverted", [True, False])
def test_dropout_activation_gradients_equal_unfused(activation, f, inverted):
    fused = jl.Dropout(
        0.3, deterministic=False, inverted=inverted, activation=activation
    )
    unfused = jl.Dropout(0.3, deterministic=False, inverted=inverted)
    check_fused_grads(
        lambda x, k: fused.apply({}, x, rng=k),
        lambda x, k: unfused.apply({}, x, rng=k),
        f,
        inverted=inverted,
        activation=activation,
    )


def test_dropout_activation_keeps_only_its_output_for_the_backward_pass():
    fused = jl.Dropout(0.3, deterministic=False, activation="tanh")
    unfused = jl.Dropout(0.3, deterministic=False)
    check_fused_residuals(
        lambda x, k: fused.apply({}, x, rng=k), lambda x, k: unfused.apply({}, x, rng=k)
    )


class _Layer(nn.Module):
    fused: bool

    @nn.compact
    def __call__(self, x, train):
        h = nn.Dense(5)(x)
        if self.fused:
            return jl.Dropout(0.5, deterministic=not train, activation=nn.tanh)(h)
        return jl.Dropout(0.5, deterministic=not train)(nn.tanh(h))


def test_dropout_activation_under_jit_in_a_model():
    x = jax.random.uniform(jax.random.key(2), (8, 3), minval=-1.0, maxval=1.0)
    variables = _Layer(True).init(KEY, x, train=False)
    # Same parameter tree as the unfused model: checkpoints are interchangeable.
    assert jax.tree.structure(variables) == jax.tree.structure(
        _Layer(False).init(KEY, x, train=False)
    )
    rngs = {"dropout": jax.random.key(4)}

    def run(fused, params, train):
        return _Layer(fused).apply(params, x, train=train, rngs=rngs)

    for train in (True, False):
        eager = run(True, variables, train)
        jitted = jax.jit(run, static_argnums=(0, 2))(True, variables, train)
        # The Dense layer's sums may be reordered between jit and eager (tanh and
        # the mask add no rounding); the same units are dropped.
        assert_close_to_sum_rounding(jitted, eager)
        np.testing.assert_array_equal(np.asarray(jitted) == 0, np.asarray(eager) == 0)
        np.testing.assert_array_equal(
            np.asarray(eager), np.asarray(run(False, variables, train))
        )

    def grads(fused):
        loss = lambda p: jnp.sum(run(fused, p, True) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(variables)

    # Parameter gradients are sums over the batch of per-element derivatives that
    # agree to about one float32 rounding (checked per element above); where the
    # sum cancels, that rounding is relative to the leaf's scale, not its value.
    assert_close_to_sum_rounding(grads(True), grads(False))


@pytest.mark.parametrize(
    "bad", ["gelu", "Tanh", nn.gelu, nn.swish, lambda x: x, 3, ["tanh"]]
)
def test_dropout_bad_activation_raises_at_construction(bad):
    with pytest.raises(ValueError, match=r"Dropout: `activation` must be None, one of"):
        jl.Dropout(0.5, activation=bad)
