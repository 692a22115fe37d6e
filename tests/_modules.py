"""Cases shared by the adapter tests (tests/linen, tests/nnx, tests/equinox).

No tests here. Import it as ``from _modules import ...`` (``tests/`` is on
``sys.path``). Each adapter test builds its framework's module from the same
specification: a class name and the constructor's keyword arguments.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg

# The key and the NHWC input most adapter tests use.
KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(42), (4, 6, 6, 3))

# The dropout family: (case id, class name, keyword arguments, the pure function
# the module must equal for the same key: ``pure(key, x)``).
FAMILY = [
    ("Dropout", "Dropout", {"rate": 0.3}, lambda k, x: jaxreg.dropout(k, x, 0.3)),
    (
        "Dropout-bcast",
        "Dropout",
        {"rate": 0.3, "broadcast_dims": (1, 2)},
        lambda k, x: jaxreg.dropout(k, x, 0.3, broadcast_dims=(1, 2)),
    ),
    (
        "Dropout-classic",
        "Dropout",
        {"rate": 0.3, "inverted": False},
        lambda k, x: jaxreg.dropout(k, x, 0.3, inverted=False),
    ),
    (
        "Spatial",
        "SpatialDropout",
        {"rate": 0.4},
        lambda k, x: jaxreg.spatial_dropout(k, x, 0.4),
    ),
    (
        "Spatial-first",
        "SpatialDropout",
        {"rate": 0.4, "channel_axis": 1},
        lambda k, x: jaxreg.spatial_dropout(k, x, 0.4, channel_axis=1),
    ),
    (
        "GaussianDropout",
        "GaussianDropout",
        {"rate": 0.2},
        lambda k, x: jaxreg.gaussian_dropout(k, x, 0.2),
    ),
    (
        "GaussianNoise",
        "GaussianNoise",
        {"stddev": 0.5},
        lambda k, x: jaxreg.gaussian_noise(k, x, 0.5),
    ),
    (
        "Alpha",
        "AlphaDropout",
        {"rate": 0.1},
        lambda k, x: jaxreg.alpha_dropout(k, x, 0.1),
    ),
    (
        "DropPath-row",
        "DropPath",
        {"rate": 0.5, "mode": "row"},
        lambda k, x: jaxreg.drop_path(k, x, 0.5),
    ),
    (
        "DropPath-batch",
        "DropPath",
        {"rate": 0.5, "mode": "batch"},
        lambda k, x: jaxreg.drop_path(k, x, 0.5, mode="batch"),
    ),
    (
        "DropBlock",
        "DropBlock",
        {"rate": 0.2, "block_size": 3},
        lambda k, x: jaxreg.dropblock(k, x, 0.2, block_size=3),
    ),
]
FAMILY_IDS = [case[0] for case in FAMILY]
# A test over every family case takes ``(name, kwargs, pure)``.
each_family_case = pytest.mark.parametrize(
    "name, kwargs, pure", [c[1:] for c in FAMILY], ids=FAMILY_IDS
)

# Modules whose output is the input times a mask-dependent scale (one multiply per
# element): bit-exact under any compilation. The others compute an affine map
# (``x * (1 + s * eps)``, alpha dropout's ``a * y + b``) that XLA may contract
# into a fused multiply-add under jit: equal to a few roundings.
MULTIPLICATIVE = {"Dropout", "SpatialDropout", "DropPath", "DropBlock"}


def assert_close_to_rounding(a, b, x):
    """``|a - b| <= 4 ulp * (|x| + |b|)`` elementwise: an affine map computed with
    or without a fused multiply-add (a few float32 roundings of its terms)."""
    a, b, x = (np.asarray(v, np.float64) for v in (a, b, x))
    bound = 2.0**-21 * (np.abs(x) + np.abs(b))
    assert np.all(np.abs(a - b) <= bound), np.max(np.abs(a - b) / bound)


def assert_same_output(name, a, b, x):
    """Bit-equal for multiplicative modules, to rounding for affine ones."""
    if name in MULTIPLICATIVE:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        assert_close_to_rounding(a, b, x)


def inference_output(name, kwargs, x):
    """A family module's inference output: the input, scaled for classic dropout."""
    if name == "Dropout":
        return jaxreg.dropout(None, x, deterministic=True, **kwargs)
    return x


