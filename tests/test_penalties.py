"""Tests for jaxreg.penalties: penalty values, gradients and parameter masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxreg
from jaxreg._trees import path_string

RNG = np.random.default_rng(0)


def _tree():
    return {
        "dense": {
            "kernel": jnp.array([[1.0, -2.0], [0.0, 3.0]]),
            "bias": jnp.array([-1.0, 0.5]),
        },
        "layers": [jnp.array([[0.5]]), jnp.array([2.0])],
    }


# ---------------------------------------------------------------------------
# Values and gradients against hand-computed cases.
# ---------------------------------------------------------------------------


def test_l1_value_and_gradient():
    tree = _tree()
    # |1|+|-2|+|0|+|3| + |-1|+|0.5| + 0.5 + 2 = 10
    assert float(jaxreg.l1(tree)) == 10.0
    grads = jax.grad(jaxreg.l1)(tree)
    np.testing.assert_array_equal(grads["dense"]["kernel"], [[1.0, -1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(grads["dense"]["bias"], [-1.0, 1.0])
    # The subgradient at exactly 0 is 0 (not jnp.abs's 1).
    assert float(grads["dense"]["kernel"][1, 0]) == 0.0


def test_l2_value_and_gradient_is_the_weights():
    tree = _tree()
    # 0.5 * (1 + 4 + 0 + 9 + 1 + 0.25 + 0.25 + 4) = 9.75
    assert float(jaxreg.l2(tree)) == 9.75
    grads = jax.grad(jaxreg.l2)(tree)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_elastic_net_is_sklearn_parameterisation(rho):
    w = jnp.array([1.0, -2.0, 0.0, 0.5])
    expected = rho * 3.5 + 0.5 * (1 - rho) * (1 + 4 + 0 + 0.25)
    np.testing.assert_allclose(jaxreg.elastic_net(w, l1_ratio=rho), expected, rtol=1e-7)
    g = jax.grad(lambda w: jaxreg.elastic_net(w, l1_ratio=rho))(w)
    np.testing.assert_allclose(
        g, rho * np.sign(w) + (1 - rho) * np.asarray(w), rtol=1e-7
    )
    if rho == 1.0:
        assert float(jaxreg.elastic_net(w, l1_ratio=1.0)) == float(jaxreg.l1(w))
    if rho == 0.0:
        assert float(jaxreg.elastic_net(w, l1_ratio=0.0)) == float(jaxreg.l2(w))


def test_group_lasso_value_gradient_and_zero_group():
    w = jnp.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    # axis=0: groups are columns: norms 5, 0, sqrt(2); size 2 each.
    expected = math.sqrt(2) * (5 + 0 + math.sqrt(2))
    np.testing.assert_allclose(jaxreg.group_lasso(w, axis=0), expected, rtol=1e-6)
    g = jax.grad(lambda w: jaxreg.group_lasso(w, axis=0))(w)
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_allclose(g[:, 0], math.sqrt(2) * np.array([0.6, 0.8]), rtol=1e-6)
    np.testing.assert_array_equal(g[:, 1], [0.0, 0.0])  # zero group: subgradient 0
    # axis=1: groups are rows: norms sqrt(10), sqrt(17); size 3 each.
    np.testing.assert_allclose(
        jaxreg.group_lasso(w, axis=1),
        math.sqrt(3) * (math.sqrt(10) + math.sqrt(17)),
        rtol=1e-6,
    )


def test_group_lasso_conv_kernel_filters_and_check_grads():
    k = jnp.asarray(RNG.normal(size=(3, 3, 2, 4)), jnp.float32)
    per_filter = np.sqrt((np.asarray(k) ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(
        jaxreg.group_lasso(k, axis=(0, 1, 2)),
        math.sqrt(18) * per_filter.sum(),
        rtol=1e-5,
    )
    # Negative axes mean the same thing.
    np.testing.assert_allclose(
        jaxreg.group_lasso(k, axis=(-4, -3, -2)),
        jaxreg.group_lasso(k, axis=(0, 1, 2)),
        rtol=0,
    )
    check_grads(
        lambda k: jaxreg.group_lasso(k, axis=(0, 1, 2)), (k,), order=2, modes=["rev"]
    )


def _keras_orthogonal_reference(x, factor, mode):
    """NumPy transcription of Keras 3 OrthogonalRegularizer.__call__ (the formula)."""
    x = np.asarray(x, np.float64)
    if mode == "rows":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        product = x @ x.T
        size = x.shape[0]
    else:
        x = x / np.linalg.norm(x, axis=0, keepdims=True)
        product = x.T @ x
        size = x.shape[1]
    off = product * (1.0 - np.eye(size))
    num_pairs = size * (size - 1.0) / 2.0
    return factor * 0.5 * np.sum(np.abs(off)) / num_pairs


@pytest.mark.parametrize("shape", [(4, 3), (3, 7), (10, 10), (2, 2)])
@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_equals_keras_formula(shape, mode):
    for factor in (0.01, 1.0, 3.5):
        x = RNG.normal(size=shape).astype(np.float32)
        got = factor * jaxreg.orthogonal(jnp.asarray(x), mode=mode)
        np.testing.assert_allclose(
            got, _keras_orthogonal_reference(x, factor, mode), rtol=2e-6
        )


def test_orthogonal_edge_cases_and_gradients():
    assert float(jaxreg.orthogonal(jnp.eye(4))) == 0.0
    assert float(jaxreg.orthogonal(jnp.eye(4), mode="columns")) == 0.0
    # Parallel rows: |cos| = 1 for every pair.
    np.testing.assert_allclose(jaxreg.orthogonal(jnp.ones((3, 5))), 1.0, rtol=1e-6)
    # One row: no pairs, 0 (Keras divides 0 by 0).
    assert float(jaxreg.orthogonal(jnp.ones((1, 5)))) == 0.0
    # A zero row contributes nothing and gives finite gradients.
    w = jnp.array([[0.0, 0.0], [1.0, 2.0], [2.0, -1.0]])
    np.testing.assert_allclose(jaxreg.orthogonal(w), 0.0, atol=1e-7)
    assert np.isfinite(np.asarray(jax.grad(jaxreg.orthogonal)(w))).all()
    x = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32) + 3.0  # no cos near 0
    check_grads(jaxreg.orthogonal, (x,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_penalties_jit_equals_eager_and_vmap_gives_per_example():
    tree = _tree()
    # Sums may be reordered by jit: equal up to float32 rounding.
    for fn in (jaxreg.l1, jaxreg.l2, jaxreg.elastic_net, jaxreg.group_lasso):
        np.testing.assert_allclose(jax.jit(fn)(tree), fn(tree), rtol=1e-6)
    k = {"k": tree["dense"]["kernel"]}
    np.testing.assert_allclose(
        jax.jit(jaxreg.orthogonal)(k), jaxreg.orthogonal(k), rtol=1e-6
    )
    batch = jnp.asarray(RNG.normal(size=(5, 7)), jnp.float32)
    per_example = jax.vmap(jaxreg.l1)(batch)
    np.testing.assert_allclose(
        per_example, np.abs(np.asarray(batch)).sum(axis=1), rtol=1e-6
    )


def test_activity_penalty_on_activations_inside_a_loss():
    x = jnp.asarray(RNG.normal(size=(8, 3)), jnp.float32)
    w = jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32)

    def loss(w):
        h = jnp.tanh(x @ w)
        return jaxreg.l1(h) / x.shape[0] + jaxreg.l2(h)

    h = np.tanh(np.asarray(x) @ np.asarray(w))
    np.testing.assert_allclose(
        loss(w), np.abs(h).sum() / 8 + 0.5 * (h**2).sum(), rtol=1e-5
    )
    check_grads(loss, (w,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_low_precision_leaves_sum_in_float32():
    w = jnp.full((1000,), 0.1, jnp.bfloat16)
    out = jaxreg.l1(w)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, 1000 * float(jnp.bfloat16(0.1)), rtol=1e-6)


def test_non_float_leaves_are_skipped_and_empty_tree_gives_zero():
    tree = {
        "w": jnp.array([1.0, -1.0]),
        "step": jnp.array(7),
        "flag": jnp.array([True, True]),
        "f": jax.nn.relu,
    }
    assert float(jaxreg.l1(tree)) == 2.0
    assert float(jaxreg.l2({})) == 0.0
    everything_but_w = {"w": False, "step": True, "flag": True, "f": True}
    assert float(jaxreg.l1(tree, mask=everything_but_w)) == 0.0
    arrays = {k: v for k, v in tree.items() if k != "f"}
    g = jax.grad(jaxreg.l2, allow_int=True)(arrays)
    np.testing.assert_array_equal(g["w"], tree["w"])


# ---------------------------------------------------------------------------
# Masks in each pytree flavour.
# ---------------------------------------------------------------------------


def _check_mask_keeps_only_kernels(params, mask, kernel_paths):
    """The masked l2 is the l2 of the kernels, and its gradient is 0 elsewhere."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    kernels = [leaf for p, leaf in leaves if path_string(p) in kernel_paths]
    assert len(kernels) == len(kernel_paths)
    expected = sum(0.5 * float((np.asarray(k, np.float64) ** 2).sum()) for k in kernels)
    np.testing.assert_allclose(jaxreg.l2(params, mask=mask), expected, rtol=1e-5)
    grads = jax.grad(lambda p: jaxreg.l2(p, mask=mask))(params)
    for (p, g), (_, w) in zip(
        jax.tree_util.tree_flatten_with_path(grads)[0], leaves, strict=True
    ):
        name = path_string(p)
        if name in kernel_paths:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_array_equal(g, np.zeros_like(g))


