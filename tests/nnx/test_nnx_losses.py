"""jaxreg.nnx modules that sow Loss terms.

ActivityRegularization, ConcreteDropout and SparseVariationalDense.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _modules import (
    KEY,
    assert_close_to_sum_rounding,
    assert_keras_activity_penalty,
    each_bad_bayesian,
    flat_paths,
    traced_flag_outputs,
)
from flax import nnx

import jaxreg
import jaxreg.nnx as jn


def test_activity_regularization_captured_penalty():
    def apply(x, **fields):
        y, losses = nnx.capture(jn.ActivityRegularization(**fields), jn.Loss)(x)
        return y, sum(jax.tree.leaves(losses))

    x = assert_keras_activity_penalty(apply)
    # Outside capture nothing is recorded and the state never changes structure.
    layer = jn.ActivityRegularization(l1=0.01, l2=0.1)
    assert layer(x) is x or bool(jnp.all(layer(x) == x))
    assert flat_paths(layer) == []
    with pytest.raises(ValueError, match=r"`l2` must be >= 0; got l2=-1"):
        jn.ActivityRegularization(l2=-1.0)
    with pytest.raises(
        TypeError, match="`variable_type` must be an `nnx.Variable` subclass"
    ):
        jn.ActivityRegularization(variable_type=dict)


def test_concrete_dropout_module():
    rngs = nnx.Rngs(0)
    model = jn.ConcreteDropout(
        nnx.Linear(4, 3, rngs=rngs),
        weight_regularizer=1e-3,
        dropout_regularizer=1e-2,
        rngs=rngs,
    )
    x = jax.random.normal(KEY, (5, 4))
    k = jax.random.key(3)
    y, losses = nnx.capture(model, jn.Loss)(x, rngs=k)
    w, b = model.layer.kernel[...], model.layer.bias[...]
    logit = model.logit_p[...]
    np.testing.assert_allclose(
        y, jaxreg.concrete_dropout(k, x, logit) @ w + b, rtol=1e-5
    )
    (reg,) = jax.tree.leaves(losses)
    expected = jaxreg.concrete_dropout_regularizer(
        {"w": w, "b": b},
        logit,
        input_dim=4,
        weight_regularizer=1e-3,
        dropout_regularizer=1e-2,
    )
    np.testing.assert_allclose(reg, expected, rtol=1e-6)

    # gradient reaches logit_p
    def loss(m):
        out, ls = nnx.capture(m, jn.Loss)(x, rngs=k)
        return jnp.mean(out**2) + sum(jax.tree.leaves(ls))

    grads = nnx.grad(loss)(model)
    assert float(grads["logit_p"][...]) != 0.0
    model.eval()
    np.testing.assert_allclose(model(x), x @ w + b, rtol=1e-6)
    with pytest.raises(TypeError, match="layer"):
        jn.ConcreteDropout(lambda v: v)
    with pytest.raises(ValueError, match="init_rate"):
        jn.ConcreteDropout(init_rate=0.0)
    with pytest.raises(ValueError, match="rngs"):
        jn.ConcreteDropout()(x)


def test_sparse_variational_dense_module():
    layer = jn.SparseVariationalDense(4, 3, kl_weight=0.25, rngs=nnx.Rngs(0))
    x = jax.random.normal(KEY, (6, 4))
    k = jax.random.key(4)
    y, losses = nnx.capture(layer, jn.Loss)(x, rngs=k)
    w, s, b = layer.kernel[...], layer.log_sigma2[...], layer.bias[...]
    np.testing.assert_allclose(y, jaxreg.sparse_vd_dense(k, x, w, s, bias=b), rtol=1e-6)
    (kl,) = jax.tree.leaves(losses)
    la = jaxreg.sparse_vd_log_alpha(w, s)
    np.testing.assert_allclose(kl, 0.25 * jaxreg.sparse_vd_kl(la), rtol=1e-6)
    layer.eval()
    np.testing.assert_allclose(layer(x), x @ jaxreg.sparse_vd_prune(w, s) + b)
    # jit through nnx
    f = nnx.jit(lambda m, x: m(x, deterministic=True))
    np.testing.assert_allclose(f(layer, x), layer(x), rtol=1e-6)
    with pytest.raises(ValueError, match="kl_weight"):
        jn.SparseVariationalDense(4, 3, kl_weight=float("nan"), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="rngs"):
        jn.SparseVariationalDense(4, 3, rngs=None)


def test_loss_terms_are_sown_only_inside_a_capture_of_their_type():
    x = jax.random.normal(KEY, (5, 4))
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(
        jn.ActivityRegularization(l1=1.0),
        jn.ConcreteDropout(nnx.Linear(4, 3, rngs=rngs), rngs=rngs),
        jn.SparseVariationalDense(3, 2, rngs=rngs),
    )
    paths = flat_paths(model)
    model(x)  # outside any capture: nothing recorded, the state is unchanged
    assert flat_paths(model) == paths
    _, losses = nnx.capture(model, jn.Loss)(x)
    assert sorted(
        name for path, _ in nnx.to_flat_state(losses) for name in path[-1:]
    ) == [
        "activity_penalty",
        "concrete_dropout",
        "sparse_vd_kl",
    ]
    # A capture of another type (even Loss's parent, Intermediate) records none.
    _, other = nnx.capture(model, nnx.Intermediate)(x)
    assert jax.tree.leaves(other) == []
    assert flat_paths(model) == paths


@each_bad_bayesian
def test_bad_arguments_raise_at_construction(name, kwargs, error, message):
    args = (3, 2) if name == "SparseVariationalDense" else ()
    with pytest.raises(error, match=rf"^jaxreg\.nnx\.{name}: {message}"):
        getattr(jn, name)(*args, **kwargs, rngs=KEY)


def test_learned_rate_layers_traced_deterministic_selects_the_path():
    x = jax.random.normal(KEY, (5, 4))
    rngs = nnx.Rngs(0)
    for layer in (
        jn.ConcreteDropout(
            nnx.Linear(4, 3, rngs=rngs), weight_regularizer=1e-3, rngs=rngs
        ),
        jn.SparseVariationalDense(4, 3, log_sigma2_init=-4.0, rngs=rngs),
    ):
        graphdef, state = nnx.split(layer)

        def call(x, det, graphdef=graphdef, state=state):
            # A module of the jitted trace (nnx.capture writes to it).
            layer = nnx.merge(graphdef, state)
            return nnx.capture(layer, jn.Loss)(
                x, deterministic=det, rngs=jax.random.key(5)
            )

        for traced, static in traced_flag_outputs(call, x).values():
            assert_close_to_sum_rounding(traced, static)
