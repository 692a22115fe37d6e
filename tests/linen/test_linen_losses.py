"""jaxreg.linen modules that sow loss terms.

ActivityRegularization, ConcreteDropout and SparseVariationalDense.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _modules import (
    KEY,
    assert_close_to_sum_rounding,
    assert_keras_activity_penalty,
    each_bad_bayesian,
    traced_flag_outputs,
)

import jaxreg
import jaxreg.linen as jl


def test_activity_regularization_sows_keras_penalty():
    def apply(x, **fields):
        y, state = jl.ActivityRegularization(**fields).apply({}, x, mutable=["losses"])
        (penalty,) = jax.tree.leaves(state["losses"])
        return y, penalty

    x = assert_keras_activity_penalty(apply)
    # Not mutable: nothing recorded, output unchanged.
    y2 = jl.ActivityRegularization(l1=0.01, l2=0.1).apply({}, x)
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(x))
    # Custom collection; zero factors sow an exact zero.
    _, state = jl.ActivityRegularization(collection="aux").apply({}, x, mutable=True)
    assert float(jax.tree.leaves(state["aux"])[0]) == 0.0


def test_concrete_dropout_module():
    model = jl.ConcreteDropout(
        nn.Dense(3), weight_regularizer=1e-3, dropout_regularizer=1e-2, init_rate=0.2
    )
    x = jax.random.normal(KEY, (5, 4))
    params = {"params": model.init(KEY, x, deterministic=True)["params"]}
    p = params["params"]
    np.testing.assert_allclose(jax.nn.sigmoid(p["logit_p"]), 0.2, rtol=1e-6)
    # inference: the wrapped layer on the undropped inputs
    y = model.apply(params, x, deterministic=True)
    np.testing.assert_allclose(y, x @ p["layer"]["kernel"] + p["layer"]["bias"])
    # training: equals the pure function with the key drawn from "dropout"
    k = jax.random.key(5)

    def train(params, rng):
        return model.apply(params, x, deterministic=False, rng=rng, mutable=["losses"])

    (y_train, state) = train(params, k)
    dropped = jaxreg.concrete_dropout(k, x, p["logit_p"])
    np.testing.assert_allclose(
        y_train, dropped @ p["layer"]["kernel"] + p["layer"]["bias"], rtol=1e-5
    )
    # the sown regularizer is the pure one on the wrapped layer's parameters
    (reg,) = state["losses"]["concrete_dropout"]
    expected = jaxreg.concrete_dropout_regularizer(
        p["layer"],
        p["logit_p"],
        input_dim=4,
        weight_regularizer=1e-3,
        dropout_regularizer=1e-2,
    )
    np.testing.assert_allclose(reg, expected, rtol=1e-6)

    # the rate receives a gradient through the data term and the regularizer
    def loss(params):
        out, st = train(params, k)
        return jnp.mean(out**2) + sum(jax.tree.leaves(st["losses"]))

    g = jax.grad(loss)(params)["params"]["logit_p"]
    assert bool(jnp.isfinite(g)) and float(g) != 0.0
    with pytest.raises(ValueError, match="init_rate"):
        jl.ConcreteDropout(init_rate=1.0)
    with pytest.raises(ValueError, match="temperature"):
        jl.ConcreteDropout(temperature=0.0)
    with pytest.raises(ValueError, match="weight_regularizer"):
        jl.ConcreteDropout(weight_regularizer=-1.0)
    with pytest.raises(Exception, match="dropout"):
        jl.ConcreteDropout().apply({"params": {"logit_p": jnp.zeros(())}}, x, False)


def test_sparse_variational_dense_module():
    layer = jl.SparseVariationalDense(3, kl_weight=0.5, log_sigma2_init=-4.0)
    x = jax.random.normal(KEY, (6, 4))
    params = {"params": layer.init(KEY, x, deterministic=True)["params"]}
    p = params["params"]
    assert sorted(p) == ["bias", "kernel", "log_sigma2"]
    np.testing.assert_array_equal(p["log_sigma2"], jnp.full((4, 3), -4.0))
    k = jax.random.key(2)
    y, state = layer.apply(params, x, deterministic=False, rng=k, mutable=["losses"])
    expected = jaxreg.sparse_vd_dense(
        k, x, p["kernel"], p["log_sigma2"], bias=p["bias"]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    la = jaxreg.sparse_vd_log_alpha(p["kernel"], p["log_sigma2"])
    (kl,) = state["losses"]["sparse_vd_kl"]
    np.testing.assert_allclose(kl, 0.5 * jaxreg.sparse_vd_kl(la), rtol=1e-6)
    y_eval = layer.apply(params, x, deterministic=True)
    np.testing.assert_allclose(
        y_eval, x @ jaxreg.sparse_vd_prune(p["kernel"], p["log_sigma2"]) + p["bias"]
    )
    with pytest.raises(ValueError, match="kl_weight"):
        jl.SparseVariationalDense(3, kl_weight=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        jl.SparseVariationalDense(3, threshold=float("nan"))


@each_bad_bayesian
def test_bad_fields_raise_at_construction(name, kwargs, error, message):
    args = (3,) if name == "SparseVariationalDense" else ()
    with pytest.raises(error, match=rf"^jaxreg\.linen\.{name}: {message}"):
        getattr(jl, name)(*args, **kwargs)
    with pytest.raises(TypeError, match=r"ConcreteDropout: `layer` must be a flax"):
        jl.ConcreteDropout(lambda v: v)
    with pytest.raises(TypeError, match=r"SparseVariationalDense: `features` must be"):
        jl.SparseVariationalDense(3.0)


def test_learned_rate_layers_traced_deterministic_selects_the_path():
    x = jax.random.normal(KEY, (5, 4))
    for layer in (
        jl.ConcreteDropout(nn.Dense(3), weight_regularizer=1e-3),
        jl.SparseVariationalDense(3, log_sigma2_init=-4.0),
    ):
        params = {"params": layer.init(KEY, x, deterministic=True)["params"]}

        def call(x, det, layer=layer, params=params):
            return layer.apply(
                params, x, deterministic=det, rng=jax.random.key(5), mutable=["losses"]
            )

        for traced, static in traced_flag_outputs(call, x).values():
            assert_close_to_sum_rounding(traced, static)
