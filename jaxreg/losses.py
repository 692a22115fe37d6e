"""Loss terms that regularize: label smoothing for integer labels and R-Drop.

* :func:`smoothed_cross_entropy`: cross-entropy against label-smoothed targets,
  computed from integer labels without building the ``(..., num_classes)``
  one-hot or smoothed-target array (for a large vocabulary that array is as big
  as the logits; ``optax.smooth_labels`` needs it).
* :func:`rdrop_loss`: the R-Drop consistency term, the symmetric KL divergence
  between the predictive distributions of two dropout passes.

Both take ``where=`` to leave out examples (padding tokens) and
``reduction=`` (``"none"``, ``"sum"`` or ``"mean"`` over the included examples),
compute in at least float32 and return the logits' dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxreg._checks import (
    check_class_labels,
    check_float_array,
    check_same_shape,
    check_unit_interval,
    compute_dtype,
)

__all__ = ["rdrop_loss", "smoothed_cross_entropy"]

_REDUCTIONS = ("none", "sum", "mean")


def _check_logits(logits, name: str) -> jax.Array:
    logits = check_float_array(logits, name)
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"`{name}` must have a non-empty class axis (the last one); got shape "
            f"{logits.shape}."
        )
    return logits


def _check_reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {_REDUCTIONS}; got reduction={reduction!r}."
        )
    return reduction


def _as_mask(where, shape, name: str = "where") -> jax.Array:
    """``where`` as a bool array of ``shape`` (it must broadcast to it)."""
    if not (hasattr(where, "dtype") and hasattr(where, "shape")):
        raise TypeError(
            f"`{name}` must be a boolean array; got {type(where).__name__} {where!r}."
        )
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"`{name}` must be a boolean array (True = include); got dtype "
            f"{where.dtype}. Use e.g. `{name}=labels != pad_id`."
        )
    try:
        return jnp.broadcast_to(where, shape)
    except ValueError as err:
        raise ValueError(
            f"`{name}` of shape {tuple(where.shape)} does not broadcast to {shape}."
        ) from err


def _split_where(where, logits: jax.Array):
    """``(example_mask, class_mask)``, either None, from optax's ``where`` rule.

    A mask with as many axes as the logits selects classes (entries of the
    logits); any other mask selects examples and broadcasts over the classes.
    """
    if where is None:
        return None, None
    if getattr(where, "ndim", None) == logits.ndim:
        return None, _as_mask(where, logits.shape)
    return _as_mask(where, logits.shape[:-1]), None


def _reduce(loss: jax.Array, example_mask, reduction: str, dtype) -> jax.Array:
    if reduction == "sum":
        loss = jnp.sum(loss)
    elif reduction == "mean":
        count = loss.size if example_mask is None else jnp.sum(example_mask)
        loss = jnp.sum(loss) / jnp.maximum(count, 1)
    return loss.astype(dtype)


@functools.partial(jax.jit, static_argnames="reduction")
def _smoothed_core(logits, labels, alpha, example_mask, class_mask, reduction):
    """The loss of :func:`smoothed_cross_entropy` from checked arguments."""
    num_classes = logits.shape[-1]
    ct = compute_dtype(logits)
    z = logits.astype(ct)
    if example_mask is not None:  # left-out rows: finite values, zero gradients
        z = jnp.where(example_mask[..., None], z, 0.0)
    if class_mask is not None:
        z = jnp.where(class_mask, z, 0.0)
        count = jnp.sum(class_mask, axis=-1)
    else:
        count = num_classes
    # Shift by the (included) maximum, as log_softmax does, so that the
    # logsumexp and the logit terms cancel without large magnitudes.
    peak = jnp.max(z, axis=-1, keepdims=True, where=class_mask, initial=-jnp.inf)
    s = z - jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    lse = jnp.log(jnp.sum(jnp.exp(s), axis=-1, where=class_mask))
    # The label's shifted logit, gathered (no one-hot). Negative labels are sent
    # out of range too: "fill" then gives NaN instead of wrapping around.
    index = jnp.where(labels < 0, num_classes, labels)[..., None]
    s_y = jnp.take_along_axis(s, index, axis=-1, mode="fill", fill_value=jnp.nan)
    s_y = s_y[..., 0]
    total = jnp.sum(s, axis=-1, where=class_mask)
    a = jnp.asarray(alpha, ct)
    if class_mask is None:
        loss = lse - (1 - a) * s_y - a * total / count
    else:
        included = jnp.take_along_axis(
            class_mask, index, -1, mode="fill", fill_value=False
        )
        on_label = (1 - a) * included[..., 0]
        safe_count = jnp.maximum(count, 1)
        loss = (on_label + a) * lse - on_label * s_y - a * total / safe_count
        loss = jnp.where(count > 0, loss, 0.0)
    if example_mask is not None:
        loss = jnp.where(example_mask, loss, 0.0)
    return _reduce(loss, example_mask, reduction, logits.dtype)


def smoothed_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    alpha,
    *,
    where: jax.typing.ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    r"""Softmax cross-entropy with label smoothing, from integer labels.

    With ``K`` classes the smoothed target puts ``1 - alpha + alpha / K`` on the
    label and ``alpha / K`` on every other class, and the loss is

    .. math::
        \ell = \operatorname{logsumexp}(z) - (1 - \alpha)\, z_y
               - \frac{\alpha}{K} \sum_k z_k,

    which needs the label's logit, the logsumexp and the mean logit only: no
    ``(..., K)`` target array is built. It equals
    ``optax.softmax_cross_entropy(logits, optax.smooth_labels(
    jax.nn.one_hot(labels, K), alpha))`` (and Keras'
    ``CategoricalCrossentropy(from_logits=True, label_smoothing=alpha)`` on
    one-hot labels) up to float32 rounding; ``alpha = 0`` is the plain
    cross-entropy (``optax.softmax_cross_entropy_with_integer_labels``).

    ``where`` follows optax's rule. A mask with the labels' shape (or any shape
    with fewer axes than the logits that broadcasts to the labels' shape)
    selects *examples*: a left-out example contributes 0 and gets a zero
    gradient, whatever its logits (NaN and inf included). A mask with the logits'
    number of axes selects *classes*: the softmax runs over the included classes
    only and the smoothing mass ``alpha`` is spread over them, as
    ``optax.softmax_cross_entropy(logits, optax.smooth_labels(one_hot, alpha,
    where=where), where=where)`` (a label outside the included classes gets no
    weight; a row with no class included gives 0).

    Args:
      logits: floating array ``(..., K)``.
      labels: integer class indices, shape ``logits.shape[:-1]``, in
        ``[0, K)``. Checked when concrete; under ``jit`` an out-of-range label
        cannot be checked and makes that example's loss NaN.
      alpha: the smoothing factor in ``[0, 1]`` (a traced value cannot be
        checked).
      where: optional boolean mask of examples or of classes, as above.
      reduction: ``"none"`` (per-example losses, shape ``labels.shape``),
        ``"sum"``, or ``"mean"`` (the sum divided by the number of included
        examples, at least 1).

    Returns:
      The loss in the logits' dtype (computed in at least float32).

    Raises:
      TypeError: non-float logits, non-integer labels, non-bool ``where``.
      ValueError: labels of the wrong shape or out of range, ``alpha`` outside
        ``[0, 1]`` or NaN, a ``where`` that does not broadcast, unknown
        ``reduction``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxreg
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
      >>> labels = jnp.array([0, 2])
      >>> jaxreg.losses.smoothed_cross_entropy(logits, labels, 0.1)
      Array([0.3913..., 1.0119...], dtype=float32)
      >>> optax.softmax_cross_entropy(
      ...     logits, optax.smooth_labels(jax.nn.one_hot(labels, 3), 0.1))
      Array([0.3913..., 1.0119...], dtype=float32)

      Padding tokens left out of a mean:

      >>> tokens = jnp.array([[3, 1, 0, 0]])          # 0 is the padding id
      >>> logits = jnp.zeros((1, 4, 5))
      >>> jaxreg.losses.smoothed_cross_entropy(
      ...     logits, tokens, 0.1, where=tokens != 0, reduction="mean")
      Array(1.609438, dtype=float32)

    References:
      Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. "Rethinking the Inception
      Architecture for Computer Vision." CVPR 2016, section 7.
      https://arxiv.org/abs/1512.00567

      Müller, Kornblith, Hinton. "When Does Label Smoothing Help?" NeurIPS 2019.
      https://arxiv.org/abs/1906.02629
    """
    logits = _check_logits(logits, "logits")
    num_classes = logits.shape[-1]
    labels = check_class_labels(labels, num_classes, logits.shape[:-1])
    alpha = check_unit_interval(alpha, "alpha")
    reduction = _check_reduction(reduction)
    example_mask, class_mask = _split_where(where, logits)

    return _smoothed_core(logits, labels, alpha, example_mask, class_mask, reduction)


@functools.partial(jax.jit, static_argnames="reduction")
def _rdrop_core(logits1, logits2, example_mask, reduction):
    """The loss of :func:`rdrop_loss` from checked arguments."""
    dtype = jnp.promote_types(logits1.dtype, logits2.dtype)
    ct = jnp.promote_types(dtype, jnp.float32)
    z1, z2 = logits1.astype(ct), logits2.astype(ct)
    if example_mask is not None:
        z1 = jnp.where(example_mask[..., None], z1, 0.0)
        z2 = jnp.where(example_mask[..., None], z2, 0.0)
    lp1 = jax.nn.log_softmax(z1, axis=-1)
    lp2 = jax.nn.log_softmax(z2, axis=-1)
    loss = 0.5 * jnp.sum((jnp.exp(lp1) - jnp.exp(lp2)) * (lp1 - lp2), axis=-1)
    if example_mask is not None:
        loss = jnp.where(example_mask, loss, 0.0)
    return _reduce(loss, example_mask, reduction, dtype)


def rdrop_loss(
    logits1: jax.typing.ArrayLike,
    logits2: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    r"""R-Drop: the symmetric KL divergence between two dropout passes.

    Liang et al. (2021) run every example through the network twice with
    independent dropout masks, giving predictive distributions
    :math:`P_1 = \operatorname{softmax}(z_1)` and
    :math:`P_2 = \operatorname{softmax}(z_2)`, and add to the two
    cross-entropies the consistency term (their eq. 2)

    .. math::
        \mathcal{L}_{KL} = \tfrac12 \big(D_{KL}(P_1 \,\|\, P_2)
                           + D_{KL}(P_2 \,\|\, P_1)\big)
                         = \tfrac12 \sum_k (P_{1k} - P_{2k})
                           (\log P_{1k} - \log P_{2k}),

    weighted by a coefficient :math:`\alpha` (eq. 3:
    :math:`\mathcal{L} = \mathcal{L}_{NLL}(P_1) + \mathcal{L}_{NLL}(P_2)
    + \alpha \mathcal{L}_{KL}`). This function returns :math:`\mathcal{L}_{KL}`
    per example; it is exactly symmetric in its two arguments, exactly 0 for
    equal logits, and differentiable in both (the paper back-propagates through
    both passes).

    A training step (two passes, two keys, one loss)::

        def loss_fn(params, key, x, y):
            k1, k2 = jax.random.split(key)
            z1 = model(params, x, key=k1)      # dropout inside the model
            z2 = model(params, x, key=k2)
            nll = (optax.softmax_cross_entropy_with_integer_labels(z1, y)
                   + optax.softmax_cross_entropy_with_integer_labels(z2, y))
            return jnp.mean(nll + alpha * jaxreg.losses.rdrop_loss(z1, z2))

    (``examples/rdrop.py`` trains a model this way.)

    Args:
      logits1: floating array ``(..., K)``, the first pass.
      logits2: floating array of the same shape, the second pass.
      where: optional boolean mask of examples, broadcastable to
        ``logits1.shape[:-1]``: left-out examples (padding tokens) contribute 0
        and get zero gradients, whatever their logits.
      reduction: ``"none"`` (per example, shape ``logits1.shape[:-1]``),
        ``"sum"`` (the total, as in the authors' code), or ``"mean"`` (over the
        included examples).

    Returns:
      The loss in the logits' (promoted) dtype, computed in at least float32.

    Raises:
      TypeError: non-float logits, non-bool ``where``.
      ValueError: shape mismatch, scalar logits, a ``where`` that does not
        broadcast, unknown ``reduction``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> z1 = jnp.array([[1.0, 0.0], [0.0, 0.0]])
      >>> z2 = jnp.array([[0.0, 1.0], [0.0, 0.0]])
      >>> jaxreg.losses.rdrop_loss(z1, z2)
      Array([0.462117, 0.      ], dtype=float32)

    References:
      Liang, Wu, Li, Wang, Meng, Qin, Chen, Zhang, Liu. "R-Drop: Regularized
      Dropout for Neural Networks." NeurIPS 2021.
      https://arxiv.org/abs/2106.14448
    """
    logits1 = _check_logits(logits1, "logits1")
    logits2 = _check_logits(logits2, "logits2")
    check_same_shape(logits1, logits2, "logits1", "logits2")
    reduction = _check_reduction(reduction)
    example_mask = None
    if where is not None:
        example_mask = _as_mask(where, logits1.shape[:-1])
    return _rdrop_core(logits1, logits2, example_mask, reduction)