def test_masks_flax_linen_param_dict():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(4)(x)
            x = nn.LayerNorm()(x)
            return nn.Dense(2)(x)

    variables = Net().init(jax.random.key(0), jnp.ones((1, 3)))
    kernels = {"params/Dense_0/kernel", "params/Dense_1/kernel"}
    by_ndim = jaxreg.mask_by_ndim(variables)
    assert by_ndim["params"]["LayerNorm_0"] == {"bias": False, "scale": False}
    assert by_ndim["params"]["Dense_0"] == {"bias": False, "kernel": True}
    by_path = jaxreg.mask_by_path(variables, include="kernel")
    assert by_path == by_ndim
    by_exclude = jaxreg.mask_by_path(variables, exclude=r"bias|LayerNorm")
    assert by_exclude == by_ndim
    for mask in (by_ndim, by_path, by_exclude, jaxreg.mask_by_ndim):
        _check_mask_keeps_only_kernels(variables, mask, kernels)


def test_masks_flax_nnx_state():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 4, rngs=rngs)
            self.ln = nnx.LayerNorm(4, rngs=rngs)
            self.out = nnx.Linear(4, 2, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    by_path = jaxreg.mask_by_path(state, include=r"kernel$")  # no ".value" suffix
    by_ndim = jaxreg.mask_by_ndim(state)
    assert jax.tree.structure(by_path) == jax.tree.structure(state)
    assert jax.tree.leaves(by_path) == jax.tree.leaves(by_ndim)
    assert sum(jax.tree.leaves(by_path)) == 2
    # nnx paths carry the ".value" of each Variable; the joined mask path does not.
    kernels = {"dense/kernel/value", "out/kernel/value"}
    for mask in (by_path, by_ndim):
        _check_mask_keeps_only_kernels(state, mask, kernels)


def test_masks_plain_dicts_and_lists():
    params = [
        {"w": jnp.ones((2, 3)), "b": jnp.ones(3)},
        {"w": 2 * jnp.ones((3, 1)), "b": jnp.ones(1), "gamma": jnp.ones(1)},
    ]
    assert jaxreg.mask_by_path(params, include=r"^1/") == [
        {"w": False, "b": False},
        {"w": True, "b": True, "gamma": True},
    ]
    mask = jaxreg.mask_by_path(params, include=r"/w$")
    assert mask == jaxreg.mask_by_ndim(params)
    _check_mask_keeps_only_kernels(params, mask, {"0/w", "1/w"})
    # A single array is a one-leaf tree with the empty path.
    assert jaxreg.mask_by_ndim(jnp.ones(3)) is False
    assert jaxreg.mask_by_path(jnp.ones(3), include="^$") is True


def test_masks_equinox_module():
    import equinox as eqx

    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(0))
    mask = jaxreg.mask_by_path(mlp, include="weight")
    assert jax.tree.structure(mask) == jax.tree.structure(mlp)
    assert mask.activation is False  # the activation function is a leaf, not an array
    assert [layer.weight for layer in mask.layers] == [True, True, True]
    assert [layer.bias for layer in mask.layers] == [False, False, False]
    assert jax.tree.leaves(jaxreg.mask_by_ndim(mlp)) == jax.tree.leaves(mask)
    params = eqx.filter(mlp, eqx.is_inexact_array)
    kernels = {f"layers/{i}/weight" for i in range(3)}
    _check_mask_keeps_only_kernels(
        params, jaxreg.mask_by_path(params, include="weight"), kernels
    )
    # On the full module the penalty skips the non-array leaves.
    np.testing.assert_array_equal(
        jaxreg.l2(mlp, mask=mask), jaxreg.l2(params, mask=jaxreg.mask_by_ndim(params))
    )


