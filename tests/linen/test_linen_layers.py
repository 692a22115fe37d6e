"""jaxreg.linen layers with parameters or state: DropConnectDense, scans, ZoneoutCell."""

import flax.errors
import flax.linen as nn
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
    module_key,
    traced_flag_outputs,
)

import jaxreg
import jaxreg.linen as jl


def test_dropconnect_dense_is_a_drop_in_for_dense():
    x = jax.random.normal(jax.random.key(1), (5, 7))
    dense = nn.Dense(4)
    ours = jl.DropConnectDense(4, rate=0.5)
    v_dense = dense.init(KEY, x)
    v_ours = ours.init(KEY, x, deterministic=True)
    # Same parameter tree and values (same default initializers), so checkpoints swap.
    assert jax.tree.structure(v_dense) == jax.tree.structure(v_ours)
    jax.tree.map(np.testing.assert_array_equal, v_dense, v_ours)
    # The "mean" inference path is exactly the dense layer.
    np.testing.assert_array_equal(
        np.asarray(ours.apply(v_dense, x, deterministic=True)),
        np.asarray(dense.apply(v_dense, x)),
    )
    # Dense fields are honoured.
    v = jl.DropConnectDense(4, use_bias=False, param_dtype=jnp.float16).init(
        KEY, x, deterministic=True
    )
    assert list(v["params"]) == ["kernel"]
    assert v["params"]["kernel"].dtype == jnp.float16
    y = jl.DropConnectDense(4, dtype=jnp.bfloat16).apply(v_dense, x, deterministic=True)
    assert y.dtype == jnp.bfloat16
    y = jl.DropConnectDense(4, precision=jax.lax.Precision.HIGHEST).apply(
        v_dense, x, deterministic=True
    )
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(dense.apply(v_dense, x)), rtol=1e-6
    )


@pytest.mark.parametrize("per_example", [False, True])
def test_dropconnect_dense_training_equals_pure_function(per_example):
    x = jax.random.normal(jax.random.key(1), (6, 5))
    layer = jl.DropConnectDense(
        3, rate=0.4, per_example=per_example, activation=nn.relu
    )
    v = layer.init(KEY, x, deterministic=True)
    w, b = v["params"]["kernel"], v["params"]["bias"]
    key = jax.random.key(9)
    y = layer.apply(v, x, deterministic=False, rngs={"dropout": key})
    expected = nn.relu(
        jaxreg.dropconnect_dense(
            module_key(layer, key, v), x, w, 0.4, bias=b, per_example=per_example
        )
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


@pytest.mark.parametrize("inference", ["mean", "moments", "mc"])
def test_dropconnect_dense_traced_deterministic_selects_the_path(inference):
    x = jax.random.normal(jax.random.key(1), (6, 5))
    layer = jl.DropConnectDense(
        3, rate=0.4, activation=nn.relu, inference=inference, num_samples=16
    )
    v = layer.init(KEY, x, deterministic=True)

    def call(x, det):
        return layer.apply(v, x, deterministic=det, rng=jax.random.key(9))

    # Matmuls inside and outside lax.cond may be compiled differently: equal to
    # float32 rounding of the sums (relative 1e-6 of the output's scale).
    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"features": 0}, ValueError, r"`features` must be >= 1; got features=0"),
        (
            {"features": 2.0},
            TypeError,
            r"`features` must be a Python int; got float 2\.0",
        ),
        ({"rate": 2.0}, ValueError, r"`rate`.*rate=2\.0"),
        ({"inference": "median"}, ValueError, r"`inference` must be one of.*'median'"),
        ({"num_samples": 0}, ValueError, r"`num_samples` must be >= 1"),
        (
            {"num_samples": 1.5},
            TypeError,
            r"`num_samples` must be a Python int; got float",
        ),
        ({"per_example": "yes"}, TypeError, r"`per_example` must be a Python bool"),
        ({"use_bias": 1}, TypeError, r"`use_bias` must be a Python bool"),
        ({"activation": 3}, TypeError, r"`activation` must be None or a callable"),
        ({"precision": ("high", "high")}, ValueError, r"`precision` must be None"),
        (
            {"precision": "fastest-ever"},
            ValueError,
            r"`precision` must be None.*got precision='fastest-ever'",
        ),
        ({"deterministic": "no"}, TypeError, r"`deterministic` must be a bool"),
    ],
)
def test_dropconnect_dense_bad_fields_raise_at_construction(kwargs, error, message):
    kwargs = {"features": 3, **kwargs}
    features = kwargs.pop("features")
    with pytest.raises(error, match=r"^jaxreg\.linen\.DropConnectDense: " + message):
        jl.DropConnectDense(features, **kwargs)


