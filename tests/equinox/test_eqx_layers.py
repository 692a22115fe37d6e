"""jaxreg.equinox layers with parameters, state or loss terms.

DropConnectDense, SparseVariationalDense, ConcreteDropout, ZoneoutCell and
ActivityRegularization. Equinox's test conventions (conftest.py) hold in every
test here: strict dtype promotion and rank promotion "raise".
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _modules import (
    KEY,
    assert_close_to_sum_rounding,
    assert_keras_activity_penalty,
    each_bad_bayesian,
    traced_flag_outputs,
)

import jaxreg
import jaxreg.equinox as je

# ---------------------------------------------------------------------------------
# DropConnectDense.
# ---------------------------------------------------------------------------------


def test_dropconnect_dense_is_a_drop_in_for_linear():
    x = jax.random.normal(jax.random.key(1), (7,))
    linear = eqx.nn.Linear(7, 4, key=KEY)
    ours = je.DropConnectDense(7, 4, rate=0.5, key=KEY)
    # Same trainable leaves and initial values: the same parameters.
    np.testing.assert_array_equal(np.asarray(ours.weight), np.asarray(linear.weight))
    np.testing.assert_array_equal(np.asarray(ours.bias), np.asarray(linear.bias))
    assert len(jax.tree.leaves(eqx.filter(ours, eqx.is_inexact_array))) == 2
    # The "mean" inference rule is the linear layer.
    assert_close_to_sum_rounding(eqx.nn.inference_mode(ours)(x), linear(x))
    no_bias = je.DropConnectDense(7, 4, use_bias=False, dtype=jnp.float16, key=KEY)
    assert no_bias.bias is None and no_bias.weight.dtype == jnp.float16


@pytest.mark.parametrize("rule", ["mean", "moments", "mc"])
def test_dropconnect_dense_equals_pure_function(rule):
    x = jax.random.normal(jax.random.key(1), (5,))
    layer = je.DropConnectDense(
        5,
        3,
        rate=0.4,
        activation=jax.nn.relu,
        inference_rule=rule,
        num_samples=16,
        key=KEY,
    )
    w, b, key = layer.weight.T, layer.bias, jax.random.key(9)
    sampled = jax.nn.relu(jaxreg.dropconnect_dense(key, x, w, 0.4, bias=b))
    np.testing.assert_array_equal(np.asarray(layer(x, key=key)), np.asarray(sampled))
    infer = layer(x, key=key, inference=True)
    if rule == "mean":
        expected = jax.nn.relu(
            jaxreg.dropconnect_dense(None, x, w, 0.4, bias=b, deterministic=True)
        )
    elif rule == "moments":
        expected = jaxreg.dropconnect_inference(
            key, x, w, 0.4, jax.nn.relu, bias=b, num_samples=16
        )
    else:
        expected = sampled
    np.testing.assert_array_equal(np.asarray(infer), np.asarray(expected))

    def call(x, flag):
        return layer(x, key=key, inference=flag)

    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)


def test_dropconnect_dense_bad_arguments():
    cases = [
        ((0, 2), {}, ValueError, r"`in_features` must be >= 1; got in_features=0"),
        ((3, 0), {}, ValueError, r"`out_features` must be >= 1"),
        (
            (3.0, 2),
            {},
            TypeError,
            r"`in_features` must be a Python int; got float 3\.0",
        ),
        ((3, 2), {"rate": 1.5}, ValueError, r"`rate`.*rate=1\.5"),
        ((3, 2), {"inference_rule": "median"}, ValueError, r"`inference_rule` must be"),
        ((3, 2), {"num_samples": 0}, ValueError, r"`num_samples` must be >= 1"),
        (
            (3, 2),
            {"num_samples": 2.0},
            TypeError,
            r"`num_samples` must be a Python int",
        ),
        ((3, 2), {"activation": 1}, TypeError, r"`activation` must be None or"),
        ((3, 2), {"inference": "no"}, TypeError, r"`inference` must be a bool"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(
            error, match=r"^jaxreg\.equinox\.DropConnectDense: " + message
        ):
            je.DropConnectDense(*args, **kwargs, key=KEY)
    with pytest.raises(RuntimeError, match=r"^DropConnectDense requires a key"):
        je.DropConnectDense(3, 2, key=KEY)(jnp.ones(3))


# ---------------------------------------------------------------------------------
# Sparse variational dropout and concrete dropout: (output, loss).
# ---------------------------------------------------------------------------------


def test_sparse_variational_dense_returns_output_and_kl():
    layer = je.SparseVariationalDense(
        4, 3, kl_weight=0.25, log_sigma2_init=-4.0, key=KEY
    )
    linear = eqx.nn.Linear(4, 3, key=KEY)
    np.testing.assert_array_equal(np.asarray(layer.weight), np.asarray(linear.weight))
    np.testing.assert_array_equal(np.asarray(layer.log_sigma2), -4.0)
    x, k = jax.random.normal(KEY, (4,)), jax.random.key(4)
    y, kl = layer(x, key=k)
    w, s, b = layer.weight.T, layer.log_sigma2.T, layer.bias
    np.testing.assert_array_equal(
        np.asarray(y), np.asarray(jaxreg.sparse_vd_dense(k, x, w, s, bias=b))
    )
    la = jaxreg.sparse_vd_log_alpha(w, s)
    np.testing.assert_allclose(kl, 0.25 * jaxreg.sparse_vd_kl(la), rtol=1e-6)
    y_eval, _ = eqx.nn.inference_mode(layer)(x)
    assert_close_to_sum_rounding(y_eval, x @ jaxreg.sparse_vd_prune(w, s) + b)

    def call(x, flag):
        return layer(x, key=k, inference=flag)

    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)


def test_concrete_dropout_returns_output_and_regularizer_and_learns_its_rate():
    x = jax.random.normal(KEY, (4,))
    model = je.ConcreteDropout(
        eqx.nn.Linear(4, 3, key=KEY),
        weight_regularizer=1e-3,
        dropout_regularizer=1e-2,
        init_rate=0.2,
    )
    np.testing.assert_allclose(jax.nn.sigmoid(model.logit_p), 0.2, rtol=1e-6)
    k = jax.random.key(3)
    y, reg = model(x, key=k)
    w, b = model.layer.weight, model.layer.bias
    dropped = jaxreg.concrete_dropout(k, x, model.logit_p)
    assert_close_to_sum_rounding(y, w @ dropped + b)
    expected = jaxreg.concrete_dropout_regularizer(
        [w, b],
        model.logit_p,
        input_dim=4,
        weight_regularizer=1e-3,
        dropout_regularizer=1e-2,
    )
    np.testing.assert_allclose(reg, expected, rtol=1e-6)
    y_eval, _ = model(x, inference=True)
    assert_close_to_sum_rounding(y_eval, w @ x + b)
    # logit_p is a trainable leaf: one optimizer step moves it; the static
    # hyperparameters are not leaves.
    params = eqx.filter(model, eqx.is_inexact_array)
    assert len(jax.tree.leaves(params)) == 3

    def loss(model):
        out, reg = model(x, key=k)
        return jnp.mean(out**2) + reg

    grads = eqx.filter_grad(loss)(model)
    assert float(grads.logit_p) != 0.0
    tx = optax.sgd(0.1)
    updates, _ = tx.update(grads, tx.init(params))
    moved = eqx.apply_updates(model, updates)
    assert float(moved.logit_p) != float(model.logit_p)
    assert moved.init_rate == 0.2 and moved.temperature == 0.1

    def call(x, flag):
        return model(x, key=k, inference=flag)

    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)
    with pytest.raises(TypeError, match=r"ConcreteDropout: `layer` must be an Equinox"):
        je.ConcreteDropout(lambda v: v)


@each_bad_bayesian
def test_bad_arguments_raise_at_construction(name, kwargs, error, message):
    if name == "SparseVariationalDense":
        kwargs = {**kwargs, "key": KEY}
        args = (3, 2)
    else:
        args = ()
    with pytest.raises(error, match=rf"^jaxreg\.equinox\.{name}: {message}"):
        getattr(je, name)(*args, **kwargs)


def test_activity_regularization_returns_keras_penalty():
    x = assert_keras_activity_penalty(
        lambda x, **fields: je.ActivityRegularization(**fields)(x)
    )
    assert je.ActivityRegularization(l1=0.01, l2=0.1)(x)[0] is x
    with pytest.raises(ValueError, match=r"`l1` must be >= 0; got l1=-0\.1"):
        je.ActivityRegularization(l1=-0.1)


# ---------------------------------------------------------------------------------
# ZoneoutCell.
# ---------------------------------------------------------------------------------


def test_zoneout_cell_equals_pure_function_per_hidden_leaf():
    cell = eqx.nn.LSTMCell(5, 4, key=KEY)
    zc = je.ZoneoutCell(cell, (0.05, 0.5))  # Equinox's LSTM state is (h, c)
    x = jax.random.normal(jax.random.key(2), (5,))
    hidden = (jnp.full((4,), 0.3), jnp.full((4,), -0.2))
    k = jax.random.key(4)
    h, c = zc(x, hidden, key=k)
    h_new, c_new = cell(x, hidden)
    k_h, k_c = jax.random.split(k, 2)
    np.testing.assert_array_equal(
        np.asarray(h), np.asarray(jaxreg.zoneout(k_h, hidden[0], h_new, 0.05))
    )
    np.testing.assert_array_equal(
        np.asarray(c), np.asarray(jaxreg.zoneout(k_c, hidden[1], c_new, 0.5))
    )
    h_det, c_det = eqx.nn.inference_mode(zc)(x, hidden)
    np.testing.assert_allclose(
        np.asarray(c_det), np.asarray(0.5 * c_new + 0.5 * hidden[1]), rtol=1e-6
    )

    def call(x, flag):
        return zc(x, hidden, key=k, inference=flag)

    for traced, static in traced_flag_outputs(call, x).values():
        assert_close_to_sum_rounding(traced, static)


def test_zoneout_cell_in_a_scan_over_time_per_step_or_shared():
    zc = je.ZoneoutCell(eqx.nn.GRUCell(3, 16, key=KEY), 0.5)
    xs = jax.random.normal(KEY, (8, 3))

    def run(keys):
        def step(h, inputs):
            x, k = inputs
            h_new = zc(x, h, key=k)
            return h_new, (h_new, zc.cell(x, h))

        _, (hs, candidates) = jax.lax.scan(step, jnp.zeros(16), (xs, keys))
        return hs, candidates

    per_step = jax.random.split(jax.random.key(1), 8)
    shared = jnp.stack([jax.random.key(1)] * 8)
    for keys, varies in ((per_step, True), (shared, False)):
        hs, candidates = run(keys)
        updated = hs == candidates
        same = [bool(jnp.all(updated[i] == updated[0])) for i in range(1, 8)]
        assert all(same) is not varies
    with pytest.raises(TypeError, match=r"ZoneoutCell: `cell` must be an Equinox"):
        je.ZoneoutCell(lambda x, h: h, 0.1)
    with pytest.raises(ValueError, match=r"ZoneoutCell: `rate`.*rate=1\.5"):
        je.ZoneoutCell(zc.cell, 1.5)
    with pytest.raises(ValueError, match=r"structure of the cell's carry"):
        je.ZoneoutCell(zc.cell, (0.1, 0.2))(xs[0], jnp.zeros(16), key=KEY)
