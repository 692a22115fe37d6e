"""jaxreg.linen.Dropout as a drop-in for flax.linen.Dropout: fields, paths, errors, training."""

import re

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import digits
from _modules import (
    KEY,
    RATE_EDGES,
    DropoutFlag,
    X,
    assert_inference_is_reference_and_input,
    each_flag,
)

import jaxreg.linen as jl


def test_fields_and_call_signature_match_flax():
    import dataclasses
    import inspect

    ours = [f.name for f in dataclasses.fields(jl.Dropout)]
    theirs = [f.name for f in dataclasses.fields(nn.Dropout)]
    # Same fields in the same order; ours adds `inverted` and `activation` after
    # Flax's own fields (before the `parent` and `name` every linen module has).
    assert ours == theirs[:-2] + ["inverted", "activation"] + theirs[-2:]
    assert theirs[-2:] == ["parent", "name"]
    sig_ours = inspect.signature(jl.Dropout.__call__)
    sig_theirs = inspect.signature(nn.Dropout.__call__)
    assert list(sig_ours.parameters) == list(sig_theirs.parameters)
    assert jl.Dropout(0.3, (1,), True, "noise").broadcast_dims == (1,)
    positional = jl.Dropout(0.3, (1,), True, "noise", False, "tanh")
    assert (positional.inverted, positional.activation) == (False, "tanh")
    assert jl.Dropout(0.3).activation is None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("where", ["constructor", "call"])
def test_deterministic_path_identical_to_flax(dtype, where):
    x = X.astype(dtype)
    outs = []
    for cls in (nn.Dropout, jl.Dropout):
        if where == "constructor":
            y = cls(0.5, deterministic=True).apply({}, x)
        else:
            y = cls(0.5).apply({}, x, deterministic=True)
        outs.append(y)
    assert_inference_is_reference_and_input(*outs, x, dtype)


def test_rate_zero_and_one_match_flax_without_rng():
    # Neither module draws a key at rate 0 or 1: no rngs needed.
    for rate, expected in RATE_EDGES:
        for cls in (nn.Dropout, jl.Dropout):
            y = cls(rate).apply({}, X, deterministic=False)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))

    def grad(cls):
        f = lambda x: cls(1.0, deterministic=False).apply({}, x).sum()  # noqa: E731
        return jax.grad(f)(X)

    g_ours, g_flax = grad(jl.Dropout), grad(nn.Dropout)
    assert bool(jnp.all(jnp.isfinite(g_ours)))
    np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g_flax))
    np.testing.assert_array_equal(np.asarray(g_ours), 0.0)


def _shared_axes(y):
    """Axes along which ``y`` is constant (where the mask is shared)."""
    return tuple(
        ax
        for ax in range(y.ndim)
        if bool(jnp.all(y == jnp.take(y, jnp.array([0]), ax)))
    )


@pytest.mark.parametrize("dims", [(), (0,), (1,), (0, 2), (-1,), (1, 2)])
def test_broadcast_dims_match_flax(dims):
    x = jnp.ones((8, 9, 10))
    shared = []
    for cls in (nn.Dropout, jl.Dropout):
        y = cls(0.5, broadcast_dims=dims).apply(
            {}, x, deterministic=False, rngs={"dropout": KEY}
        )
        assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}
        shared.append(_shared_axes(y))
    assert shared[0] == shared[1] == tuple(sorted(d % 3 for d in dims))


# Flax's own sentences (flax/linen/module.py, merge_param), which ours start with.
FLAX_NOWHERE = (
    'Parameter "deterministic" must be passed to the constructor or at call time.'
)
FLAX_TWICE = (
    'Parameter "deterministic" was passed to the constructor and at call time.'
    " Should be passed just once."
)


def test_missing_deterministic_errors_start_with_flax_sentence():
    for case, sentence in (("nowhere", FLAX_NOWHERE), ("twice", FLAX_TWICE)):
        messages = []
        for cls in (nn.Dropout, jl.Dropout):
            module = cls(0.5, deterministic=None if case == "nowhere" else True)
            kwargs = {} if case == "nowhere" else {"deterministic": False}
            with pytest.raises(ValueError, match=re.escape(sentence)) as info:
                module.apply({}, X, rngs={"dropout": KEY}, **kwargs)
            messages.append(str(info.value))
        flax_msg, ours = messages
        assert flax_msg == sentence
        assert ours.startswith(flax_msg)  # everything Flax says, first ...
        assert len(ours) > len(flax_msg)  # ... then how to fix it
    with pytest.raises(ValueError, match=r"deterministic=not train"):
        jl.Dropout(0.5).apply({}, X)
    with pytest.raises(ValueError, match=r"It was set to True in the constructor"):
        jl.Dropout(0.5, deterministic=True).apply({}, X, deterministic=True)