def test_prefix_mask_and_callable_mask():
    tree = _tree()
    prefix = {"dense": True, "layers": False}
    assert float(jaxreg.l1(tree, mask=prefix)) == 7.5
    assert float(jaxreg.l1(tree, mask=lambda p: jaxreg.mask_by_ndim(p))) == 6.5


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_mask_with_other_structure_raises_showing_both_structures():
    tree = _tree()
    with pytest.raises(
        ValueError,
        match=r"`mask` must have the same tree structure as `params`.*\n  mask:   PyTreeDef.*\n  params: PyTreeDef",
    ):
        jaxreg.l1(tree, mask={"dense": {"kernel": True}, "layers": [True, True]})
    with pytest.raises(ValueError, match="tree structure"):
        jaxreg.l2(tree, mask=[True, False])


def test_mask_leaves_must_be_bools():
    with pytest.raises(
        TypeError, match=r"`mask` leaves must be Python bools.*got int 1"
    ):
        jaxreg.l1({"w": jnp.ones(2)}, mask={"w": 1})


def test_bad_arguments():
    w = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"`l1_ratio`.*\[0, 1\].*l1_ratio=1.5"):
        jaxreg.elastic_net(w, l1_ratio=1.5)
    with pytest.raises(ValueError, match="l1_ratio=nan"):
        jaxreg.elastic_net(w, l1_ratio=float("nan"))
    with pytest.raises(TypeError, match="`l1_ratio` must be a real scalar.*got str"):
        jaxreg.elastic_net(w, l1_ratio="half")
    with pytest.raises(
        ValueError, match=r"`mode` must be 'rows' or 'columns'; got mode='diag'"
    ):
        jaxreg.orthogonal(w, mode="diag")
    with pytest.raises(
        ValueError, match=r"needs 2-D kernels; leaf 'b' has shape \(3,\)"
    ):
        jaxreg.orthogonal({"b": jnp.ones(3), "w": w})
    with pytest.raises(
        ValueError,
        match=r"`axis`=1 is out of range for an array of rank 1.*leaf 'b' of shape \(3,\)",
    ):
        jaxreg.group_lasso({"b": jnp.ones(3), "w": w}, axis=1)
    with pytest.raises(ValueError, match="repeats an axis"):
        jaxreg.group_lasso(w, axis=(0, -2))
    with pytest.raises(TypeError, match="`axis` must be an int or a tuple of ints"):
        jaxreg.group_lasso(w, axis="rows")
    with pytest.raises(ValueError, match=r"`min_ndim` must be >= 0; got min_ndim=-1"):
        jaxreg.mask_by_ndim(w, min_ndim=-1)
    with pytest.raises(
        TypeError, match="`min_ndim` must be a Python int; got float 2.0"
    ):
        jaxreg.mask_by_ndim(w, min_ndim=2.0)
    with pytest.raises(ValueError, match=r"`include`='\(' is not a valid regex"):
        jaxreg.mask_by_path(w, include="(")
    with pytest.raises(
        TypeError, match="`exclude` must be a regular expression string"
    ):
        jaxreg.mask_by_path(w, exclude=3)