def test_dropconnect_dense_numpy_int_fields():
    x = jax.random.normal(jax.random.key(1), (6, 5))
    layer = jl.DropConnectDense(
        np.int64(3), inference="moments", num_samples=np.int32(8)
    )
    v = layer.init(KEY, x, deterministic=True)
    assert v["params"]["kernel"].shape == (5, 3)
    y = layer.apply(v, x, deterministic=True, rng=KEY)
    w, b = v["params"]["kernel"], v["params"]["bias"]
    expected = jaxreg.dropconnect_inference(
        KEY, x, w, 0.5, lambda u: u, bias=b, num_samples=8
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


def test_dropconnect_dense_inference_modes():
    x = jax.random.normal(jax.random.key(1), (6, 5))
    key = jax.random.key(11)
    base = jl.DropConnectDense(3, rate=0.4, activation=nn.relu)
    v = base.init(KEY, x, deterministic=True)
    w, b = v["params"]["kernel"], v["params"]["bias"]
    # mean: activation of the mean pre-activation, no key needed.
    np.testing.assert_array_equal(
        np.asarray(base.apply(v, x, deterministic=True)), np.asarray(nn.relu(x @ w + b))
    )
    # moments: the paper's Gaussian sampling, with the module's key.
    moments = base.clone(inference="moments", num_samples=64)
    y = moments.apply(v, x, deterministic=True, rngs={"dropout": key})
    expected = jaxreg.dropconnect_inference(
        module_key(moments, key, v), x, w, 0.4, nn.relu, bias=b, num_samples=64
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        moments.apply(v, x, deterministic=True)
    # mc: a sampled mask at inference.
    mc = base.clone(inference="mc")
    y = mc.apply(v, x, deterministic=True, rngs={"dropout": key})
    expected = nn.relu(
        jaxreg.dropconnect_dense(module_key(mc, key, v), x, w, 0.4, bias=b)
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


class _Step(nn.Module):
    @nn.compact
    def __call__(self, carry, xt):
        return carry, jl.Dropout(0.5, deterministic=False)(xt)


@pytest.mark.parametrize("split", [False, True])
def test_dropout_in_nn_scan_shared_or_per_step(split):
    scan = nn.scan(
        _Step,
        variable_broadcast="params",
        split_rngs={"params": False, "dropout": split},
        in_axes=1,
        out_axes=1,
    )
    x = jnp.ones((3, 8, 16))  # (batch, time, features)
    _, y = scan().apply({}, None, x, rngs={"dropout": KEY})
    same_over_time = bool(jnp.all(y == y[:, :1]))
    assert same_over_time is (not split)
    # A mask shared over time is also what broadcast_dims over the time axis gives.
    if not split:
        assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}


class _Echo(EchoCell, nn.RNNCellBase):
    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros(input_shape)


@pytest.mark.parametrize("split", [False, True])
def test_zoneout_cell_in_nn_rnn_shared_or_per_step(split):
    rnn = nn.RNN(
        jl.ZoneoutCell(_Echo(), 0.5, deterministic=False),
        split_rngs={"params": False, "dropout": split},
    )
    rngs = {"dropout": KEY}
    assert_zoneout_over_echo(lambda x: rnn.apply({}, x, rngs=rngs), shared=not split)


def test_zoneout_cell_equals_pure_function_per_carry_leaf():
    cell = nn.LSTMCell(4)
    zc = jl.ZoneoutCell(cell, (0.5, 0.05), deterministic=False)
    x = jax.random.normal(jax.random.key(2), (3, 5))
    carry = cell.initialize_carry(KEY, x.shape)
    carry = jax.tree.map(lambda c: c + 0.3, carry)  # non-zero previous state
    v = zc.init(KEY, carry, x)
    key = jax.random.key(4)
    new, _ = cell.apply({"params": v["params"]["cell"]}, carry, x)
    assert_lstm_zoneout(
        carry,
        new,
        module_key(zc, key, v),
        zc.apply(v, carry, x, rngs={"dropout": key}),
        zc.clone(deterministic=True).apply(v, carry, x),  # inference: no key
    )
    # Works inside nn.RNN with an LSTM.
    rnn = nn.RNN(zc, split_rngs={"params": False, "dropout": True})
    seq = jnp.ones((2, 6, 5))
    params = rnn.init(KEY, seq)
    assert rnn.apply(params, seq, rngs={"dropout": key}).shape == (2, 6, 4)


def test_zoneout_cell_in_nn_rnn_without_split_rngs_says_what_to_do():
    rnn = nn.RNN(jl.ZoneoutCell(_Echo(), 0.5, deterministic=False))
    x = jnp.ones((2, 3, 4))
    with pytest.raises(
        flax.errors.InvalidRngError,
        match=r"split_rngs=\{'params': False, 'dropout': True\}",
    ):
        rnn.apply({}, x, rngs={"dropout": KEY})


def test_zoneout_cell_traced_deterministic_selects_the_path():
    cell = nn.LSTMCell(4)
    zc = jl.ZoneoutCell(cell, (0.5, 0.05))
    x = jax.random.normal(jax.random.key(2), (3, 5))
    carry = jax.tree.map(lambda c: c + 0.3, cell.initialize_carry(KEY, x.shape))
    v = zc.init(KEY, carry, x, deterministic=True)

    def call(x, det):
        return zc.apply(v, carry, x, deterministic=det, rng=jax.random.key(4))

    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)


def test_zoneout_cell_bad_rate_structure():
    cell = nn.LSTMCell(4)
    x = jnp.ones((3, 5))
    carry = cell.initialize_carry(KEY, x.shape)
    zc = jl.ZoneoutCell(cell, (0.1, 0.2, 0.3), deterministic=False)
    with pytest.raises(ValueError, match="structure of the cell's carry"):
        zc.init({"params": KEY, "dropout": KEY}, carry, x)
    with pytest.raises(ValueError, match=r"rate=1\.5"):
        jl.ZoneoutCell(cell, (0.1, 1.5))
    with pytest.raises(
        ValueError, match=r"ZoneoutCell: `rate` must be a rate or a pytree"
    ):
        jl.ZoneoutCell(cell, ())
    with pytest.raises(
        TypeError, match=r"ZoneoutCell: `cell` must be a flax\.linen module"
    ):
        jl.ZoneoutCell(lambda c, x: (c, x), 0.1)