def assert_traced_flag_matches_static(call, name, kwargs, pure, x, key):
    """``call(x, flag)`` with a traced flag equals the static flag on both paths,
    the training path is ``pure(key, x)`` and the inference path the input."""
    outputs = traced_flag_outputs(call, x)
    for traced, static in outputs.values():
        assert_same_output(name, traced, static, x)
    assert_same_output(name, outputs[False][1], pure(key, x), x)
    np.testing.assert_array_equal(
        np.asarray(outputs[True][1]), np.asarray(inference_output(name, kwargs, x))
    )


# The family modules with a drop rate in [0, 1] (GaussianDropout: [0, 1)).
RATE_CLASSES = [
    "Dropout",
    "SpatialDropout",
    "GaussianDropout",
    "AlphaDropout",
    "DropPath",
    "DropBlock",
]

# Bad constructor arguments every adapter rejects the same way: (class name,
# keyword arguments, error type, what the message must say after the module's
# name). Equinox's Dropout calls its rate `p`; the adapters' tests rename it.
NAN = float("nan")
BAD_FIELDS = [
    ("Dropout", {"rate": -0.1}, ValueError, r"`rate`.*\[0, 1\].*rate=-0\.1"),
    ("Dropout", {"rate": 1.5}, ValueError, r"`rate`.*rate=1\.5"),
    ("Dropout", {"rate": NAN}, ValueError, r"`rate`.*rate=nan"),
    ("Dropout", {"rate": "0.5"}, TypeError, r"`rate` must be a real scalar"),
    (
        "Dropout",
        {"rate": 0.5, "broadcast_dims": (0, 1.0)},
        TypeError,
        r"`broadcast_dims` must contain ints; got 1\.0",
    ),
    (
        "Dropout",
        {"rate": 0.5, "broadcast_dims": "01"},
        TypeError,
        r"`broadcast_dims` must be a sequence of ints; got str '01'",
    ),
    (
        "Dropout",
        {"rate": 0.5, "inverted": "no"},
        TypeError,
        r"`inverted` must be a Python bool.*got str 'no'",
    ),
    (
        "Dropout",
        {"rate": 0.5, "activation": "gelu"},
        ValueError,
        r"`activation` must be None, one of",
    ),
    (
        "SpatialDropout",
        {"rate": 0.5, "channel_axis": 0},
        ValueError,
        r"`channel_axis` must name a channel axis.*batch axis 0.*channel_axis=0",
    ),
    (
        "SpatialDropout",
        {"rate": 0.5, "channel_axis": -5},
        ValueError,
        r"`channel_axis`.*rank 3, 4 or 5.*channel_axis=-5",
    ),
    (
        "SpatialDropout",
        {"rate": 0.5, "channel_axis": 1.0},
        TypeError,
        r"`channel_axis` must be a Python int; got float 1\.0",
    ),
    ("GaussianDropout", {"rate": 1.0}, ValueError, r"`rate`.*\[0, 1\).*rate=1\.0"),
    (
        "GaussianNoise",
        {"stddev": -1.0},
        ValueError,
        r"`stddev` must be >= 0; got stddev=-1",
    ),
    ("AlphaDropout", {"rate": 2.0}, ValueError, r"`rate`.*rate=2\.0"),
    (
        "DropPath",
        {"rate": 0.1, "mode": "col"},
        ValueError,
        r"`mode` must be 'row' or 'batch'; got mode='col'",
    ),
    (
        "DropBlock",
        {"rate": 0.1, "block_size": 0},
        ValueError,
        r"`block_size` must be >= 1; got block_size=0",
    ),
    (
        "DropBlock",
        {"rate": 0.1, "block_size": 2.0},
        TypeError,
        r"`block_size` must be a Python int; got float 2\.0",
    ),
    (
        "DropBlock",
        {"rate": 0.1, "block_size": True},
        TypeError,
        r"`block_size` must be a Python int; got bool True",
    ),
    (
        "ActivityRegularization",
        {"l1": -0.1},
        ValueError,
        r"`l1` must be >= 0; got l1=-0\.1",
    ),
    (
        "ActivityRegularization",
        {"l2": NAN},
        ValueError,
        r"`l2` must be >= 0; got l2=nan",
    ),
]
# Each other class with a drop rate rejects a rate outside [0, 1] as Dropout does.
BAD_FIELDS += [
    (name, {"rate": rate}, ValueError, rf"`rate`.*rate={rate}")
    for name in RATE_CLASSES
    if name != "Dropout"
    for rate in (-0.1, 1.5, NAN)
]
BAD_FIELD_IDS = [f"{c}-{'-'.join(map(str, k.values()))}" for c, k, _, _ in BAD_FIELDS]
# A test over every bad field takes ``(name, kwargs, error, message)``.
each_bad_field = pytest.mark.parametrize(
    "name, kwargs, error, message", BAD_FIELDS, ids=BAD_FIELD_IDS
)

