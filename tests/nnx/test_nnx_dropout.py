"""jaxreg.nnx.Dropout as a drop-in for flax.nnx.Dropout: signature, state, errors, training."""

import inspect
import re

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
    first_key,
    flat_paths,
)
from flax import nnx

import jaxreg
import jaxreg.nnx as jn


def test_signature_attributes_and_state_match_flax():
    ours = inspect.signature(jn.Dropout.__init__).parameters
    theirs = inspect.signature(nnx.Dropout.__init__).parameters
    # Ours adds `inverted` and `activation` after Flax's own arguments.
    assert list(ours) == list(theirs) + ["inverted", "activation"]
    assert ours["activation"].default is None
    for name in theirs:
        if name != "rngs":
            assert ours[name].default == theirs[name].default, name
    assert list(inspect.signature(jn.Dropout.__call__).parameters) == list(
        inspect.signature(nnx.Dropout.__call__).parameters
    )
    a = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=1))
    b = jn.Dropout(0.3, rngs=nnx.Rngs(dropout=1))
    for name in ("rate", "broadcast_dims", "deterministic", "rng_collection"):
        assert getattr(a, name) == getattr(b, name)
    # Same state tree and the same forked stream: checkpoints are interchangeable.
    assert flat_paths(a) == flat_paths(b) == [("rngs", "count"), ("rngs", "key")]
    ka, kb = jax.random.key_data(a.rngs.key[...]), jax.random.key_data(b.rngs.key[...])
    np.testing.assert_array_equal(np.asarray(ka), np.asarray(kb))
    assert flat_paths(nnx.Dropout(0.3)) == flat_paths(jn.Dropout(0.3)) == []


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("how", ["constructor", "call", "eval", "view"])
def test_deterministic_path_identical_to_flax(dtype, how):
    x = X.astype(dtype)
    outs = []
    for cls in (nnx.Dropout, jn.Dropout):
        if how == "constructor":
            y = cls(0.5, deterministic=True)(x)
        elif how == "call":
            y = cls(0.5, rngs=nnx.Rngs(0))(x, deterministic=True)
        elif how == "eval":
            m = cls(0.5, rngs=nnx.Rngs(0))
            m.eval()
            y = m(x)
        else:
            y = nnx.view(cls(0.5, rngs=nnx.Rngs(0)), deterministic=True)(x)
        outs.append(y)
    assert_inference_is_reference_and_input(*outs, x, dtype)


def test_rate_zero_and_one_match_flax_without_rngs():
    for rate, expected in RATE_EDGES:
        for cls in (nnx.Dropout, jn.Dropout):
            y = cls(rate)(X)  # no rngs anywhere: no key is drawn
            np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    grads = [
        jax.grad(lambda x, c=cls: c(1.0)(x).sum())(X)
        for cls in (nnx.Dropout, jn.Dropout)
    ]
    assert bool(jnp.all(jnp.isfinite(grads[1])))
    np.testing.assert_array_equal(np.asarray(grads[1]), np.asarray(grads[0]))


def _shared_axes(y):
    return tuple(
        ax
        for ax in range(y.ndim)
        if bool(jnp.all(y == jnp.take(y, jnp.array([0]), ax)))
    )


@pytest.mark.parametrize("dims", [(), (0,), (1,), (0, 2), (-1,)])
def test_broadcast_dims_match_flax(dims):
    x = jnp.ones((8, 9, 10))
    shared = [
        _shared_axes(cls(0.5, broadcast_dims=dims, rngs=nnx.Rngs(0))(x))
        for cls in (nnx.Dropout, jn.Dropout)
    ]
    assert shared[0] == shared[1] == tuple(sorted(d % 3 for d in dims))


# Flax's own sentences (flax/nnx/nn/stochastic.py), which ours start with.
FLAX_NO_DETERMINISTIC = "No `deterministic` argument was provided to Dropout."
FLAX_NO_RNGS = (
    "`deterministic` is False, but no `rngs` argument was provided to Dropout"
)


def test_missing_deterministic_and_missing_rngs_errors_start_with_flax_sentence():
    for cls in (nnx.Dropout, jn.Dropout):
        with pytest.raises(ValueError, match=re.escape(FLAX_NO_DETERMINISTIC)) as info:
            cls(0.5, deterministic=None, rngs=nnx.Rngs(0))(X)
        assert str(info.value).startswith(FLAX_NO_DETERMINISTIC)
        # Flax's own test (test_dropout_arg_override) matches this sentence.
        with pytest.raises(ValueError, match=re.escape(FLAX_NO_RNGS)) as info:
            cls(0.5)(X)
        assert str(info.value).startswith(FLAX_NO_RNGS)
    # Ours lists every way to fix it.
    with pytest.raises(ValueError) as info:
        jn.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(0))(X)
    for hint in (
        "deterministic=False",
        "deterministic=True",
        "model.eval()",
        "nnx.view",
    ):
        assert hint in str(info.value)
    with pytest.raises(
        ValueError, match=r"rngs=nnx\.Rngs\(dropout=seed\).*model\.eval"
    ):
        jn.Dropout(0.5)(X)
    # Other modules name themselves in Flax's sentence.
    with pytest.raises(
        ValueError,
        match=r"^`deterministic` is False, but no `rngs` argument was "
        r"provided to DropPath as either",
    ):
        jn.DropPath(0.5)(X)


