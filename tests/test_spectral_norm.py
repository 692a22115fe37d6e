"""The spectral-norm constraint: ``jaxreg.max_spectral_norm`` (pure) and
``jaxreg.spectral_norm_constraint`` (optax projection with the power-iteration
vectors in its state; Miyato et al. 2018).

Singular values are compared with ``numpy.linalg.svd`` in float64. The bound
holds to ``TOL`` (relative): the projection divides by an estimate computed in
float32, whose rounding is a few ulps, and the power iteration's own error
after the steps run here (measured below 1e-6 relative for these matrices).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import run_on_8_cpu_devices

import jaxreg

TOL = 1e-5


def _sigma(w):
    m = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
    return np.linalg.svd(m, compute_uv=False)[0]


def _run(tx, params, steps):
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(tx.update)
    for _ in range(steps):
        u, state = update(zeros, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def test_largest_singular_value_reaches_the_bound():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "dense": 2.0 * jax.random.normal(k1, (6, 4)),
        "conv": 2.0 * jax.random.normal(k2, (3, 3, 2, 4)),  # read as (18, 4)
        "bias": jnp.full((4,), 5.0),
        "step": jnp.int32(3),
    }
    out, state = _run(jaxreg.spectral_norm_constraint(1.5), params, 30)
    for name in ("dense", "conv"):
        w = params[name]
        assert _sigma(w) > 3.0
        assert _sigma(out[name]) <= 1.5 * (1 + TOL)
        assert _sigma(out[name]) >= 1.5 * (1 - 1e-3)  # projected onto the bound
        # Rescaled, not reshaped: the kernel is a positive multiple of the original.
        ratio = np.asarray(out[name]) / np.asarray(w)
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
        assert state.u[name].shape == (4,)
    # 1-D and integer leaves are left alone; their state entry is None.
    np.testing.assert_array_equal(out["bias"], params["bias"])
    assert out["step"] == 3
    assert state.u["bias"] is None and state.u["step"] is None


def test_state_carries_the_top_singular_vector():
    w = jax.random.normal(jax.random.key(1), (8, 5))
    params = {"kernel": w}
    tx = jaxreg.spectral_norm_constraint(100.0)  # far above: nothing changes
    out, state = _run(tx, params, 25)
    np.testing.assert_array_equal(out["kernel"], w)
    u = np.asarray(state.u["kernel"])
    assert u.shape == (5,)
    v1 = np.linalg.svd(np.asarray(w, np.float64))[2][0]
    assert abs(abs(u @ v1) - 1.0) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-6)


def test_below_the_bound_unchanged_bit_for_bit():
    w = jnp.array([[0.5, 0.1], [0.0, 0.3], [0.2, 0.0]])
    u0 = jnp.array([1.0, 0.0])
    got, _ = jaxreg.max_spectral_norm(w, 1.0, u0, n_power_iterations=3)
    np.testing.assert_array_equal(got, w)
    # bfloat16 stays bfloat16 and unchanged too.
    got, _ = jaxreg.max_spectral_norm(w.astype(jnp.bfloat16), 1.0, u0)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got, w.astype(jnp.bfloat16))


def test_pure_function_one_power_step_on_a_diagonal():
    w = jnp.diag(jnp.array([4.0, 1.0, 0.5]))
    got, u = jaxreg.max_spectral_norm(w, 2.0, jnp.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(got, w / 2.0, rtol=1e-7)
    np.testing.assert_allclose(u, [1.0, 0.0, 0.0])


def test_stacked_layers_get_one_vector_and_one_bound_each():
    w = (
        jax.random.normal(jax.random.key(2), (3, 6, 4))
        * jnp.array([0.1, 2.0, 4.0])[:, None, None]
    )
    params = {"layers": {"kernel": w}}
    out, state = _run(jaxreg.spectral_norm_constraint(1.0, stacked_axes=1), params, 30)
    assert state.u["layers"]["kernel"].shape == (3, 4)
    np.testing.assert_array_equal(out["layers"]["kernel"][0], w[0])  # below: kept
    for i in (1, 2):
        np.testing.assert_allclose(_sigma(out["layers"]["kernel"][i]), 1.0, rtol=1e-3)
        assert _sigma(out["layers"]["kernel"][i]) <= 1.0 + TOL
    # Each layer as if unstacked (same start vectors: the pure function).
    u0 = state.u["layers"]["kernel"]
    got, _ = jaxreg.max_spectral_norm(w, 1.0, u0, stacked_axes=1)
    for i in range(3):
        want, _ = jaxreg.max_spectral_norm(w[i], 1.0, u0[i])
        np.testing.assert_allclose(got[i], want, rtol=1e-6)


def test_mask_and_jit_and_chain():
    params = {"a": 3.0 * jnp.eye(3), "b": 3.0 * jnp.eye(3)}
    tx = optax.chain(
        optax.sgd(0.1),
        jaxreg.spectral_norm_constraint(1.0, mask={"a": True, "b": False}),
    )
    out, _ = _run(tx, params, 2)
    np.testing.assert_allclose(_sigma(out["a"]), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out["b"], params["b"])
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    eager = tx.update(grads, state, params)[0]
    jitted = jax.jit(tx.update)(grads, state, params)[0]
    for k in params:
        np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-6, atol=1e-7)


def test_bad_inputs():
    with pytest.raises(ValueError, match="max_value"):
        jaxreg.spectral_norm_constraint(0.0)
    with pytest.raises(ValueError, match="n_power_iterations"):
        jaxreg.spectral_norm_constraint(1.0, n_power_iterations=0)
    with pytest.raises(TypeError, match="seed"):
        jaxreg.spectral_norm_constraint(1.0, seed=1.5)
    with pytest.raises(ValueError, match="must be >= 0"):
        jaxreg.spectral_norm_constraint(1.0, stacked_axes=-1)
    with pytest.raises(ValueError, match="needs a matrix per layer"):
        jaxreg.max_spectral_norm(jnp.ones(3), 1.0, jnp.ones(3))
    with pytest.raises(ValueError, match=r"`u` must have shape \(2,\)"):
        jaxreg.max_spectral_norm(jnp.ones((3, 2)), 1.0, jnp.ones(3))
    with pytest.raises(TypeError, match="float"):
        jaxreg.max_spectral_norm(jnp.ones((3, 2), jnp.int32), 1.0, jnp.ones(2))
    tx = jaxreg.spectral_norm_constraint(1.0)
    w = jnp.ones((2, 2))
    with pytest.raises(ValueError, match="params"):
        tx.update(w, tx.init(w))


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np, jaxreg
from jax.sharding import NamedSharding, PartitionSpec as P, AxisType

w = jax.random.normal(jax.random.key(0), (16, 32)) * 3
params = {"kernel": w, "bias": jnp.ones(32)}
tx = jaxreg.spectral_norm_constraint(1.0, n_power_iterations=5)
zeros = lambda p: jax.tree.map(jnp.zeros_like, p)
want, want_state = tx.update(zeros(params), tx.init(params), params)
for types in [(AxisType.Explicit,) * 2, (AxisType.Auto,) * 2]:
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=types)
    with jax.set_mesh(mesh):
        for spec in [P("a", "b"), P(None, "b"), P("a", None)]:
            put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
            ps = {"kernel": put(w, spec), "bias": put(params["bias"], P("b"))}
            got, state = jax.jit(tx.update)(zeros(ps), tx.init(ps), ps)
            if types[0] == AxisType.Explicit:
                assert jax.typeof(got["kernel"]).sharding.spec == spec, spec
            # Matrix-vector products over split axes sum in another order: a
            # few float32 roundings of the projected kernel (entries <= ~3).
            np.testing.assert_allclose(got["kernel"], want["kernel"], atol=2e-6)
            np.testing.assert_allclose(
                state.u["kernel"], want_state.u["kernel"], atol=2e-6
            )
print("OK")
"""


def test_explicit_and_auto_meshes_give_the_unsharded_projection():
    # 8 simulated devices, meshes (2, 4) with Explicit and Auto axes, the kernel
    # split over rows, columns or both: the projected kernel keeps its layout
    # (Explicit) and equals the unsharded one up to reduction order.
    result = run_on_8_cpu_devices(SHARDED_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
