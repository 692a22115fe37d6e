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

Leaves that are not floating-point arrays (integer counters, boolean flags, the
activation function stored in an Equinox module, ...) are never penalised, whatever
the mask says. Sums are accumulated in at least float32, and the norms of
:func:`group_lasso` and :func:`orthogonal` are computed with scaling, so weights
around ``1e30`` or ``1e-30`` give finite, accurate values (and gradients) in
float32 and bfloat16.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import (
    check_choice,
    check_int,
    check_layer_axes,
    check_unit_interval,
)
from jaxreg._numerics import abs_zero_grad, norm, norm_parts, promote_f32, safe_div
from jaxreg._trees import (
    is_array,
    map_stacked,
    map_with_path,
    on_leaf,
    per_layer,
    resolve_stacked,
    selected_float_leaves,
    selected_stacked_leaves,
)

__all__ = [
    "elastic_net",
    "group_lasso",
    "l1",
    "l2",
    "layer_axes",
    "mask_by_ndim",
    "mask_by_path",
    "orthogonal",
]

PyTree = Any


# ---------------------------------------------------------------------------
# Masks.
# ---------------------------------------------------------------------------


def mask_by_ndim(params: PyTree, min_ndim: int = 2, *, stacked_axes=None) -> PyTree:
    """Mask selecting the array leaves with at least ``min_ndim`` dimensions.

    With the default ``min_ndim=2`` this selects Dense and convolution kernels and
    embeddings, and leaves biases and normalization scales/offsets (1-D) alone: the
    usual target of weight decay, L1 and max-norm.

    In a model whose layers are stacked on leading axes (``nn.scan``,
    ``nnx.vmap``, ``eqx.filter_vmap``) a stacked bias is 2-D; ``stacked_axes``
    says how many leading axes are layer axes, and the rank is counted without
    them, so the mask equals the one of the unstacked model.

    Args:
      params: any parameter pytree (Flax linen dict, ``flax.nnx.State``, Equinox
        module, plain dicts/lists, ...).
      min_ndim: minimum rank of a selected leaf (a non-negative int).
      stacked_axes: leading layer axes: None or an int (every leaf), layer-axis
        names read from Flax partition metadata (e.g. ``"layers"``), a pytree of
        ints (one per leaf or subtree) or a callable ``params -> pytree``.

    Returns:
      A pytree of Python bools with the structure of ``params``; non-array leaves
      are False.

    Raises:
      TypeError: ``min_ndim`` is not an int; a bad ``stacked_axes``.
      ValueError: ``min_ndim`` is negative; ``stacked_axes`` negative, larger
        than a leaf's rank, or a pytree of another structure.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
      >>> jaxreg.mask_by_ndim(params)
      {'dense': {'bias': False, 'kernel': True}}
      >>> stacked = {"dense": {"kernel": jnp.ones((4, 3, 2)), "bias": jnp.ones((4, 2))}}
      >>> jaxreg.mask_by_ndim(stacked, stacked_axes=1)  # 4 layers on axis 0
      {'dense': {'bias': False, 'kernel': True}}
    """
    min_ndim = check_int(min_ndim, "min_ndim", minimum=0)
    return map_stacked(
        lambda _, leaf, k: is_array(leaf) and np.ndim(leaf) - k >= min_ndim,
        params,
        stacked_axes,
    )


def layer_axes(params: PyTree, stacked_axes="layers") -> PyTree:
    r"""The number of leading layer axes of every leaf, as a pytree of ints.

    Resolves any form of ``stacked_axes`` (see :func:`mask_by_ndim`) against
    ``params`` once. This is how to keep Flax partition metadata when the
    parameters that reach optax are plain arrays: ``nnx.Optimizer`` hands
    ``nnx.as_pure`` states (no Variables, no metadata) to the transforms, so
    compute the counts from the model's Variables and pass them on::

        counts = jaxreg.layer_axes(nnx.state(model, nnx.Param), "layers")
        tx = jaxreg.max_norm_constraint(3.0, stacked_axes=counts, mask=...)

    Args:
      params: any parameter pytree; with axis names, one whose leaves carry Flax
        partition metadata (``nn.Partitioned`` boxes, ``nnx.Variable``\ s).
      stacked_axes: layer-axis names (default ``"layers"``), an int, a pytree
        of ints or a callable, as for :func:`mask_by_ndim`.

    Returns:
      A pytree of Python ints with the structure of ``params`` (boxes and
      Variables kept; a mask or ``stacked_axes`` argument accepts it for the
      unboxed parameters too).

    Raises:
      TypeError, ValueError: a bad ``stacked_axes`` (see :func:`mask_by_ndim`).

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.layer_axes({"w": jnp.ones((4, 3, 2)), "b": jnp.ones(2)},
      ...                   {"w": 1, "b": 0})
      {'b': 0, 'w': 1}

    References:
      Flax, "Lifted transformations: scan" (``nn.scan``'s ``metadata_params``
      and ``nn.PARTITION_NAME``), https://flax.readthedocs.io; the problem it
      solves for optimizers of stacked layers is described in levanter issue
      #405 (https://github.com/stanford-crfm/levanter/issues/405).
    """
    return resolve_stacked(stacked_axes, params)


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
        if not is_array(leaf):
            return False
        if inc is not None and inc.search(path) is None:
            return False
        return not (exc is not None and exc.search(path) is not None)

    return map_with_path(select, params)


