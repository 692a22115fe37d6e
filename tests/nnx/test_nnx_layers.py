"""jaxreg.nnx layers with parameters or state: DropConnectDense and ZoneoutCell."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _modules import (
    KEY,
    EchoCell,
    assert_close_to_sum_rounding,
    assert_lstm_zoneout,
    assert_zoneout_over_echo,
    first_key,
    flat_paths,
    traced_flag_outputs,
)
from flax import nnx

import jaxreg
import jaxreg.nnx as jn


def test_dropconnect_dense_is_a_drop_in_for_linear():
    x = jax.random.normal(jax.random.key(1), (5, 7))
    linear = nnx.Linear(7, 4, rngs=nnx.Rngs(0))
    ours = jn.DropConnectDense(7, 4, rate=0.5, rngs=nnx.Rngs(0))
    assert flat_paths(linear, nnx.Param) == flat_paths(ours, nnx.Param)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(
            np.asarray(getattr(linear, name)[...]), np.asarray(getattr(ours, name)[...])
        )
    assert flat_paths(ours) == [
        ("bias",),
        ("kernel",),
        ("rngs", "count"),
        ("rngs", "key"),
    ]
    ours.eval()
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(linear(x)))
    no_bias = jn.DropConnectDense(
        7, 4, use_bias=False, param_dtype=jnp.float16, rngs=KEY
    )
    assert flat_paths(no_bias, nnx.Param) == [("kernel",)]
    assert no_bias.kernel[...].dtype == jnp.float16


@pytest.mark.parametrize("per_example", [False, True])
def test_dropconnect_dense_equals_pure_function(per_example):
    x = jax.random.normal(jax.random.key(1), (6, 5))
    layer = jn.DropConnectDense(
        5, 3, rate=0.4, per_example=per_example, activation=nnx.relu, rngs=nnx.Rngs(0)
    )
    w, b = layer.kernel[...], layer.bias[...]
    key = jax.random.key(9)
    # Training and inference="mc" both apply one sampled mask.
    sampled = np.asarray(
        nnx.relu(
            jaxreg.dropconnect_dense(key, x, w, 0.4, bias=b, per_example=per_example)
        )
    )
    np.testing.assert_array_equal(np.asarray(layer(x, rngs=key)), sampled)
    layer.eval()
    layer.inference = "moments"
    layer.num_samples = 32
    np.testing.assert_array_equal(
        np.asarray(layer(x, rngs=key)),
        np.asarray(
            jaxreg.dropconnect_inference(
                key, x, w, 0.4, nnx.relu, bias=b, num_samples=32
            )
        ),
    )
    layer.inference = "mc"
    np.testing.assert_array_equal(np.asarray(layer(x, rngs=key)), sampled)


@pytest.mark.parametrize("inference", ["mean", "moments", "mc"])
def test_dropconnect_dense_traced_deterministic_selects_the_path(inference):
    x = jax.random.normal(jax.random.key(1), (6, 5))
    layer = jn.DropConnectDense(
        5,
        3,
        rate=0.4,
        activation=nnx.relu,
        inference=inference,
        num_samples=16,
        rngs=nnx.Rngs(0),
    )

    def call(x, det):
        return layer(x, deterministic=det, rngs=jax.random.key(9))

    # Matmuls inside and outside lax.cond may be compiled differently: equal to
    # float32 rounding of the sums (relative 1e-6 of the output's scale).
    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((0, 2), {}, ValueError, r"`in_features` must be >= 1; got in_features=0"),
        ((3, 0), {}, ValueError, r"`out_features` must be >= 1; got out_features=0"),
        (
            (3.0, 2),
            {},
            TypeError,
            r"`in_features` must be a Python int; got float 3\.0",
        ),
        ((3, 2), {"rate": -1.0}, ValueError, r"`rate`.*rate=-1"),
        ((3, 2), {"inference": "median"}, ValueError, r"`inference` must be one of"),
        ((3, 2), {"num_samples": 0}, ValueError, r"`num_samples` must be >= 1"),
        (
            (3, 2),
            {"num_samples": "8"},
            TypeError,
            r"`num_samples` must be a Python int",
        ),
        ((3, 2), {"per_example": 1}, TypeError, r"`per_example` must be a Python bool"),
        ((3, 2), {"activation": "relu"}, TypeError, r"`activation` must be None or"),
        ((3, 2), {"precision": ("high", "high")}, ValueError, r"`precision` must be"),
        ((3, 2), {"deterministic": "no"}, TypeError, r"`deterministic` must be a bool"),
    ],
)
def test_dropconnect_dense_bad_arguments_raise_at_construction(
    args, kwargs, error, message
):
    with pytest.raises(error, match=r"^jaxreg\.nnx\.DropConnectDense: " + message):
        jn.DropConnectDense(*args, **kwargs, rngs=KEY)
    with pytest.raises(TypeError, match=r"`rngs` is required"):
        jn.DropConnectDense(3, 2, rngs=None)
    with pytest.raises(TypeError, match=r"`rngs` must be an `nnx.Rngs`"):
        jn.DropConnectDense(3, 2, rngs=0)


class _Echo(EchoCell, nnx.RNNCellBase):
    def __init__(self, features):
        self.features = features

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        return jnp.zeros(input_shape)


@pytest.mark.parametrize("broadcast", [False, True])
def test_zoneout_cell_in_nnx_rnn_per_step_or_shared(broadcast):
    # nnx.RNN's broadcast_rngs filters streams by tag: the stream forked from
    # nnx.Rngs(dropout=...) is tagged "dropout".
    cell = jn.ZoneoutCell(_Echo(32), 0.5, rngs=nnx.Rngs(dropout=0))
    rnn = nnx.RNN(cell, broadcast_rngs="dropout" if broadcast else None)
    assert_zoneout_over_echo(rnn, shared=broadcast)


def test_zoneout_cell_equals_pure_function_per_carry_leaf():
    rngs = nnx.Rngs(0)
    cell = nnx.LSTMCell(5, 4, rngs=rngs)
    zc = jn.ZoneoutCell(cell, (0.5, 0.05), rngs=nnx.Rngs(dropout=3))
    x = jax.random.normal(jax.random.key(2), (3, 5))
    carry = jax.tree.map(lambda c: c + 0.3, cell.initialize_carry((3, 5), rngs))
    new, _ = cell(carry, x)
    zoned = zc(carry, x)
    zc.eval()
    assert_lstm_zoneout(carry, new, first_key(3), zoned, zc(carry, x))
    with pytest.raises(ValueError, match="structure of the cell's carry"):
        jn.ZoneoutCell(cell, (0.1, 0.2, 0.3), rngs=rngs)(carry, x)
    with pytest.raises(TypeError, match="`cell` must be an NNX RNN cell"):
        jn.ZoneoutCell(lambda c, x: (c, x), 0.1)


def test_zoneout_cell_traced_deterministic_and_bad_arguments():
    rngs = nnx.Rngs(0)
    cell = nnx.LSTMCell(5, 4, rngs=rngs)
    zc = jn.ZoneoutCell(cell, (0.5, 0.05))
    x = jax.random.normal(jax.random.key(2), (3, 5))
    carry = jax.tree.map(lambda c: c + 0.3, cell.initialize_carry((3, 5), rngs))

    def call(x, det):
        return zc(carry, x, deterministic=det, rngs=jax.random.key(4))

    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)
    with pytest.raises(ValueError, match=r"ZoneoutCell: `rate`.*rate=1\.5"):
        jn.ZoneoutCell(nnx.SimpleCell(2, 2, rngs=rngs), (1.5,))
    with pytest.raises(ValueError, match=r"ZoneoutCell: `rate` must be a rate or"):
        jn.ZoneoutCell(nnx.SimpleCell(2, 2, rngs=rngs), {})
