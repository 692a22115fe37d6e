"""Layer-axis awareness (``stacked_axes=``): a stacked model gives what its layers
give one by one, for masks, penalties (values and gradients), constraints and
their optax transforms, with linen ``nn.scan``, nnx ``vmap`` and Equinox
``filter_vmap`` stacks.

Masks, projections and per-layer proximal steps are elementwise after per-slice
reductions that are the same for a layer of the stack and the layer alone; they
are compared to float32 rounding (``RTOL``, a few ulps), as the rules ask for
reductions that batching may reorder. Penalties are sums over layers, compared
with the tolerance of a float32 sum of ``L`` terms.
"""

import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxreg

LAYERS = 3
WIDTH = 5
RTOL = 8 * float(jnp.finfo(jnp.float32).eps)  # a few float32 roundings
SUM_RTOL = 1e-5  # a float32 sum of LAYERS terms, each itself a sum


# ---------------------------------------------------------------------------
# The three stacks, each as (stacked tree, [layer trees], stacked_axes spec).
# ---------------------------------------------------------------------------


def _part(init, names):
    return nn.with_partitioning(init, names)


class _LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        x = nn.Dense(
            WIDTH,
            kernel_init=_part(nn.initializers.normal(2.0), ("embed", "mlp")),
            bias_init=_part(nn.initializers.normal(1.0), ("mlp",)),
        )(x)
        x = nn.LayerNorm(
            scale_init=_part(nn.initializers.normal(1.0), ("mlp",)),
            bias_init=_part(nn.initializers.zeros, ("mlp",)),
        )(x)
        return x, None


class _LinenStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        scan = nn.scan(
            _LinenBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=LAYERS,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return scan()(x, None)[0]


def _slices(tree):
    """The per-layer trees of a stacked tree (plain arrays, boxes removed)."""
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], tree) for i in range(LAYERS)]


def linen_stack():
    variables = _LinenStack().init(jax.random.key(0), jnp.ones((1, WIDTH)))
    boxed = variables["params"]
    return boxed, _slices(nn.meta.unbox(boxed)), "layers"


class _NnxBlock(nnx.Module):
    def __init__(self, rngs):
        normal = jax.random.normal
        self.kernel = nnx.Param(
            2.0 * normal(rngs.params(), (WIDTH, WIDTH)),
            out_sharding=("embed", "mlp"),
            eager_sharding=False,
        )
        self.bias = nnx.Param(
            normal(rngs.params(), (WIDTH,)),
            out_sharding=("mlp",),
            eager_sharding=False,
        )
        self.scale = nnx.Param(
            normal(rngs.params(), (WIDTH,)),
            out_sharding=("mlp",),
            eager_sharding=False,
        )


@nnx.split_rngs(splits=LAYERS)
@nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
def _nnx_model(rngs):
    """LAYERS blocks stacked by nnx.vmap, the layer axis named "layers"."""
    return _NnxBlock(rngs)


def nnx_stack():
    state = nnx.state(_nnx_model(nnx.Rngs(0)), nnx.Param)
    return state, _slices(nnx.to_pure_dict(state)), "layers"


class _EqxBlock(eqx.Module):
    linear: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    step: int = 0  # a non-float leaf: never selected, never touched

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.linear = eqx.nn.Linear(WIDTH, WIDTH, key=k1)
        w = self.linear.weight * 8.0  # norms above the bounds used below
        self.linear = eqx.tree_at(lambda m: m.weight, self.linear, w)
        self.norm = eqx.tree_at(
            lambda m: m.weight,
            eqx.nn.LayerNorm(WIDTH),
            jax.random.normal(k2, (WIDTH,)),
        )


def eqx_stack():
    keys = jax.random.split(jax.random.key(0), LAYERS)
    stacked = eqx.filter_vmap(_EqxBlock)(keys)
    layers = [
        jax.tree_util.tree_map(lambda x, i=i: x[i] if eqx.is_array(x) else x, stacked)
        for i in range(LAYERS)
    ]
    # Every array of the module is stacked: one layer axis (the int form).
    return stacked, layers, 1


STACKS = {"linen": linen_stack, "nnx": nnx_stack, "equinox": eqx_stack}


@pytest.fixture(params=list(STACKS), scope="module")
def stack(request):
    return STACKS[request.param]()


def _floats(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(x)]


def _layer_leaves(stacked_tree, i):
    return [x[i] for x in _floats(stacked_tree)]


def _close(actual, expected, rtol=RTOL):
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=rtol, atol=1e-6
    )


# ---------------------------------------------------------------------------
# Masks.
# ---------------------------------------------------------------------------