# How Dropout takes its flag, for the flag tests below.
FLAG = DropoutFlag(
    r"jaxreg\.linen\.Dropout: `deterministic`",
    lambda flag: jl.Dropout(0.5, deterministic=flag),
    lambda x, flag: jl.Dropout(0.5).apply({}, x, deterministic=flag, rng=KEY),
)


@each_flag
@pytest.mark.parametrize("where", ["constructor", "call"])
def test_deterministic_accepts_what_flax_accepts(flag, deterministic, where):
    rngs = {"dropout": KEY}
    outs = []
    for cls in (nn.Dropout, jl.Dropout):
        if where == "constructor":
            outs.append(cls(0.5, deterministic=flag).apply({}, X, rngs=rngs))
        else:
            outs.append(cls(0.5).apply({}, X, deterministic=flag, rngs=rngs))
    ours = outs[1]
    if deterministic:
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(outs[0]))
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(X))
    else:  # the training path: jaxreg's mask for the key Flax's make_rng draws
        expected = jl.Dropout(0.5).apply({}, X, deterministic=False, rngs=rngs)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))
        assert bool(jnp.any(ours == 0)) and bool(jnp.any(ours == 2 * X))


def test_deterministic_rejects_other_objects():
    FLAG.assert_rejects_bad_flags()


def test_traced_deterministic_selects_the_path_like_the_static_flag():
    # Beyond Flax (TracerBoolConversionError there): a flag passed into a jitted
    # step selects the path at run time.
    def call(x, det):
        return jl.Dropout(0.5).apply({}, x, deterministic=det, rngs={"dropout": KEY})

    FLAG.assert_traced_selects_the_path(call)
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(
            lambda x, d: nn.Dropout(0.5).apply(
                {}, x, deterministic=d, rngs={"dropout": KEY}
            )
        )(X, True)


def test_missing_rng_errors_start_with_flax_message():
    messages = []
    for cls in (nn.Dropout, jl.Dropout):
        with pytest.raises(flax.errors.InvalidRngError, match="dropout") as info:
            cls(0.5, deterministic=False).apply({}, X)
        messages.append(str(info.value))
    assert messages[1].startswith(messages[0])
    with pytest.raises(
        flax.errors.InvalidRngError,
        match=re.escape("rngs={'dropout': jax.random.key(seed)}"),
    ):
        jl.Dropout(0.5, deterministic=False).apply({}, X)
    # The message names a custom collection and the deterministic alternative.
    with pytest.raises(
        flax.errors.InvalidRngError, match=r"'noise'.*deterministic=True"
    ):
        jl.Dropout(0.5, deterministic=False, rng_collection="noise").apply(
            {}, X, rngs={"dropout": KEY}
        )


def test_init_without_dropout_rng_works_like_flax():
    # Flax falls back to the "params" rng during init; so do we.
    class M(nn.Module):
        drop: type

        @nn.compact
        def __call__(self, x):
            return self.drop(0.5, deterministic=False)(nn.Dense(3)(x))

    for cls in (nn.Dropout, jl.Dropout):
        variables = M(cls).init(KEY, jnp.ones((2, 4)))
        assert variables["params"]["Dense_0"]["kernel"].shape == (4, 3)


def test_model_swapping_flax_dropout_for_ours_trains_unchanged():
    x, y, _, _ = digits(n_train=512)

    def make(dropout_cls):
        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x, train: bool):
                x = nn.relu(nn.Dense(64)(x))
                x = dropout_cls(0.3, deterministic=not train)(x)
                return nn.Dense(10)(x)

        return MLP()

    def train(model):
        params = model.init(KEY, x, train=False)["params"]
        tx = optax.adam(3e-3)
        opt = tx.init(params)

        def loss_fn(p, key):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, opt, key):
            loss, g = jax.value_and_grad(loss_fn)(p, key)
            u, opt = tx.update(g, opt, p)
            return optax.apply_updates(p, u), opt, loss

        losses = []
        for key in jax.random.split(jax.random.key(1), 60):
            params, opt, loss = step(params, opt, key)
            losses.append(float(loss))
        return params, losses

    init_flax = make(nn.Dropout).init(KEY, x, train=False)
    init_ours = make(jl.Dropout).init(KEY, x, train=False)
    # Same structure and the same initial parameters.
    assert jax.tree.structure(init_flax) == jax.tree.structure(init_ours)
    jax.tree.map(np.testing.assert_array_equal, init_flax, init_ours)
    _, losses_flax = train(make(nn.Dropout))
    _, losses_ours = train(make(jl.Dropout))
    assert losses_flax[0] == pytest.approx(losses_ours[0], rel=0.1)
    for losses in (losses_flax, losses_ours):
        assert np.mean(losses[-10:]) < 0.25 * losses[0]
    # Same dynamics up to the randomness of the masks.
    assert np.mean(losses_ours[-10:]) == pytest.approx(
        np.mean(losses_flax[-10:]), rel=0.5
    )