def test_wrong_rngs_type_raises_type_error_starting_with_flax_sentence():
    for at_init in (True, False):
        messages = []
        for cls in (nnx.Dropout, jn.Dropout):
            with pytest.raises(TypeError, match="rngs") as info:
                if at_init:
                    cls(0.5, rngs=3)
                else:
                    cls(0.5)(X, rngs="key")
            messages.append(str(info.value))
        assert messages[1].startswith(messages[0])
        assert len(messages[1]) > len(messages[0])
    with pytest.raises(
        TypeError, match=r"For an integer seed use `rngs=nnx\.Rngs\(seed\)`"
    ):
        jn.Dropout(0.5, rngs=3)
    with pytest.raises(TypeError, match=r"`rngs` must be a JAX PRNG key"):
        jn.Dropout(0.5, rngs=jnp.zeros(3))  # an array that is not a key
    # A Rngs without the stream (and without 'default'): ValueError naming it.
    with pytest.raises(
        ValueError, match=r"no 'dropout' stream.*nnx\.Rngs\(dropout=seed\)"
    ):
        jn.Dropout(0.5, rngs=nnx.Rngs(params=0))


# How Dropout takes its flag, for the flag tests below.
FLAG = DropoutFlag(
    r"jaxreg\.nnx\.Dropout: `deterministic`",
    lambda flag: jn.Dropout(0.5, deterministic=flag),
    lambda x, flag: jn.Dropout(0.5)(x, deterministic=flag, rngs=KEY),
)


@each_flag
@pytest.mark.parametrize("where", ["constructor", "call"])
def test_deterministic_accepts_what_flax_accepts(flag, deterministic, where):
    outs = []
    for cls in (nnx.Dropout, jn.Dropout):
        if where == "constructor":
            outs.append(cls(0.5, deterministic=flag, rngs=nnx.Rngs(0))(X))
        else:
            outs.append(cls(0.5, rngs=nnx.Rngs(0))(X, deterministic=flag))
    ours = outs[1]
    if deterministic:
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(outs[0]))
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(X))
    else:  # the training path: the first key of the forked stream
        expected = jaxreg.dropout(first_key(0, "default"), X, 0.5)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))


def test_deterministic_rejects_other_objects():
    FLAG.assert_rejects_bad_flags()


def test_traced_deterministic_selects_the_path_like_the_static_flag():
    # Beyond Flax (TracerBoolConversionError there): a flag passed into a jitted
    # step selects the path at run time; the stream advances on both paths.
    FLAG.assert_traced_selects_the_path()

    model = jn.Dropout(0.5, rngs=nnx.Rngs(3))
    step = nnx.jit(lambda m, x, det: m(x, deterministic=det))
    first = step(model, X, jnp.asarray(False))
    np.testing.assert_array_equal(
        np.asarray(first), np.asarray(jaxreg.dropout(first_key(3, "default"), X, 0.5))
    )
    np.testing.assert_array_equal(np.asarray(step(model, X, jnp.asarray(True))), X)
    assert int(model.rngs.count[...]) == 2
    with pytest.raises(ValueError, match=r"`deterministic` is traced"):
        jax.jit(lambda x, d: jn.Dropout(0.5)(x, deterministic=d))(X, True)
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(lambda x, d: nnx.Dropout(0.5)(x, deterministic=d, rngs=KEY))(X, True)


def test_model_swapping_flax_dropout_for_ours_trains_unchanged():
    x, y, _, _ = digits(n_train=512)

    class MLP(nnx.Module):
        def __init__(self, dropout_cls, rngs):
            self.l1 = nnx.Linear(64, 64, rngs=rngs)
            self.drop = dropout_cls(0.3, rngs=rngs)
            self.l2 = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.drop(nnx.relu(self.l1(x))))

    def train(model):
        opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt):
            def loss_fn(model):
                logits = model(x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, g = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, g)
            return loss

        return [float(step(model, opt)) for _ in range(60)]

    flax_model = MLP(nnx.Dropout, nnx.Rngs(0))
    ours = MLP(jn.Dropout, nnx.Rngs(0))
    # Same state tree (parameters and rng streams) with the same initial values.
    assert flat_paths(flax_model) == flat_paths(ours)
    np.testing.assert_array_equal(
        np.asarray(nnx.state(flax_model, nnx.Param)["l1"]["kernel"][...]),
        np.asarray(nnx.state(ours, nnx.Param)["l1"]["kernel"][...]),
    )
    losses_flax, losses_ours = train(flax_model), train(ours)
    assert losses_flax[0] == pytest.approx(losses_ours[0], rel=0.1)
    for losses in (losses_flax, losses_ours):
        assert np.mean(losses[-10:]) < 0.25 * losses[0]
    assert np.mean(losses_ours[-10:]) == pytest.approx(
        np.mean(losses_flax[-10:]), rel=0.5
    )
    assert flat_paths(ours) == flat_paths(flax_model)  # structure unchanged by training
    assert int(ours.drop.rngs.count[...]) == 60  # one key per step
