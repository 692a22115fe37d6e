"""Parameter-tree plumbing shared by penalties, transforms and DropConnect.

One meaning of ``mask=`` everywhere: None (every leaf), a pytree of bools with the
structure of the parameters or a prefix of it (as for :func:`optax.masked`), or a
callable ``params -> such a pytree``. One meaning of "a leaf that is regularized":
a selected leaf holding floating-point numbers; integer and boolean leaves (step
counters, flags), and non-array leaves (an Equinox module's activation function)
are skipped, never penalised, projected, thresholded or dropped. Paths are the
``"a/b/0/kernel"`` strings masks match on; a ``flax.nnx.Variable`` contributes no
``value`` component. Flax is never imported here.

One meaning of ``stacked_axes=`` (layer axes, for models whose layers are stacked
on leading axes by ``nn.scan``, ``nnx.vmap``/``nnx.scan`` or ``eqx.filter_vmap``):
how many leading axes of a leaf index layers, so that everything else (ranks,
norm axes, matrices) is counted on the per-layer shape. See
:func:`resolve_stacked`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import check_layer_names, check_stacked_count

__all__ = [
    "check_stacked_axes",
    "map_stacked",
    "per_layer",
    "resolve_stacked",
    "selected_stacked_leaves",
    "check_mask",
    "flatten_like",
    "float_grad",
    "is_array",
    "is_float_leaf",
    "is_mask_fn",
    "map_float_params",
    "map_with_path",
    "on_leaf",
    "path_string",
    "resolve_mask",
    "selected_float_leaves",
]

PyTree = Any


def is_nnx_variable(x) -> bool:
    """True for a ``flax.nnx.Variable`` (checked without importing Flax)."""
    return any(
        c.__name__ == "Variable" and c.__module__.startswith("flax.nnx")
        for c in type(x).__mro__
    )


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_string(path: Sequence[Any]) -> str:
    """Join a JAX key path into ``"a/b/0/kernel"`` (the string masks match on)."""
    return "/".join(_key_name(k) for k in path)


def is_array(x) -> bool:
    """An array or a Python/NumPy number (a leaf a mask may select)."""
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int, complex))


def is_float_leaf(x) -> bool:
    """A leaf holding floating-point numbers (a Python float or a float array)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, float):
        return True
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return bool(jnp.issubdtype(x.dtype, jnp.floating))
    return False


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    """``fn(path, leaf)`` for every leaf; the result has the structure of ``tree``
    (``nnx.Variable`` nodes stay Variables, their paths omit ``value``)."""

    def visit(path, node):
        name = path_string(path)
        if is_nnx_variable(node):
            return jax.tree_util.tree_map(lambda leaf: fn(name, leaf), node)
        return fn(name, node)

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=is_nnx_variable)


def _none_or_variable(x) -> bool:
    return x is None or is_nnx_variable(x)


def map_float_params(fn: Callable, updates: PyTree, params: PyTree, *rest) -> PyTree:
    """``fn(path, u, p, *r)`` where the parameter ``p`` is a floating leaf.

    Maps over ``updates`` (the output has its structure) alongside ``params``
    and the ``rest`` trees (which have the structure of ``params``). Where the
    parameter is not floating (an int counter, a bool flag, a function), or the
    update is None (Equinox's ``filter_grad`` gives None for such leaves), the
    update is returned unchanged.
    """

    def visit(path, u, p, *r):
        if u is None or not is_float_leaf(p):
            return u
        return fn(path_string(path), u, p, *r)

    def node(path, u, p, *r):
        if is_nnx_variable(u):
            return jax.tree_util.tree_map(
                lambda *leaves: visit(path, *leaves), u, p, *r
            )
        return visit(path, u, p, *r)

    return jax.tree_util.tree_map_with_path(
        node, updates, params, *rest, is_leaf=_none_or_variable
    )