def test_mask_by_ndim_equals_unstacked(stack):
    stacked, layers, spec = stack
    got = jax.tree_util.tree_leaves(jaxreg.mask_by_ndim(stacked, stacked_axes=spec))
    want = jax.tree_util.tree_leaves(jaxreg.mask_by_ndim(layers[0]))
    assert got == want
    assert sum(want) == 1  # only the kernel; biases and scales are 1-D per layer
    # Without stacked_axes a stacked bias looks 2-D and is selected.
    assert sum(jax.tree_util.tree_leaves(jaxreg.mask_by_ndim(stacked))) > 1


# ---------------------------------------------------------------------------
# Penalties: values and gradients.
# ---------------------------------------------------------------------------


def _penalties(spec):
    mask = functools.partial(jaxreg.mask_by_ndim, stacked_axes=spec)
    return {
        "group_lasso": lambda t, s: jaxreg.group_lasso(
            t,
            axis=0,
            mask=functools.partial(jaxreg.mask_by_ndim, stacked_axes=s),
            stacked_axes=s,
        ),
        "orthogonal": lambda t, s: jaxreg.orthogonal(
            t,
            mode="columns",
            mask=functools.partial(jaxreg.mask_by_ndim, stacked_axes=s),
            stacked_axes=s,
        ),
        "l2": lambda t, s: jaxreg.l2(
            t, mask=functools.partial(jaxreg.mask_by_ndim, stacked_axes=s)
        ),
        "mask": mask,
    }


@pytest.mark.parametrize("name", ["group_lasso", "orthogonal", "l2"])
def test_penalty_value_and_grad_equal_unstacked(stack, name):
    stacked, layers, spec = stack
    penalty = _penalties(spec)[name]
    value = penalty(stacked, spec)
    want = sum(float(penalty(layer, None)) for layer in layers)
    _close(value, want, SUM_RTOL)
    grad = _floats(eqx.filter_grad(lambda t: penalty(t, spec))(stacked))
    for i, layer in enumerate(layers):
        layer_grad = _floats(eqx.filter_grad(lambda t: penalty(t, None))(layer))
        for g, h in zip(grad, layer_grad, strict=True):
            _close(g[i], h, SUM_RTOL)


# ---------------------------------------------------------------------------
# Constraints and their transforms.
# ---------------------------------------------------------------------------


def _stacked(factory, *args, s, **kwargs):
    """``factory`` with the layer-aware mask and ``stacked_axes=s``."""
    mask = functools.partial(jaxreg.mask_by_ndim, stacked_axes=s)
    return factory(*args, mask=mask, stacked_axes=s, **kwargs)


CONSTRAINTS = {
    "max_norm": lambda s: _stacked(jaxreg.max_norm_constraint, 1.0, axis=0, s=s),
    "unit_norm": lambda s: _stacked(jaxreg.unit_norm_constraint, axis=0, s=s),
    "min_max_norm": lambda s: _stacked(
        jaxreg.min_max_norm_constraint, 0.5, 1.0, axis=1, s=s
    ),
    "group_lasso_prox": lambda s: _stacked(
        jaxreg.group_lasso_prox, 0.5, 1.0, axis=0, s=s
    ),
    "add_penalty": lambda s: jaxreg.add_penalty(
        functools.partial(jaxreg.group_lasso, axis=0, stacked_axes=s),
        0.1,
        mask=functools.partial(jaxreg.mask_by_ndim, stacked_axes=s),
    ),
}


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_transform_updates_equal_unstacked(stack, name):
    stacked, layers, spec = stack
    grads = jax.tree_util.tree_map(lambda x: 0.3 * x, stacked)
    tx = CONSTRAINTS[name](spec)
    updates, _ = jax.jit(tx.update)(grads, tx.init(stacked), stacked)
    got = _floats(updates)
    for i, layer in enumerate(layers):
        tx1 = CONSTRAINTS[name](None)
        g1 = jax.tree_util.tree_map(lambda x: 0.3 * x, layer)
        want = _floats(tx1.update(g1, tx1.init(layer), layer)[0])
        for u, v in zip(got, want, strict=True):
            _close(u[i], v)
    # Something was constrained (the test is not vacuous).
    assert any(not np.allclose(u, g) for u, g in zip(got, _floats(grads), strict=True))


@pytest.mark.parametrize(
    "fn",
    [
        functools.partial(jaxreg.max_norm, max_value=1.0, axis=1),
        functools.partial(jaxreg.unit_norm, axis=(0, 1)),
        functools.partial(jaxreg.min_max_norm, min_value=0.5, max_value=1.0, axis=0),
    ],
)
def test_pure_constraint_counts_axes_per_layer(fn):
    w = jax.random.normal(jax.random.key(1), (2, 2, 4, 5)) * 3.0
    got = fn(w, stacked_axes=2)
    for i in range(2):
        for j in range(2):
            _close(got[i, j], fn(w[i, j]))


# ---------------------------------------------------------------------------
# Forms of stacked_axes and bad values.
# ---------------------------------------------------------------------------


