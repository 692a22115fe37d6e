"""Tests for jaxreg.constraints: projections with Keras axis semantics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxreg
from jaxreg.constraints import tolerance

RNG = np.random.default_rng(1)
KERAS_EPS = 1e-7  # keras.backend.epsilon()

PROJECTIONS = {
    "max_norm": functools.partial(jaxreg.max_norm, max_value=1.5),
    "unit_norm": jaxreg.unit_norm,
    "min_max_norm": functools.partial(
        jaxreg.min_max_norm, min_value=0.5, max_value=2.0
    ),
    "non_neg": jaxreg.non_neg,
}


def _norms(w, axis):
    return np.sqrt((np.asarray(w, np.float64) ** 2).sum(axis=axis, keepdims=True))


def _weights(shape, scale, seed):
    return jnp.asarray(
        np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32
    )


# Keras 3 formulas (keras/src/constraints/constraints.py), in NumPy.
def _keras_max_norm(w, max_value, axis):
    n = _norms(w, axis)
    return np.asarray(w, np.float64) * (np.clip(n, 0, max_value) / (KERAS_EPS + n))


def _keras_unit_norm(w, axis):
    return np.asarray(w, np.float64) / (KERAS_EPS + _norms(w, axis))


def _keras_min_max_norm(w, lo, hi, rate, axis):
    n = _norms(w, axis)
    desired = rate * np.clip(n, lo, hi) + (1 - rate) * n
    return np.asarray(w, np.float64) * (desired / (KERAS_EPS + n))


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((6, 5), 0),
        ((6, 5), 1),
        ((6, 5), -1),
        ((3, 3, 4, 8), (0, 1, 2)),
        ((3, 3, 4, 8), 3),
    ],
)
def test_projections_match_keras_formulas_per_axis(shape, axis):
    w = _weights(shape, 1.0, 0)
    np.testing.assert_allclose(
        jaxreg.max_norm(w, 1.5, axis=axis),
        _keras_max_norm(w, 1.5, axis),
        rtol=2e-6,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        jaxreg.unit_norm(w, axis=axis), _keras_unit_norm(w, axis), rtol=2e-6, atol=1e-7
    )
    for rate in (1.0, 0.25):
        np.testing.assert_allclose(
            jaxreg.min_max_norm(w, 1.0, 2.0, rate=rate, axis=axis),
            _keras_min_max_norm(w, 1.0, 2.0, rate, axis),
            rtol=2e-6,
            atol=1e-7,
        )
    np.testing.assert_array_equal(jaxreg.non_neg(w), np.maximum(np.asarray(w), 0))


def test_max_norm_dense_kernel_constrains_each_output_unit():
    # Column 0 has norm 5, column 1 norm 0.5: only column 0 is rescaled.
    w = jnp.array([[3.0, 0.3], [4.0, 0.4], [0.0, 0.0]])
    out = jaxreg.max_norm(w, 2.0)  # axis=0: incoming weights of each unit
    np.testing.assert_allclose(out[:, 0], [1.2, 1.6, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], w[:, 1])
    out1 = jaxreg.max_norm(w, 2.0, axis=1)  # rows: norms 3.01, 4.02, 0
    np.testing.assert_allclose(_norms(out1, 1)[:2, 0], [2.0, 2.0], rtol=1e-6)


def test_max_norm_conv_kernel_constrains_each_filter():
    k = _weights((3, 3, 4, 8), 1.0, 2)  # filter norms about 6
    out = jaxreg.max_norm(k, 3.0, axis=(0, 1, 2))
    filter_norms = _norms(out, (0, 1, 2)).ravel()
    np.testing.assert_allclose(filter_norms, 3.0, rtol=2e-6)
    # Each filter keeps its direction.
    np.testing.assert_allclose(
        out / filter_norms, k / _norms(k, (0, 1, 2)).ravel(), rtol=2e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 30.0])
def test_result_satisfies_constraint_and_is_idempotent(name, scale):
    proj = PROJECTIONS[name]
    tol = tolerance(jnp.float32)
    for seed, shape in enumerate([(7, 5), (3, 3, 2, 4), (1, 9)]):
        w = _weights(shape, scale, seed)
        out = proj(w)
        n = _norms(out, 0)
        if name == "max_norm":
            assert (n <= 1.5 * (1 + tol)).all()
        elif name == "unit_norm":
            np.testing.assert_allclose(n, 1.0, rtol=tol)
        elif name == "min_max_norm":
            assert ((n >= 0.5 * (1 - tol)) & (n <= 2.0 * (1 + tol))).all()
        else:
            assert (np.asarray(out) >= 0).all()
        # Idempotent, bit for bit.
        np.testing.assert_array_equal(proj(out), out)


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_feasible_weights_are_unchanged_bit_for_bit(name):
    w = _weights((8, 6), 1.0, 3)
    if name == "max_norm":
        w = w * (1.4 / _norms(w, 0).max())  # every column strictly inside
    elif name == "unit_norm":
        w = jnp.eye(6)[:, :4] * 1.0  # unit columns, exactly representable
    elif name == "min_max_norm":
        w = w * (1.0 / _norms(w, 0))  # norms ~1, inside [0.5, 2]
    else:
        w = jnp.abs(w)
    w = jnp.asarray(w, jnp.float32)
    np.testing.assert_array_equal(PROJECTIONS[name](w), w)


def test_min_max_norm_partial_rate_moves_part_of_the_way():
    w = jnp.array([[6.0, 0.03], [8.0, 0.04]])  # column norms 10 and 0.05
    out = jaxreg.min_max_norm(w, 1.0, 2.0, rate=0.5)
    np.testing.assert_allclose(
        _norms(out, 0).ravel(), [0.5 * 2 + 0.5 * 10, 0.5 * 1 + 0.5 * 0.05], rtol=1e-6
    )
    np.testing.assert_array_equal(jaxreg.min_max_norm(w, 1.0, 2.0, rate=0.0), w)


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_all_zero_weights_give_zeros_and_finite_gradients(name):
    proj = PROJECTIONS[name]
    w = jnp.zeros((4, 3))
    np.testing.assert_array_equal(proj(w), w)
    cot = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    g = jax.grad(lambda w: jnp.sum(proj(w) * cot))(w)
    assert np.isfinite(np.asarray(g)).all()
    # Mixed: one zero column, one active column.
    w2 = jnp.array([[0.0, 3.0], [0.0, 4.0]])
    g2 = jax.grad(lambda w: jnp.sum(proj(w) * jnp.ones_like(w)))(w2)
    assert np.isfinite(np.asarray(g2)).all()


@pytest.mark.parametrize("name", ["max_norm", "unit_norm", "min_max_norm"])
def test_gradients_away_from_the_boundary(name):
    proj = PROJECTIONS[name]
    w = _weights((5, 3), 2.0, 4)  # norms ~3.5: the active branch of every projection
    check_grads(proj, (w,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_low_precision_dtype_kept_and_idempotent(dtype, name):
    w = _weights((16, 4), 3.0, 5).astype(dtype)
    out = PROJECTIONS[name](w)
    assert out.dtype == dtype
    np.testing.assert_array_equal(PROJECTIONS[name](out), out)


def test_jit_equals_eager_vmap_and_traced_bound():
    # The norms are reductions that jit and vmap may reorder: equal up to a few
    # float32 roundings (the projection itself rounds once more).
    rtol = 4 * float(jnp.finfo(jnp.float32).eps)
    w = _weights((6, 5), 1.0, 6)
    for proj in PROJECTIONS.values():
        np.testing.assert_allclose(jax.jit(proj)(w), proj(w), rtol=rtol)
    batch = jnp.stack([w, 2 * w, 0.1 * w])
    np.testing.assert_allclose(
        jax.vmap(PROJECTIONS["max_norm"])(batch),
        jnp.stack([PROJECTIONS["max_norm"](x) for x in batch]),
        rtol=rtol,
    )
    traced = jax.jit(lambda w, c: jaxreg.max_norm(w, c))(w, 1.5)
    np.testing.assert_allclose(traced, jaxreg.max_norm(w, 1.5), rtol=rtol)


def test_bad_input():
    w = jnp.ones((3, 2))
    for bad in (0.0, -1.0):
        with pytest.raises(
            ValueError, match=rf"`max_value` must be > 0; got max_value={bad}"
        ):
            jaxreg.max_norm(w, bad)
    with pytest.raises(ValueError, match="max_value=nan"):
        jaxreg.max_norm(w, float("nan"))
    with pytest.raises(
        ValueError,
        match=r"`min_value` must be <= `max_value`; got min_value=2.0, max_value=1.0",
    ):
        jaxreg.min_max_norm(w, 2.0, 1.0)
    with pytest.raises(
        ValueError, match=r"`min_value` must be >= 0; got min_value=-1.0"
    ):
        jaxreg.min_max_norm(w, -1.0, 1.0)
    with pytest.raises(ValueError, match=r"`rate` must lie in \[0, 1\]; got rate=1.5"):
        jaxreg.min_max_norm(w, 0.0, 1.0, rate=1.5)
    with pytest.raises(
        ValueError, match=r"`axis`=2 is out of range for an array of rank 2"
    ):
        jaxreg.max_norm(w, 1.0, axis=2)
    with pytest.raises(ValueError, match=r"`axis`=-3 is out of range"):
        jaxreg.unit_norm(w, axis=-3)
    with pytest.raises(
        ValueError, match=r"`axis`=\(0, 1, 2\)|`axis`=2 is out of range"
    ):
        jaxreg.min_max_norm(w, 0.0, 1.0, axis=(0, 1, 2))
    with pytest.raises(ValueError, match="`axis` repeats an axis"):
        jaxreg.unit_norm(w, axis=(1, -1))
    with pytest.raises(ValueError, match="`axis` must name at least one axis"):
        jaxreg.unit_norm(w, axis=())
    with pytest.raises(TypeError, match="`axis` must be an int or a tuple of ints"):
        jaxreg.max_norm(w, 1.0, axis=None)
    with pytest.raises(TypeError, match="`w` must have a floating dtype"):
        jaxreg.non_neg(jnp.array([1, -1]))
    with pytest.raises(TypeError, match="`max_value` must be a real scalar"):
        jaxreg.max_norm(w, "3")