def float_grad(fn: Callable[[PyTree], jax.Array], params: PyTree) -> PyTree:
    """``jax.grad(fn)(params)`` with respect to the floating leaves only.

    ``fn`` sees the whole tree (its non-float leaves unchanged); the result has
    the structure of ``params`` with the gradient at floating leaves and the
    leaf itself elsewhere (a placeholder that :func:`map_float_params` skips).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    floating = [is_float_leaf(leaf) for leaf in leaves]

    def of_floats(values):
        it = iter(values)
        full = [
            next(it) if f else leaf for leaf, f in zip(leaves, floating, strict=True)
        ]
        return fn(jax.tree_util.tree_unflatten(treedef, full))

    grads = iter(
        jax.grad(of_floats)(
            [leaf for leaf, f in zip(leaves, floating, strict=True) if f]
        )
    )
    out = [next(grads) if f else leaf for leaf, f in zip(leaves, floating, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def on_leaf(fn: Callable, path: str, leaf, *args):
    """``fn(leaf, *args)``; a ValueError/TypeError it raises names the leaf.

    The message gains the leaf's path and shape and says how to skip the leaf
    (the ``mask`` argument).
    """
    try:
        return fn(leaf, *args)
    except (TypeError, ValueError) as err:
        if type(err) not in (TypeError, ValueError):
            raise
        raise type(err)(
            f"{err} (leaf {path or '<root>'!r} of shape {np.shape(leaf)}; exclude it "
            "with `mask`)"
        ) from None


def is_mask_fn(mask) -> bool:
    """A callable mask builder, not a callable pytree (e.g. an Equinox module)."""
    return callable(mask) and jax.tree_util.treedef_is_leaf(
        jax.tree_util.tree_structure(mask)
    )


def _brief(treedef, limit: int = 300) -> str:
    text = str(treedef)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def _is_linen_box(node) -> bool:
    """A ``flax.linen`` partitioning box (``nn.Partitioned``,
    ``nn.LogicallyPartitioned``), checked without importing Flax."""
    cls = type(node)
    return cls.__module__.startswith("flax") and cls.__name__ in (
        "Partitioned",
        "LogicallyPartitioned",
    )


def _is_wrapper(node) -> bool:
    return is_nnx_variable(node) or _is_linen_box(node)


def _unwrap_variable(node):
    if _is_wrapper(node):
        leaves = jax.tree_util.tree_leaves(node)
        if len(leaves) == 1:
            return leaves[0]
    return node


def _check_mask_leaf(m, path: str, name: str) -> bool:
    if not isinstance(m, (bool, np.bool_)):
        where = f" at {path!r}" if path else ""
        raise TypeError(
            f"`{name}` leaves must be Python bools (True = regularize this leaf); got "
            f"{type(m).__name__} {m!r}{where}. Build masks with "
            "`jaxreg.mask_by_ndim` or `jaxreg.mask_by_path`."
        )
    return bool(m)


def _unwrapped(mask) -> PyTree:
    # A mask built from a flax.nnx.State of Variables also fits the pure State (of
    # arrays) that nnx.Optimizer hands to optax, and one built from linen params
    # boxed by nn.with_partitioning fits the unboxed params: unwrap the Variables
    # and boxes (a bool still broadcasts over a box in params, as a prefix).
    return jax.tree_util.tree_map(_unwrap_variable, mask, is_leaf=_is_wrapper)


def check_mask(mask, name: str = "mask") -> None:
    """Check a mask before the parameters are known (a callable passes).

    Raises:
      TypeError: a mask leaf that is not a bool (its path is shown).
    """
    if mask is None or is_mask_fn(mask):
        return
    map_with_path(lambda path, m: _check_mask_leaf(m, path, name), _unwrapped(mask))


def resolve_mask(mask, params: PyTree, name: str = "mask") -> PyTree:
    """Return a bool pytree with exactly the structure of ``params``.

    ``mask`` may be None (everything selected), a pytree of bools with the structure
    of ``params`` or a prefix of it, or a callable ``params -> mask``.

    Raises:
      ValueError: if the structures do not match (the message shows both).
      TypeError: if a mask leaf is not a bool (its path is shown).
    """
    if mask is None:
        return jax.tree_util.tree_map(lambda _: True, params)
    if is_mask_fn(mask):
        mask = mask(params)
    mask = _unwrapped(mask)
    check_mask(mask, name)
    try:
        return jax.tree_util.tree_map(
            lambda m, sub: jax.tree_util.tree_map(lambda _: bool(m), sub), mask, params
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"`{name}` must have the same tree structure as `params` (or a prefix of "
            f"it: one bool per leaf or subtree); got\n  {name}:   "
            f"{_brief(jax.tree_util.tree_structure(mask))}\n  params: "
            f"{_brief(jax.tree_util.tree_structure(params))}\nBuild it from the same "
            f"pytree, e.g. `{name}=jaxreg.mask_by_ndim(params)`."
        ) from err


def selected_float_leaves(params: PyTree, mask=None) -> list[tuple[str, jax.Array]]:
    """``(path, leaf)`` for every floating leaf that ``mask`` selects."""
    return [(path, leaf) for path, leaf, _ in selected_stacked_leaves(params, mask)]


def selected_stacked_leaves(
    params: PyTree, mask=None, stacked_axes=None
) -> list[tuple[str, jax.Array, int]]:
    """``(path, leaf, k)`` for every floating leaf that ``mask`` selects, with
    ``k`` its number of leading layer axes (:func:`resolve_stacked`)."""
    flags = jax.tree_util.tree_leaves(resolve_mask(mask, params))
    counts = jax.tree_util.tree_leaves(resolve_stacked(stacked_axes, params))
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    out = []
    for (p, leaf), keep, k in zip(paths, flags, counts, strict=True):
        if keep and is_float_leaf(leaf):
            out.append((path_string(p), jnp.asarray(leaf), k))
    return out


# ---------------------------------------------------------------------------
# Layer axes (``stacked_axes=``).
# ---------------------------------------------------------------------------


def _box_names(node) -> tuple | None:
    """The per-axis partition names a Flax box carries, or None.

    ``nn.Partitioned`` / ``nn.LogicallyPartitioned`` (linen) keep them in
    ``names``; an ``nnx.Variable`` in its ``out_sharding`` metadata (``sharding``
    or ``sharding_names`` in older Flax). ``nn.scan(..., metadata_params=
    {nn.PARTITION_NAME: "layers"})`` and ``nnx.vmap``/``nnx.scan(...,
    transform_metadata={nnx.PARTITION_NAME: "layers"})`` put the layer axis name
    first.
    """
    if is_nnx_variable(node):
        meta = node.get_metadata() if hasattr(node, "get_metadata") else {}
        for field in ("out_sharding", "sharding", "sharding_names"):
            names = meta.get(field)
            if names is not None:
                return tuple(names)
        return None
    if _is_linen_box(node):
        return tuple(node.names)
    return None


def _is_box(node) -> bool:
    return _box_names(node) is not None or is_nnx_variable(node)


def _leading(names: tuple | None, layer_names: tuple[str, ...]) -> int:
    """How many leading entries of ``names`` are layer-axis names."""
    k = 0
    for n in names or ():
        if n not in layer_names:
            break
        k += 1
    return k


def check_stacked_axes(stacked_axes, name: str = "stacked_axes"):
    """Check ``stacked_axes`` before the parameters are known.

    Returns it normalized: an int (None is 0), a tuple of axis names, a
    callable, or a pytree of ints (checked leaf by leaf).

    Raises:
      TypeError: not one of the forms :func:`resolve_stacked` accepts.
      ValueError: a negative count.
    """
    names = check_layer_names(stacked_axes, name)
    if names is not None:
        return names
    if stacked_axes is None or isinstance(stacked_axes, (int, np.integer, bool)):
        return check_stacked_count(stacked_axes, name=name)
    if is_mask_fn(stacked_axes):
        return stacked_axes
    spec = _unwrapped(stacked_axes)
    leaves = jax.tree_util.tree_leaves(spec)
    if not leaves:
        raise TypeError(
            f"`{name}` must be an int, axis names, a pytree of ints or a callable; "
            f"got an empty {type(stacked_axes).__name__}."
        )
    for leaf in leaves:
        check_stacked_count(leaf, name=name)
    return spec


def resolve_stacked(stacked_axes, params: PyTree, name: str = "stacked_axes"):
    """The number of leading layer axes of every leaf of ``params``.

    ``stacked_axes`` may be:

    * None or ``0``: no layer axes (every leaf is one layer's parameter);
    * an int ``k``: every leaf has ``k`` leading layer axes;
    * a str or a tuple of strs, the names of layer axes (e.g. ``"layers"``): a
      leaf's count is the number of leading axes so named in its Flax partition
      metadata (``nn.Partitioned`` boxes, ``nnx.Variable`` sharding metadata);
      a leaf without metadata counts 0;
    * a pytree of ints with the structure of ``params`` or a prefix of it (one
      count per leaf or subtree, e.g. ``{"embed": 0, "layers": 1}``), or a
      callable ``params -> such a pytree``.

    Returns:
      A pytree with exactly the structure of ``params`` holding Python ints.

    Raises:
      TypeError, ValueError: a bad spec; a structure that does not fit; a leaf
        with fewer dimensions than its layer axes (its path is shown).
    """
    spec = check_stacked_axes(stacked_axes, name)
    if isinstance(spec, tuple):
        spec = jax.tree_util.tree_map(
            lambda node: _leading(_box_names(node), spec), params, is_leaf=_is_box
        )
    elif is_mask_fn(spec):
        spec = check_stacked_axes(spec(params), name)
        if isinstance(spec, tuple):
            raise TypeError(f"`{name}` as a callable must return a pytree of ints.")
    try:
        counts = jax.tree_util.tree_map(
            lambda k, sub: jax.tree_util.tree_map(lambda _: k, sub), spec, params
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"`{name}` as a pytree must have the structure of `params` (or a prefix "
            f"of it: one int per leaf or subtree); got\n  {name}: "
            f"{_brief(jax.tree_util.tree_structure(spec))}\n  params: "
            f"{_brief(jax.tree_util.tree_structure(params))}"
        ) from err

    def check(path, leaf, k):
        if is_array(leaf):
            try:
                check_stacked_count(k, np.ndim(leaf), name)
            except ValueError as err:
                raise ValueError(
                    f"{str(err).rstrip('.')} (leaf {path or '<root>'!r} of shape {np.shape(leaf)}; give "
                    f"it fewer layer axes with a pytree `{name}`)"
                ) from None
        return k

    leaves, treedef = jax.tree_util.tree_flatten(counts)
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    checked = [
        check(path_string(p), leaf, k)
        for (p, leaf), k in zip(paths, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, checked)


def map_stacked(fn: Callable, params: PyTree, stacked_axes=None) -> PyTree:
    """``fn(path, leaf, k)`` for every leaf, ``k`` its number of layer axes; the
    result has the structure of ``params``."""
    counts = jax.tree_util.tree_leaves(resolve_stacked(stacked_axes, params))
    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = [
        fn(path_string(p), leaf, k) for (p, leaf), k in zip(paths, counts, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def flatten_like(params: PyTree, *trees) -> tuple[Any, list, list[list]]:
    """``(treedef, leaves of params, [leaves of each tree])``, each tree cut at
    the leaves of ``params`` (a tree may hold None or any subtree there, e.g.
    Equinox's None updates or a transform's per-leaf state)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, leaves, [treedef.flatten_up_to(t) for t in trees]


def per_layer(fn: Callable, k: int, in_axes=0) -> Callable:
    """``fn`` mapped with :func:`jax.vmap` over ``k`` leading layer axes of its
    arguments (``in_axes`` as for ``jax.vmap``); ``fn`` itself for ``k == 0``."""
    for _ in range(k):
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn
