r"""Penalty terms over parameter pytrees, and parameter masks.

Every penalty returns one **unweighted** scalar: multiply it by a strength
:math:`\lambda` yourself (or use :func:`jaxreg.add_penalty` in an optax chain). A
penalty takes any pytree of arrays (a Flax linen ``params`` dict, a
``flax.nnx.State``, an Equinox module, plain dicts, lists and tuples, or a single
array) and an optional boolean ``mask`` pytree that selects the leaves it covers,
so the same functions serve as weight penalties and as activity penalties on
activations (Keras divides activity penalties by the batch size; do that
yourself if you want it).

Masks are pytrees of Python bools with the structure of ``params`` (or a prefix of
it, as for :func:`optax.masked`), or a callable ``params -> mask``.
:func:`mask_by_ndim` and :func:`mask_by_path` build the common ones, e.g. "kernels
only, not biases or LayerNorm scales".

Leaves that are not floating-point arrays (integer counters, the activation
function stored in an Equinox module, ...) are never penalised. Sums are
accumulated in at least float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import check_axis, check_nonnegative, float32_or_wider

__all__ = [
    "elastic_net",
    "group_lasso",
    "l1",
    "l2",
    "mask_by_ndim",
    "mask_by_path",
    "orthogonal",
]

PyTree = Any


# ---------------------------------------------------------------------------
# Pytree plumbing shared with jaxreg.transforms.
# ---------------------------------------------------------------------------


def _is_nnx_variable(x) -> bool:
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


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int, complex))


def _is_float_leaf(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, float):
        return True
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return bool(jnp.issubdtype(x.dtype, jnp.floating))
    return False


def _map_with_path(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    """``fn(path_string, leaf)`` for every leaf; ``nnx.Variable`` paths omit ``value``.

    The result has exactly the structure of ``tree`` (Variables stay Variables).
    """

    def visit(path, node):
        name = path_string(path)
        if _is_nnx_variable(node):
            return jax.tree_util.tree_map(lambda leaf: fn(name, leaf), node)
        return fn(name, node)

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=_is_nnx_variable)


def _brief(treedef, limit: int = 300) -> str:
    text = str(treedef)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def _unwrap_variable(node):
    if _is_nnx_variable(node):
        leaves = jax.tree_util.tree_leaves(node)
        if len(leaves) == 1:
            return leaves[0]
    return node


def _is_mask_fn(mask) -> bool:
    """A callable mask builder, not a callable pytree (e.g. an Equinox module)."""
    return callable(mask) and jax.tree_util.treedef_is_leaf(
        jax.tree_util.tree_structure(mask)
    )


def resolve_mask(mask, params: PyTree, name: str = "mask") -> PyTree:
    """Return a bool pytree with exactly the structure of ``params``.

    ``mask`` may be None (everything selected), a pytree of bools with the structure
    of ``params`` or a prefix of it, or a callable ``params -> mask``.

    Raises:
      ValueError: if the structures do not match (the message shows both).
      TypeError: if a mask leaf is not a Python bool.
    """
    if mask is None:
        return jax.tree_util.tree_map(lambda _: True, params)
    if _is_mask_fn(mask):
        mask = mask(params)
    # A mask built from a flax.nnx.State of Variables also fits the pure State (of
    # arrays) that nnx.Optimizer hands to optax: unwrap the Variables (a bool still
    # broadcasts over a Variable in params, as a prefix).
    mask = jax.tree_util.tree_map(_unwrap_variable, mask, is_leaf=_is_nnx_variable)

    try:
        full = jax.tree_util.tree_map(
            lambda m, sub: jax.tree_util.tree_map(lambda _: m, sub), mask, params
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"`{name}` must have the tree structure of the parameters (or a prefix "
            f"of it). Got {name} structure {_brief(jax.tree_util.tree_structure(mask))}"
            f" but params structure {_brief(jax.tree_util.tree_structure(params))}. "
            "Build the mask from the same pytree, e.g. "
            f"`{name}=jaxreg.mask_by_ndim(params)`."
        ) from err

    def check(m):
        if not isinstance(m, (bool, np.bool_)):
            raise TypeError(
                f"`{name}` leaves must be Python bools (True = regularize this "
                f"leaf); got {type(m).__name__} {m!r}. Build masks with "
                "`jaxreg.mask_by_ndim` or `jaxreg.mask_by_path`."
            )
        return bool(m)

    return jax.tree_util.tree_map(check, full)


def _selected(params: PyTree, mask) -> list[tuple[str, jax.Array]]:
    """``(path, leaf)`` for every floating leaf that ``mask`` selects."""
    full = resolve_mask(mask, params)
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    flags = jax.tree_util.tree_leaves(full)
    return [
        (path_string(p), jnp.asarray(leaf))
        for (p, leaf), keep in zip(paths, flags, strict=True)
        if keep and _is_float_leaf(leaf)
    ]


def _accumulate(terms: list[jax.Array]) -> jax.Array:
    if not terms:
        return jnp.zeros((), jnp.float32)
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(float32_or_wider(x.dtype))


def _sum_squares(x: jax.Array, axis=None, keepdims=False) -> jax.Array:
    x = _f32(x)
    return jnp.sum(x * x, axis=axis, keepdims=keepdims)


def _abs(x: jax.Array) -> jax.Array:
    """|x| as sign(x) * x: its gradient is sign(x), i.e. 0 at 0 (jnp.abs gives 1)."""
    x = _f32(x)
    return jnp.sign(x) * x


def safe_norm(x: jax.Array, axis=None, keepdims=False) -> jax.Array:
    """Euclidean norm over ``axis`` (float32 or wider) with gradient 0 at 0."""
    sq = _sum_squares(x, axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalize_axes(axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Normalize an int or a tuple of ints to sorted distinct non-negative axes."""
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        axes = (axis,)
    elif isinstance(axis, (tuple, list)):
        axes = tuple(axis)
        if not axes:
            raise ValueError(f"`{name}` must name at least one axis; got {axis!r}.")
    else:
        raise TypeError(
            f"`{name}` must be an int or a tuple of ints; got "
            f"{type(axis).__name__} {axis!r}. (Under `optax.inject_hyperparams`, "
            f'pass `static_args="{name}"`.)'
        )
    out = tuple(check_axis(a, ndim, name) for a in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}` repeats an axis; got {axis!r}.")
    return tuple(sorted(out))


def _leaf_axes(axis, w: jax.Array, path: str) -> tuple[int, ...]:
    """``normalize_axes`` for one leaf of a tree; errors name the leaf."""
    try:
        return normalize_axes(axis, w.ndim)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"{err} (leaf {path or '<root>'!r} of shape {w.shape}; exclude it with "
            "`mask`)"
        ) from None


# ---------------------------------------------------------------------------
# Masks.
# ---------------------------------------------------------------------------


def mask_by_ndim(params: PyTree, min_ndim: int = 2) -> PyTree:
    """Mask selecting the array leaves with at least ``min_ndim`` dimensions.

    With the default ``min_ndim=2`` this selects Dense and convolution kernels and
    embeddings, and leaves biases and normalization scales/offsets (1-D) alone: the
    usual target of weight decay, L1 and max-norm.

    Args:
      params: any parameter pytree (Flax linen dict, ``flax.nnx.State``, Equinox
        module, plain dicts/lists, ...).
      min_ndim: minimum rank of a selected leaf (a non-negative int).

    Returns:
      A pytree of Python bools with the structure of ``params``; non-array leaves
      are False.

    Raises:
      TypeError: ``min_ndim`` is not an int.
      ValueError: ``min_ndim`` is negative.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
      >>> jaxreg.mask_by_ndim(params)
      {'dense': {'bias': False, 'kernel': True}}
    """
    if isinstance(min_ndim, bool) or not isinstance(min_ndim, (int, np.integer)):
        raise TypeError(
            f"`min_ndim` must be an int; got {type(min_ndim).__name__} {min_ndim!r}."
        )
    if min_ndim < 0:
        raise ValueError(f"`min_ndim` must be >= 0; got min_ndim={min_ndim}.")
    return _map_with_path(
        lambda _, leaf: _is_array(leaf) and np.ndim(leaf) >= min_ndim, params
    )


def _compile(pattern, name: str):
    if pattern is None:
        return None
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(
            f"`{name}` must be a regular expression string (or None); got "
            f"{type(pattern).__name__} {pattern!r}."
        )
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"`{name}`={pattern!r} is not a valid regex: {err}.") from err


def mask_by_path(
    params: PyTree, *, include: str | None = None, exclude: str | None = None
) -> PyTree:
    """Mask selecting leaves by a regular expression on their joined key path.

    A leaf's path joins its keys with ``/``: ``params/Dense_0/kernel`` in a Flax
    linen variable dict, ``dense/kernel`` in a ``flax.nnx.State`` (the ``.value``
    of an ``nnx.Variable`` is not part of the path), ``layers/0/weight`` in an
    Equinox MLP, ``0/w`` in a list of dicts. A leaf is selected when
    ``re.search(include, path)`` matches (every leaf if ``include`` is None) and
    ``re.search(exclude, path)`` does not (nothing excluded if ``exclude`` is None).

    Args:
      params: any parameter pytree.
      include: regex (string or compiled) a selected path must match.
      exclude: regex (string or compiled) a selected path must not match.

    Returns:
      A pytree of Python bools with the structure of ``params``; non-array leaves
      are False.

    Raises:
      TypeError: ``include``/``exclude`` not a string or compiled regex.
      ValueError: an invalid regex.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)),
      ...                                  "bias": jnp.ones(2)},
      ...                      "LayerNorm_0": {"scale": jnp.ones(2)}}}
      >>> jaxreg.mask_by_path(params, exclude=r"bias|LayerNorm")
      {'params': {'Dense_0': {'bias': False, 'kernel': True}, 'LayerNorm_0': {'scale': False}}}
    """
    inc = _compile(include, "include")
    exc = _compile(exclude, "exclude")

    def select(path: str, leaf) -> bool:
        if not _is_array(leaf):
            return False
        if inc is not None and inc.search(path) is None:
            return False
        return not (exc is not None and exc.search(path) is not None)

    return _map_with_path(select, params)


# ---------------------------------------------------------------------------
# Penalties.
# ---------------------------------------------------------------------------


def l1(params: PyTree, *, mask=None) -> jax.Array:
    r"""Lasso penalty :math:`\sum_i |w_i|` over the selected leaves.

    Its gradient is :math:`\operatorname{sign}(w)` (0 at 0, a subgradient). For exact
    zeros during training use the proximal step :func:`jaxreg.l1_prox` instead of
    adding this gradient.

    Args:
      params: pytree of arrays (parameters, or activations for an activity
        penalty).
      mask: optional bool pytree (or callable ``params -> mask``) selecting leaves.

    Returns:
      A float32 (or wider) scalar.

    Raises:
      ValueError: ``mask`` does not have the structure of ``params``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.l1({"w": jnp.array([1.0, -2.0]), "b": jnp.array([3.0])})
      Array(6., dtype=float32)
      >>> jaxreg.l1({"w": jnp.array([1.0, -2.0]), "b": jnp.array([3.0])},
      ...           mask={"w": True, "b": False})
      Array(3., dtype=float32)

    References:
      Tibshirani. "Regression Shrinkage and Selection via the Lasso." JRSS B 58(1),
      1996. https://doi.org/10.1111/j.2517-6161.1996.tb02080.x
    """
    return _accumulate([jnp.sum(_abs(w)) for _, w in _selected(params, mask)])


def l2(params: PyTree, *, mask=None) -> jax.Array:
    r"""Ridge / weight-decay penalty :math:`\tfrac12 \sum_i w_i^2` (the λ/2 convention).

    The gradient is :math:`w` itself, so ``strength * l2`` added to a loss gives the
    weight-decay step ``strength * w`` of :func:`optax.add_decayed_weights`. (Keras'
    ``L2(l2)`` is ``l2 * sum(w**2)``, i.e. ``2 * l2 * jaxreg.l2``.)

    Args:
      params: pytree of arrays.
      mask: optional bool pytree (or callable) selecting leaves.

    Returns:
      A float32 (or wider) scalar.

    Raises:
      ValueError: ``mask`` does not have the structure of ``params``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.l2([jnp.array([1.0, -2.0]), jnp.array([[2.0]])])
      Array(4.5, dtype=float32)

    References:
      Hoerl, Kennard. "Ridge Regression: Biased Estimation for Nonorthogonal
      Problems." Technometrics 12(1), 1970. https://doi.org/10.1080/00401706.1970.10488634
    """
    return _accumulate([0.5 * _sum_squares(w) for _, w in _selected(params, mask)])


def _check_l1_ratio(l1_ratio):
    """A concrete ratio must lie in [0, 1] (returned as float); traced passes."""
    if isinstance(l1_ratio, str):
        raise TypeError(
            f"`l1_ratio` must be a Python float in [0, 1]; got str {l1_ratio!r}."
        )
    value = check_nonnegative(l1_ratio, "l1_ratio")
    if not isinstance(value, float):
        return value  # traced (e.g. optax.inject_hyperparams under jit)
    if value > 1.0:
        raise ValueError(
            f"`l1_ratio` is the weight of the L1 part and must lie in [0, 1]; got "
            f"l1_ratio={value!r}."
        )
    return value


def elastic_net(params: PyTree, *, l1_ratio: float = 0.5, mask=None) -> jax.Array:
    r"""Elastic-net penalty, scikit-learn's parameterisation.

    .. math::

       \Omega(w) = \rho \sum_i |w_i| + \frac{1 - \rho}{2} \sum_i w_i^2,

    with :math:`\rho` = ``l1_ratio``. ``alpha * elastic_net(w, l1_ratio=r)`` is
    exactly the penalty of ``sklearn.linear_model.ElasticNet(alpha, l1_ratio=r)``;
    ``l1_ratio=1`` gives :func:`l1` and ``l1_ratio=0`` gives :func:`l2`. (Zou &
    Hastie's :math:`\lambda_1 \|w\|_1 + \lambda_2 \|w\|_2^2` corresponds to
    :math:`\lambda_1 = \alpha\rho`, :math:`\lambda_2 = \alpha(1-\rho)/2`.)

    Args:
      params: pytree of arrays.
      l1_ratio: :math:`\rho \in [0, 1]`, the weight of the L1 part.
      mask: optional bool pytree (or callable) selecting leaves.

    Returns:
      A float32 (or wider) scalar.

    Raises:
      ValueError: ``l1_ratio`` outside ``[0, 1]``; a mask with another structure.
      TypeError: ``l1_ratio`` not a number.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.elastic_net(jnp.array([1.0, -2.0]), l1_ratio=0.5)
      Array(2.75, dtype=float32)

    References:
      Zou, Hastie. "Regularization and variable selection via the elastic net."
      JRSS B 67(2), 2005. https://doi.org/10.1111/j.1467-9868.2005.00503.x
    """
    rho = _check_l1_ratio(l1_ratio)
    return _accumulate(
        [
            rho * jnp.sum(_abs(w)) + 0.5 * (1.0 - rho) * _sum_squares(w)
            for _, w in _selected(params, mask)
        ]
    )


def group_lasso(params: PyTree, *, axis=0, mask=None) -> jax.Array:
    r"""Group-lasso penalty of Yuan & Lin (2006), groups spanning ``axis``.

    Each leaf is cut into groups :math:`w_g`: a group holds the entries that share
    all indices *outside* ``axis`` (the norm runs over ``axis``, as for
    :func:`jaxreg.max_norm`). With :math:`p_g` the group size,

    .. math::

       \Omega(w) = \sum_g \sqrt{p_g}\, \|w_g\|_2 .

    For a Dense kernel ``(in, out)`` with ``axis=0`` a group is one output unit's
    incoming weights (the penalty prunes units); ``axis=1`` groups each input
    feature's outgoing weights (feature selection); for a conv kernel
    ``(h, w, in, out)`` ``axis=(0, 1, 2)`` groups whole filters. The gradient at an
    all-zero group is 0 (a subgradient), never NaN.

    Args:
      params: pytree of arrays.
      axis: int or tuple of ints, the axes each group spans (applied to every
        selected leaf; each leaf must have them).
      mask: optional bool pytree (or callable) selecting leaves.

    Returns:
      A float32 (or wider) scalar.

    Raises:
      ValueError: ``axis`` out of range for a selected leaf (the message names the
        leaf); a mask with another structure.
      TypeError: ``axis`` not an int or tuple of ints.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> w = jnp.array([[3.0, 0.0], [4.0, 0.0]])  # unit 0 has norm 5, unit 1 is 0
      >>> jaxreg.group_lasso(w, axis=0)  # sqrt(2) * 5
      Array(7.071068, dtype=float32)

    References:
      Yuan, Lin. "Model selection and estimation in regression with grouped
      variables." JRSS B 68(1), 2006. https://doi.org/10.1111/j.1467-9868.2005.00532.x
    """
    terms = []
    for path, w in _selected(params, mask):
        axes = _leaf_axes(axis, w, path)
        size = math.prod(w.shape[a] for a in axes)
        terms.append(math.sqrt(size) * jnp.sum(safe_norm(w, axis=axes)))
    return _accumulate(terms)


def _check_mode(mode) -> str:
    if mode not in ("rows", "columns"):
        raise ValueError(f'`mode` must be "rows" or "columns"; got mode={mode!r}.')
    return mode


def orthogonal(params: PyTree, *, mode: str = "rows", mask=None) -> jax.Array:
    r"""Orthogonality penalty on 2-D kernels, equal to Keras' ``OrthogonalRegularizer``.

    For a matrix :math:`W` with rows (``mode="rows"``) or columns
    (``mode="columns"``) :math:`v_1, \dots, v_n`, each normalised to unit length
    (a zero vector stays zero),

    .. math::

       \Omega(W) = \frac{1}{n(n-1)/2} \sum_{i<j} |\hat v_i^\top \hat v_j| ,

    the mean absolute cosine similarity over distinct pairs; summed over the
    selected leaves. ``factor * orthogonal(W, mode=m)`` equals
    ``keras.regularizers.OrthogonalRegularizer(factor, mode=m)(W)``. For a Dense
    kernel ``(in, out)``, ``mode="rows"`` pushes the ``in`` feature vectors apart
    and ``mode="columns"`` the ``out`` units' weight vectors. A matrix with a
    single row (column) has no pairs and contributes 0 (Keras returns NaN).

    Args:
      params: pytree of arrays; every selected leaf must be 2-D (use ``mask``, e.g.
        :func:`mask_by_ndim`, to skip the others, or reshape conv kernels first).
      mode: ``"rows"`` or ``"columns"``.
      mask: optional bool pytree (or callable) selecting leaves.

    Returns:
      A float32 (or wider) scalar in ``[0, 1]`` per leaf.

    Raises:
      ValueError: unknown ``mode``; a selected leaf that is not 2-D; a mask with
        another structure.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.orthogonal(jnp.eye(3))
      Array(0., dtype=float32)
      >>> jaxreg.orthogonal(jnp.array([[1.0, 0.0], [1.0, 1.0]]))  # cos 45 degrees
      Array(0.70710677, dtype=float32)

    References:
      Keras ``OrthogonalRegularizer``,
      https://keras.io/api/layers/regularizers/#orthogonalregularizer-class ;
      Brock, Lim, Ritchie, Weston. "Neural Photo Editing with Introspective
      Adversarial Networks." ICLR 2017. https://arxiv.org/abs/1609.07093
    """
    _check_mode(mode)
    terms = []
    for path, w in _selected(params, mask):
        if w.ndim != 2:
            raise ValueError(
                f"`orthogonal` needs 2-D kernels; leaf {path or '<root>'!r} has shape "
                f"{w.shape}. Exclude it with `mask=jaxreg.mask_by_ndim(params)` (or a "
                "path mask), or reshape conv kernels to 2-D first."
            )
        v = _f32(w) if mode == "rows" else _f32(w).T
        n = v.shape[0]
        if n < 2:
            terms.append(jnp.zeros((), v.dtype))
            continue
        norms = safe_norm(v, axis=1, keepdims=True)
        unit = v / jnp.where(norms > 0, norms, 1.0)
        gram = unit @ unit.T
        off = jnp.abs(gram) * (1.0 - jnp.eye(n, dtype=gram.dtype))
        terms.append(0.5 * jnp.sum(off) / (n * (n - 1) / 2.0))
    return _accumulate(terms)
