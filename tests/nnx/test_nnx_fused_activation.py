"""jaxreg.nnx.Dropout(activation=...): the fused activation and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import FUSED_CASES, FUSED_IDS, check_fused_grads, check_fused_residuals
from _modules import X, assert_close_to_sum_rounding, first_key, flat_paths
from flax import nnx

import jaxreg
import jaxreg.nnx as jn


@pytest.mark.parametrize("activation, f", FUSED_CASES, ids=FUSED_IDS)
@pytest.mark.parametrize("rate, dims, inverted", [(0.3, (), True), (0.5, (1,), False)])
def test_dropout_activation_equals_fused_function_and_unfused_module(
    activation, f, rate, dims, inverted
):
    def make(**kwargs):
        return jn.Dropout(
            rate,
            broadcast_dims=dims,
            inverted=inverted,
            rngs=nnx.Rngs(dropout=21),
            **kwargs,
        )

    fused, unfused = make(activation=activation), make()
    y = fused(X)
    assert y.dtype == X.dtype and y.shape == X.shape
    # The key the module draws first, fed to the fused pure function.
    expected = jaxreg.dropout(
        first_key(21),
        X,
        rate,
        broadcast_dims=dims,
        inverted=inverted,
        activation=activation,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    # The same mask and values as activation-then-dropout (bit-exact in float32),
    # also on the second call (both streams advanced once).
    for _ in range(2):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(unfused(f(X))))
        y = fused(X)
    # A key passed to the call is used as is.
    key = jax.random.key(3)
    y = fused(X, rngs=key)
    np.testing.assert_array_equal(
        np.asarray(y),
        np.asarray(
            jaxreg.dropout(
                key,
                X,
                rate,
                broadcast_dims=dims,
                inverted=inverted,
                activation=activation,
            )
        ),
    )
    assert not bool(jnp.all(y == f(X)))  # something was dropped


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
@pytest.mark.parametrize("how", ["constructor", "call", "eval", "view"])
def test_dropout_activation_deterministic_rate_zero_and_one(activation, f, how):
    fx = f(X)
    layer = jn.Dropout(0.4, activation=activation, rngs=nnx.Rngs(0))
    if how == "constructor":
        y = jn.Dropout(0.4, deterministic=True, activation=activation)(X)
    elif how == "call":
        y = layer(X, deterministic=True)
    elif how == "eval":
        layer.eval()
        y = layer(X)
    else:
        y = nnx.view(layer, deterministic=True)(X)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(fx))
    # Classic dropout scales at inference, like the unfused module on f(x).
    classic = jn.Dropout(0.4, deterministic=True, inverted=False, activation=activation)
    y = classic(X)
    np.testing.assert_array_equal(
        np.asarray(y),
        np.asarray(jn.Dropout(0.4, deterministic=True, inverted=False)(fx)),
    )
    assert not bool(jnp.all(y == fx))
    # Rate 0 returns f(x) and rate 1 zeros without drawing a key (no rngs given).
    y0 = jn.Dropout(0.0, activation=activation)(X)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(fx))
    np.testing.assert_array_equal(
        np.asarray(jn.Dropout(1.0, activation=activation)(X)), 0.0
    )


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
@pytest.mark.parametrize("inverted", [True, False])
def test_dropout_activation_gradients_equal_unfused(activation, f, inverted):
    fused = jn.Dropout(0.3, inverted=inverted, activation=activation)
    unfused = jn.Dropout(0.3, inverted=inverted)
    check_fused_grads(
        lambda x, k: fused(x, rngs=k),
        lambda x, k: unfused(x, rngs=k),
        f,
        inverted=inverted,
        activation=activation,
    )


def test_dropout_activation_keeps_only_its_output_for_the_backward_pass():
    fused = jn.Dropout(0.3, activation="tanh")
    unfused = jn.Dropout(0.3)
    check_fused_residuals(
        lambda x, k: fused(x, rngs=k), lambda x, k: unfused(x, rngs=k)
    )


class _Layer(nnx.Module):
    """``Linear -> tanh -> Dropout``, fused or not."""

    def __init__(self, fused, rngs):
        self.linear = nnx.Linear(3, 5, rngs=rngs)
        self.fused = fused
        if fused:
            self.drop = jn.Dropout(0.5, activation=nnx.tanh, rngs=rngs)
        else:
            self.drop = jn.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        h = self.linear(x)
        return self.drop(h if self.fused else nnx.tanh(h))


def test_dropout_activation_under_nnx_jit_and_nnx_grad():
    x = jax.random.uniform(jax.random.key(2), (8, 3), minval=-1.0, maxval=1.0)
    a, b, c = (_Layer(fused, nnx.Rngs(0)) for fused in (True, True, False))
    # Same state paths as the unfused model: checkpoints are interchangeable.
    assert flat_paths(a) == flat_paths(c)
    f = nnx.jit(lambda m, x: m(x))

    def close(jitted, eager):
        # The Linear layer's sums may be reordered between jit and eager: equal to
        # float32 rounding of the output's scale, with the same units dropped.
        assert_close_to_sum_rounding(jitted, eager)
        np.testing.assert_array_equal(np.asarray(jitted) == 0, np.asarray(eager) == 0)

    for _ in range(2):  # two steps: different masks, identical in all three
        y = f(a, x)
        eager = b(x)
        close(y, eager)
        np.testing.assert_array_equal(np.asarray(eager), np.asarray(c(x)))
    assert int(a.drop.rngs.count[...]) == int(b.drop.rngs.count[...]) == 2
    for model in (a, c):
        model.eval()
    close(f(a, x), c(x))
    np.testing.assert_array_equal(np.asarray(c(x)), np.asarray(nnx.tanh(a.linear(x))))
    for model in (a, c):
        model.train()

    def loss(m):
        return jnp.sum(m(x) ** 2)

    g_fused = nnx.jit(nnx.grad(loss))(a)
    g_unfused = nnx.grad(loss)(c)
    leaves = jax.tree.leaves(g_fused), jax.tree.leaves(g_unfused)
    assert len(leaves[0]) == len(leaves[1]) == 2  # kernel and bias
    for u, v in zip(*leaves, strict=True):
        assert bool(jnp.any(u != 0))
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6)


@pytest.mark.parametrize(
    "bad", ["gelu", "Tanh", nnx.gelu, nnx.swish, lambda x: x, 3, ["tanh"]]
)
def test_dropout_bad_activation_raises_at_construction(bad):
    with pytest.raises(ValueError, match=r"Dropout: `activation` must be None, one of"):
        jn.Dropout(0.5, activation=bad)