def test_pytree_and_callable_specs():
    params = {
        "embed": jnp.ones((7, 4)),
        "layers": {"w": jnp.ones((3, 4, 4)), "b": jnp.ones((3, 4))},
    }
    want = {"embed": True, "layers": {"b": False, "w": True}}
    assert jaxreg.mask_by_ndim(params, stacked_axes={"embed": 0, "layers": 1}) == want
    spec = lambda p: {"embed": 0, "layers": 1}  # noqa: E731
    assert jaxreg.mask_by_ndim(params, stacked_axes=spec) == want
    # A leaf without metadata counts 0 layer axes under a names spec.
    assert jaxreg.mask_by_ndim(params, stacked_axes="layers") == {
        "embed": True,
        "layers": {"b": True, "w": True},
    }


@pytest.mark.parametrize(
    ("spec", "err", "match"),
    [
        (-1, ValueError, "must be >= 0"),
        (1.5, TypeError, "number of leading layer axes"),
        (True, TypeError, "number of leading layer axes"),
        (3, ValueError, r"do not fit an array of rank 1 \(leaf 'b' of shape \(4,\)"),
        ({"w": 0}, ValueError, "structure of `params`"),
        ({"w": 0, "b": -2}, ValueError, "must be >= 0"),
        ([], TypeError, "empty list"),
    ],
)
@pytest.mark.parametrize(
    "resolve",
    [
        lambda params, spec: jaxreg.mask_by_ndim(params, stacked_axes=spec),
        jaxreg.layer_axes,
    ],
    ids=["mask_by_ndim", "layer_axes"],
)
def test_bad_stacked_axes(spec, err, match, resolve):
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4), "c": jnp.ones(2)}
    with pytest.raises(err, match=match):
        resolve(params, spec)


def test_bad_stacked_axes_in_transforms_and_constraints():
    with pytest.raises(TypeError, match="number of leading layer axes"):
        jaxreg.max_norm_constraint(1.0, stacked_axes=0.5)
    with pytest.raises(ValueError, match="must be >= 0"):
        jaxreg.group_lasso_prox(0.1, 0.1, stacked_axes=-1)
    with pytest.raises(ValueError, match="do not fit an array of rank 2"):
        jaxreg.max_norm(jnp.ones((2, 2)), 1.0, stacked_axes=3)
    with pytest.raises(ValueError, match="out of range"):
        jaxreg.max_norm(jnp.ones((2, 2)), 1.0, axis=1, stacked_axes=1)
    w = jnp.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match="after its 1 layer axes"):
        jaxreg.orthogonal(w, stacked_axes=1)
    tx = jaxreg.max_norm_constraint(1.0, stacked_axes=3)
    with pytest.raises(ValueError, match="do not fit"):
        tx.update(jnp.ones((2, 2)), tx.init(jnp.ones((2, 2))), jnp.ones((2, 2)))


def test_nnx_optimizer_with_counts_from_the_variables():
    # nnx.Optimizer gives optax pure arrays (no metadata): the counts are read
    # from the Variables once with layer_axes and passed on.
    model = _nnx_model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    counts = jaxreg.layer_axes(params, "layers")
    mask = jaxreg.mask_by_ndim(params, stacked_axes="layers")
    tx = optax.chain(
        optax.sgd(1.0), jaxreg.max_norm_constraint(1.0, mask=mask, stacked_axes=counts)
    )
    before = nnx.to_pure_dict(params)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, params)
    optimizer.update(model, grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for i in range(LAYERS):
        _close(after["kernel"][i], jaxreg.max_norm(before["kernel"][i], 1.0))
    np.testing.assert_array_equal(after["bias"], before["bias"])  # 1-D per layer


def test_linen_counts_and_mask_from_boxes_fit_the_unboxed_params():
    # Training code often unboxes linen params (nn.meta.unbox) before optax:
    # counts and masks computed once from the boxed tree fit the plain one.
    boxed, layers, _ = linen_stack()
    plain = nn.meta.unbox(boxed)
    counts = jaxreg.layer_axes(boxed, "layers")
    mask = jaxreg.mask_by_ndim(boxed, stacked_axes="layers")
    tx = jaxreg.max_norm_constraint(1.0, mask=mask, stacked_axes=counts)
    got = tx.update(plain, tx.init(plain), plain)[0]
    (block,) = plain  # the scanned module's name
    kernel = got[block]["Dense_0"]["kernel"]
    for i, layer in enumerate(layers):
        w = layer[block]["Dense_0"]["kernel"]
        _close(kernel[i], jaxreg.max_norm(2.0 * w, 1.0) - w)
    # The stacked bias is 1-D per layer: not selected, its update passes through.
    bias = got[block]["Dense_0"]["bias"]
    np.testing.assert_array_equal(bias, plain[block]["Dense_0"]["bias"])