# The Flax adapters (linen and NNX) also take the rng stream's name and the
# `deterministic` flag as constructor arguments, and check them there.
BAD_FLAX_FIELDS = BAD_FIELDS + [
    (name, {first: 0.1, field: value}, error, f"`{field}` must be {what}")
    for name, first, field, value, error, what in (
        ("DropPath", "rate", "rng_collection", 0, TypeError, "a str"),
        ("GaussianNoise", "stddev", "deterministic", 3, ValueError, "True or False"),
        ("Dropout", "rate", "deterministic", "yes", TypeError, "a bool"),
    )
]
each_bad_flax_field = pytest.mark.parametrize(
    "name, kwargs, error, message",
    BAD_FLAX_FIELDS,
    ids=[f"{c}-{'-'.join(map(str, k.values()))}" for c, k, _, _ in BAD_FLAX_FIELDS],
)

# Bad arguments of the learned-rate layers: (class name, keyword arguments, error,
# message).
BAD_BAYESIAN = [
    ("ConcreteDropout", {"init_rate": 1.0}, ValueError, r"`init_rate`.*strictly"),
    ("ConcreteDropout", {"init_rate": 0.0}, ValueError, r"`init_rate`.*init_rate=0"),
    ("ConcreteDropout", {"temperature": 0.0}, ValueError, r"`temperature` must be > 0"),
    (
        "ConcreteDropout",
        {"weight_regularizer": -1.0},
        ValueError,
        r"`weight_regularizer` must be >= 0",
    ),
    (
        "ConcreteDropout",
        {"dropout_regularizer": NAN},
        ValueError,
        r"`dropout_regularizer` must be >= 0",
    ),
    (
        "SparseVariationalDense",
        {"kl_weight": -1.0},
        ValueError,
        r"`kl_weight` must be >= 0",
    ),
    ("SparseVariationalDense", {"kl_weight": NAN}, ValueError, r"`kl_weight`.*nan"),
    (
        "SparseVariationalDense",
        {"threshold": NAN},
        ValueError,
        r"`threshold` must not be NaN",
    ),
    (
        "SparseVariationalDense",
        {"threshold": "3"},
        TypeError,
        r"`threshold` must be a Python number; got str '3'",
    ),
    (
        "SparseVariationalDense",
        {"log_sigma2_init": -math.inf},
        ValueError,
        r"`log_sigma2_init` must be finite",
    ),
]
BAD_BAYESIAN_IDS = [f"{c}-{next(iter(k))}" for c, k, _, _ in BAD_BAYESIAN]
each_bad_bayesian = pytest.mark.parametrize(
    "name, kwargs, error, message", BAD_BAYESIAN, ids=BAD_BAYESIAN_IDS
)