# ---------------------------------------------------------------------------
# Penalties.
# ---------------------------------------------------------------------------


def _total(terms) -> jax.Array:
    """The sum of scalar terms, float32 zero for none."""
    terms = list(terms)
    return sum(terms[1:], terms[0]) if terms else jnp.zeros((), jnp.float32)


def _sum_squares(w: jax.Array) -> jax.Array:
    w = promote_f32(w)
    return jnp.sum(w * w)


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
      :math:`\sum_i |w_i|` over the selected leaves, a float32 (or wider) scalar.

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
    return _total(
        jnp.sum(abs_zero_grad(w)) for _, w in selected_float_leaves(params, mask)
    )


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
    return _total(0.5 * _sum_squares(w) for _, w in selected_float_leaves(params, mask))


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
    rho = check_unit_interval(l1_ratio, "l1_ratio")
    return _total(
        rho * jnp.sum(abs_zero_grad(w)) + 0.5 * (1.0 - rho) * _sum_squares(w)
        for _, w in selected_float_leaves(params, mask)
    )


def group_lasso(params: PyTree, *, axis=0, mask=None, stacked_axes=None) -> jax.Array:
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
      stacked_axes: leading layer axes of stacked layers (as for
        :func:`mask_by_ndim`); ``axis`` and the group size count on the
        per-layer shape, so a stack gives the sum of its layers' penalties.

    Returns:
      A float32 (or wider) scalar.

    Raises:
      ValueError: ``axis`` out of range for a selected leaf (the message names the
        leaf); a mask with another structure; a bad ``stacked_axes``.
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
    for path, w, k in selected_stacked_leaves(params, mask, stacked_axes):
        axes = on_leaf(lambda w, k: check_layer_axes(axis, w.ndim, k), path, w, k)
        size = math.prod(w.shape[a] for a in axes)
        terms.append(math.sqrt(size) * jnp.sum(norm(w, axis=axes)))
    return _total(terms)


def _orthogonal_term(w: jax.Array, mode: str) -> jax.Array:
    """The mean absolute cosine similarity of one 2-D matrix's rows/columns."""
    v = promote_f32(w) if mode == "rows" else promote_f32(w).T
    n = v.shape[0]
    if n < 2:
        return jnp.zeros((), v.dtype)
    # Unit vectors without forming the (overflow-prone) squared norms.
    scale, unit_norm = norm_parts(v, axis=1, keepdims=True)
    unit = safe_div(v / scale, unit_norm)
    gram = unit @ unit.T
    off = jnp.abs(gram) * (1.0 - jnp.eye(n, dtype=gram.dtype))
    return 0.5 * jnp.sum(off) / (n * (n - 1) / 2.0)


def orthogonal(
    params: PyTree, *, mode: str = "rows", mask=None, stacked_axes=None
) -> jax.Array:
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
      stacked_axes: leading layer axes of stacked layers (as for
        :func:`mask_by_ndim`): each layer's matrix is penalised on its own and
        the terms are summed, as for the unstacked model.

    Returns:
      A float32 (or wider) scalar in ``[0, 1]`` per leaf (per layer).

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
    check_choice(mode, "mode", ("rows", "columns"))
    terms = []
    for path, w, k in selected_stacked_leaves(params, mask, stacked_axes):
        if w.ndim - k != 2:
            layers = f" after its {k} layer axes" if k else ""
            raise ValueError(
                f"`orthogonal` needs 2-D kernels; leaf {path or '<root>'!r} has shape "
                f"{w.shape}{layers}. Exclude it with `mask=jaxreg.mask_by_ndim(params)` "
                "(or a path mask), or reshape conv kernels to 2-D first."
            )
        term = per_layer(functools.partial(_orthogonal_term, mode=mode), k)
        terms.append(jnp.sum(term(w)))
    return _total(terms)
