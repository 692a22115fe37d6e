"""jaxreg.equinox.Dropout as a drop-in for equinox.nn.Dropout.

Equinox's test conventions (conftest.py) hold in every test here: strict dtype
promotion and rank promotion "raise".
"""

import dataclasses
import inspect
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import assert_binomial, digits
from _modules import (
    DropoutFlag,
    each_flag,
)

import jaxreg
import jaxreg.equinox as je

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(42), (4, 6, 6, 3))
# Equinox's own sentence (equinox/nn/_dropout.py), which ours starts with.
EQX_NO_KEY = "Dropout requires a key when running in non-deterministic mode."


def test_fields_and_call_signature_match_equinox():
    ours = [f.name for f in dataclasses.fields(je.Dropout)]
    theirs = [f.name for f in dataclasses.fields(eqx.nn.Dropout)]
    assert theirs == ["p", "inference"]
    # Equinox's fields first, in its order; ours adds keyword-only options.
    assert ours == theirs + ["broadcast_dims", "inverted", "activation"]
    init = inspect.signature(je.Dropout).parameters
    assert list(init)[:2] == ["p", "inference"]
    assert init["p"].default == 0.5 and init["inference"].default is False
    for name in ("broadcast_dims", "inverted", "activation"):
        assert init[name].kind is inspect.Parameter.KEYWORD_ONLY
    call = inspect.signature(je.Dropout.__call__).parameters
    eqx_call = inspect.signature(eqx.nn.Dropout.__call__).parameters
    assert list(call) == ["self", "x", "key", "inference"]
    for name in ("key", "inference"):
        assert call[name].kind is eqx_call[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert call[name].default is eqx_call[name].default is None
    layer = je.Dropout(0.3, True)
    assert (layer.p, layer.inference) == (0.3, True)


@pytest.mark.parametrize("how", ["constructor", "call", "inference_mode", "tree_at"])
def test_inference_path_identical_to_equinox(how):
    outs = []
    for cls in (eqx.nn.Dropout, je.Dropout):
        if how == "constructor":
            y = cls(0.5, inference=True)(X)
        elif how == "call":
            y = cls(0.5)(X, inference=True)
        elif how == "inference_mode":
            y = eqx.nn.inference_mode(cls(0.5))(X)
        else:
            y = eqx.tree_at(lambda m: m.inference, cls(0.5), True)(X)
        outs.append(y)
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(outs[0]))
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(X))


def test_p_zero_needs_no_key_and_p_one_gives_zeros_with_finite_gradients():
    for cls in (eqx.nn.Dropout, je.Dropout):
        np.testing.assert_array_equal(np.asarray(cls(0.0)(X)), np.asarray(X))
    np.testing.assert_array_equal(np.asarray(je.Dropout(1.0)(X)), 0.0)
    g = jax.grad(lambda x: je.Dropout(1.0)(x).sum())(X)
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(g == 0))


def test_missing_key_raises_runtime_error_starting_with_equinox_sentence():
    for cls in (eqx.nn.Dropout, je.Dropout):
        with pytest.raises(RuntimeError, match=re.escape(EQX_NO_KEY)) as info:
            cls(0.5)(X)
        assert str(info.value).startswith(EQX_NO_KEY)
    with pytest.raises(RuntimeError, match=r"eqx\.nn\.inference_mode\(model\)"):
        je.Dropout(0.5)(X)
    with pytest.raises(TypeError, match=r"`key` must be a JAX PRNG key"):
        je.Dropout(0.5)(X, key=3)


def test_training_output_scales_kept_units_like_equinox():
    # Both keep each unit with probability 1 - p and scale it by 1 / (1 - p); the
    # masks come from different samplers, so only the law is compared.
    x = jnp.ones((100_000,))
    for cls in (eqx.nn.Dropout, je.Dropout):
        y = cls(0.25)(x, key=KEY)
        kept = np.asarray(y != 0)
        np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
        assert_binomial(int(kept.sum()), x.size, 0.75)
    np.testing.assert_array_equal(
        np.asarray(je.Dropout(0.25)(x, key=KEY)),
        np.asarray(jaxreg.dropout(KEY, x, 0.25)),
    )


class _MLP(eqx.Module):
    layers: tuple
    dropout: eqx.Module

    def __init__(self, dropout, key):
        k1, k2 = jax.random.split(key)
        self.layers = (eqx.nn.Linear(64, 64, key=k1), eqx.nn.Linear(64, 10, key=k2))
        self.dropout = dropout

    def __call__(self, x, *, key=None):
        h = jax.nn.relu(self.layers[0](x))
        return self.layers[1](self.dropout(h, key=key))