# The `deterministic` (Equinox: `inference`) flags Flax accepts, with the path
# they select, and values every adapter rejects.
FLAGS = [
    (True, True),
    (False, False),
    (np.True_, True),
    (np.False_, False),
    (1, True),
    (0, False),
    (np.int32(1), True),
    (jnp.array(True), True),
    (np.array(False), False),
    (jnp.array(0), False),
]
FLAG_IDS = [f"{type(v).__name__}-{bool(p)}" for v, p in FLAGS]
BAD_FLAGS = [
    ("yes", TypeError, r"must be a bool.*got str 'yes'"),
    (1.0, TypeError, r"must be a bool.*got float 1\.0"),
    (2, ValueError, r"must be True or False \(or 1 / 0\); got \w+=2"),
    (
        jnp.ones(2, bool),
        TypeError,
        r"must be a bool or a 0-d boolean array; got an array of shape \(2,\)",
    ),
    (
        jnp.array(0.5),
        TypeError,
        r"must be a bool or a 0-d boolean array; got an array of shape \(\) and "
        r"dtype float32",
    ),
]
# A test over the accepted flags.
each_flag = pytest.mark.parametrize("flag, deterministic", FLAGS, ids=FLAG_IDS)


class DropoutFlag(NamedTuple):
    """How an adapter's ``Dropout(0.5)`` takes its inference flag, and the
    specification of the flag every adapter meets."""

    name: str  # what an error says first, e.g. r"jaxreg\.nnx\.Dropout: `deterministic`"
    construct: Callable  # flag -> the module built with the flag
    call: Callable  # (x, flag) -> the output of a call with the flag and KEY

    def assert_rejects_bad_flags(self):
        """Each of ``BAD_FLAGS`` raises its error naming the module and the flag,
        then its message, both in the constructor and in the call."""
        for flag, error, message in BAD_FLAGS:
            match = self.name + " " + message
            with pytest.raises(error, match=match):
                self.construct(flag)
            with pytest.raises(error, match=match):
                self.call(X, flag)

    def assert_traced_selects_the_path(self, call=None):
        """``call(x, flag)`` (default: ``self.call``) with the flag traced equals
        the static flag's output: ``X`` itself at inference, dropout else."""
        for det, (traced, static) in traced_flag_outputs(call or self.call, X).items():
            np.testing.assert_array_equal(np.asarray(traced), np.asarray(static))
            assert bool(jnp.all(static == X)) is det


# The dropout edge rates, which draw no key: rate 0 keeps X, rate 1 zeros it.
RATE_EDGES = ((0.0, X), (1.0, jnp.zeros_like(X)))


def assert_inference_is_reference_and_input(reference, ours, x, dtype):
    """The inference output equals the reference framework's and the input ``x``,
    bit for bit, in ``dtype``."""
    assert reference.dtype == ours.dtype == dtype
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(x))


def assert_close_to_sum_rounding(a, b):
    """Pytrees equal to float32 rounding of sums: relative 1e-6 of each leaf's
    scale (matmuls and sums may be compiled in another order, e.g. inside and
    outside ``lax.cond`` or under ``jit`` and eagerly)."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = float(np.max(np.abs(np.asarray(v))))
        np.testing.assert_allclose(
            np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-6 * scale
        )


def assert_keras_activity_penalty(apply):
    """The ActivityRegularization spec every adapter meets: Keras's penalty
    ``l1 * sum|x| + l2 * sum x^2`` on the unchanged activations.

    ``apply(x, **fields)`` builds the adapter's module with ``fields``, calls it
    on ``x`` and returns ``(output, penalty)``, the penalty the module reports.
    Returns the input used, for the adapter's own further checks.
    """
    x = jax.random.normal(jax.random.key(3), (4, 5))
    y, penalty = apply(x, l1=0.01, l2=0.1)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    expected = 0.01 * jnp.abs(x).sum() + 0.1 * (x**2).sum()
    np.testing.assert_allclose(float(penalty), float(expected), rtol=1e-6)
    # Gradient into the activations: d/dx [l2 * sum x^2] = 2 * l2 * x.
    g = jax.grad(lambda x: apply(x, l2=0.1)[1])(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(0.2 * x), rtol=1e-6)
    # Zero factors (the defaults) give an exact zero.
    assert float(apply(x)[1]) == 0.0
    return x


class EchoCell:
    """Mixin of an RNN cell whose new state is its input, so that zoneout's
    choices become visible; the framework's cell base class (listed after it)
    and ``initialize_carry`` complete it."""

    def __call__(self, carry, x):
        return x, x

    @property
    def num_feature_axes(self):
        return 1


def assert_zoneout_over_echo(rnn, shared):
    """``rnn(x)``, an RNN of ``ZoneoutCell(echo cell, 0.5)`` over ``x`` of shape
    ``(batch, time, features)``, is zoneout: each unit either takes the step's
    input or holds its previous value, and the pattern is the same at every
    step iff the key is ``shared`` by the steps."""
    x = jnp.broadcast_to(jnp.arange(1.0, 9.0)[None, :, None], (2, 8, 32))
    y = rnn(x)  # a distinct input value at each of the 8 steps
    updated = y == x  # the unit took the new value at this step
    same = [bool(jnp.all(updated[:, i] == updated[:, 1])) for i in range(1, 8)]
    assert all(same) is shared
    # Where not updated, the unit holds its previous value (zoneout, not dropout).
    prev = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    assert bool(jnp.all(jnp.where(updated, True, y == prev)))


def assert_lstm_zoneout(carry, new, key, zoned, inferred):
    """Zoneout of an LSTM cell's carry ``(c, h)`` at rates ``(0.5, 0.05)``.

    ``carry``: the previous carry; ``new``: the cell's own new carry; ``key``:
    the key the ZoneoutCell draws (split into one key per leaf); ``zoned`` and
    ``inferred``: ``((c, h), output)`` of the ZoneoutCell in training and at
    inference. Training zones out each leaf as the pure function does and
    outputs the zoned ``h``; inference returns the expectation and its ``h``.
    """
    (c, h), out = zoned
    k_c, k_h = jax.random.split(key, 2)
    np.testing.assert_array_equal(
        np.asarray(c), np.asarray(jaxreg.zoneout(k_c, carry[0], new[0], 0.5))
    )
    np.testing.assert_array_equal(
        np.asarray(h), np.asarray(jaxreg.zoneout(k_h, carry[1], new[1], 0.05))
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(h))  # output = zoned h
    (c_det, h_det), out_det = inferred
    np.testing.assert_allclose(
        np.asarray(c_det), np.asarray(0.5 * new[0] + 0.5 * carry[0]), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(out_det), np.asarray(h_det))


def traced_flag_outputs(call, x):
    """``call(x, flag)`` under ``jax.jit`` with ``flag`` traced and static.

    Returns ``{True: (traced, static), False: (traced, static)}``, both jitted so
    that only the flag's form differs.
    """
    traced = jax.jit(call)
    static = jax.jit(call, static_argnums=1)
    return {det: (traced(x, jnp.asarray(det)), static(x, det)) for det in (True, False)}


def module_key(module, key, variables=None, collection="dropout"):
    """The key a linen module draws with ``self.make_rng(collection)`` first.

    Flax derives it from the rng passed to ``apply``, the module's scope path and a
    per-scope counter; calling ``make_rng`` from a method at the same (top-level)
    path reproduces the first draw.
    """
    return module.apply(
        variables or {},
        method=lambda m: m.make_rng(collection),
        rngs={collection: key},
    )


def first_key(seed, collection="dropout"):
    """The key an NNX module built with ``rngs=nnx.Rngs(**{collection: seed})``
    draws first: it forks ``rngs[collection]`` at construction (as ``nnx.Dropout``
    does) and each call draws ``fold_in(stream.key, stream.count)``."""
    from flax import nnx

    return nnx.Rngs(**{collection: seed})[collection].fork()()


def flat_paths(node, *filters):
    """The sorted ``nnx.state`` paths of an NNX module (filtered)."""
    from flax import nnx

    return sorted(path for path, _ in nnx.to_flat_state(nnx.state(node, *filters)))