def _train(model, tx, x, y, steps):
    """``steps`` optax steps on ``(x, y)`` (one key per example); the losses."""
    opt = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt, key):
        def loss_fn(model):
            keys = jax.random.split(key, x.shape[0])
            logits = jax.vmap(lambda xi, k: model(xi, key=k))(x, keys)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        # optax itself is not written for strict promotion (`decay**count`).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt = tx.update(grads, opt, params)
        return eqx.apply_updates(model, updates), opt, loss

    losses = []
    for key in jax.random.split(jax.random.key(1), steps):
        model, opt, loss = step(model, opt, key)
        losses.append(float(loss))
    return model, losses


def test_optimizers_never_see_the_rate():
    # equinox issues #681 / #772: a float `p` in the tree was picked up by
    # `eqx.is_array_like` filters and updated by optimizers. Ours is static.
    model = _MLP(je.Dropout(0.3), KEY)
    for where in (eqx.is_inexact_array, eqx.is_array_like, eqx.is_array):
        leaves = jax.tree.leaves(eqx.filter(model.dropout, where))
        assert leaves == [] or leaves == [False], where
    theirs = eqx.filter(_MLP(eqx.nn.Dropout(0.3), KEY).dropout, eqx.is_array_like)
    assert 0.3 in jax.tree.leaves(theirs)  # Equinox's float p is array-like
    # adamw with weight decay updates every trainable leaf, never the rate.
    x, y, _, _ = digits(n_train=64)
    model, _ = _train(model, optax.adamw(1e-2, weight_decay=0.5), x, y, steps=3)
    assert model.dropout.p == 0.3 and type(model.dropout.p) is float
    with pytest.raises(TypeError, match="not a leaf"):
        eqx.tree_at(lambda m: m.dropout.p, model, 0.1)
    # Rebuilding checks the new value.
    assert dataclasses.replace(model.dropout, p=0.1).p == 0.1
    with pytest.raises(ValueError, match=r"jaxreg\.equinox\.Dropout: `p`.*p=1\.5"):
        dataclasses.replace(model.dropout, p=1.5)


def test_model_swapping_equinox_dropout_for_ours_trains_unchanged():
    x, y, _, _ = digits(n_train=512)

    def train(model):
        return _train(model, optax.adam(3e-3), x, y, steps=60)

    theirs, ours = _MLP(eqx.nn.Dropout(0.3), KEY), _MLP(je.Dropout(0.3), KEY)
    # The same trainable leaves with the same initial values.
    for a, b in zip(
        jax.tree.leaves(eqx.filter(theirs, eqx.is_inexact_array)),
        jax.tree.leaves(eqx.filter(ours, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (_, losses_theirs), (trained, losses_ours) = train(theirs), train(ours)
    assert losses_theirs[0] == pytest.approx(losses_ours[0], rel=0.1)
    for losses in (losses_theirs, losses_ours):
        assert np.mean(losses[-10:]) < 0.25 * losses[0]
    assert np.mean(losses_ours[-10:]) == pytest.approx(
        np.mean(losses_theirs[-10:]), rel=0.5
    )
    # inference_mode switches our layer inside the trained model.
    infer = eqx.nn.inference_mode(trained)
    assert infer.dropout.inference is True
    h = jax.nn.relu(infer.layers[0](x[0]))
    np.testing.assert_array_equal(
        np.asarray(infer(x[0])), np.asarray(infer.layers[1](h))
    )


# How Dropout takes its flag, for the flag tests below.
FLAG = DropoutFlag(
    r"jaxreg\.equinox\.Dropout: `inference`",
    lambda flag: je.Dropout(0.5, flag),
    lambda x, flag: je.Dropout(0.5)(x, key=KEY, inference=flag),
)


@each_flag
@pytest.mark.parametrize("where", ["constructor", "call"])
def test_inference_flag_accepts_bools_and_0_d_arrays(flag, deterministic, where):
    if where == "constructor":
        y = je.Dropout(0.5, flag)(X, key=KEY)
    else:
        y = je.Dropout(0.5)(X, key=KEY, inference=flag)
    expected = X if deterministic else jaxreg.dropout(KEY, X, 0.5)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


def test_inference_flag_rejects_other_objects():
    FLAG.assert_rejects_bad_flags()


def test_traced_inference_flag_selects_the_path_like_the_static_flag():
    FLAG.assert_traced_selects_the_path()
    # The flag as a leaf of the model, set by tree_at inside filter_jit.
    layer = je.Dropout(0.5)

    @eqx.filter_jit
    def run(layer, flag):
        return eqx.tree_at(lambda m: m.inference, layer, flag)(X, key=KEY)

    np.testing.assert_array_equal(np.asarray(run(layer, jnp.asarray(True))), X)
    np.testing.assert_array_equal(
        np.asarray(run(layer, jnp.asarray(False))),
        np.asarray(jaxreg.dropout(KEY, X, 0.5)),
    )
    with pytest.raises(RuntimeError, match=r"traced `inference` flag"):
        jax.jit(lambda x, f: je.Dropout(0.5)(x, inference=f))(X, True)
