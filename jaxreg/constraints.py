r"""Weight constraints as pure projections.

Each function maps one weight array to the nearest point of a constraint set (in
Euclidean distance), with Keras' meaning of ``axis``: the norm is computed **over**
``axis``, so each slice that keeps the other indices fixed is constrained on its
own. For a Dense kernel ``(in, out)`` the default ``axis=0`` constrains each output
unit's incoming weight vector; for a conv kernel ``(h, w, in, out)`` use
``axis=(0, 1, 2)`` to constrain each filter. ``axis`` may be an int or a tuple.

Unlike Keras, which divides by ``norm + 1e-7``, weights that already satisfy the
constraint come back unchanged, bit for bit, and projecting twice equals
projecting once, bit for bit. To make that hold in floating point, a norm within
a relative tolerance :math:`\tau` of a bound counts as on the bound, with
:math:`\tau = \max(\epsilon_{\text{dtype}}, 8\,\epsilon_{\text{float32}})` (about
:math:`10^{-6}` for float32, :math:`2^{-7}` for bfloat16): the rounding noise of the
rescaled weights and of the norm itself. All-zero slices give zeros, with finite
values and gradients. Norms are computed in float32 (or wider); the output dtype
equals the input dtype.

To apply a constraint after every optimizer step, use
:func:`jaxreg.max_norm_constraint` and friends (built on :func:`jaxreg.project`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxreg._checks import check_float_array, check_nonnegative, check_positive
from jaxreg.penalties import normalize_axes, safe_norm

__all__ = ["max_norm", "min_max_norm", "non_neg", "unit_norm"]


def tolerance(dtype) -> float:
    """Relative tolerance under which a norm counts as on its bound."""
    return max(float(jnp.finfo(dtype).eps), 8.0 * float(jnp.finfo(jnp.float32).eps))


def _rescale(w: jax.Array, scale: jax.Array) -> jax.Array:
    return (w.astype(scale.dtype) * scale).astype(w.dtype)


def _safe_div(num, den):
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def max_norm(w: jax.typing.ArrayLike, max_value, *, axis=0) -> jax.Array:
    r"""Max-norm projection: rescale every slice whose norm exceeds ``max_value``.

    .. math::

       w_s \leftarrow w_s \cdot \min\!\left(1, \frac{c}{\|w_s\|_2}\right),

    for each slice :math:`w_s` (the entries sharing all indices outside ``axis``),
    with :math:`c` = ``max_value``. This is the Euclidean projection onto
    :math:`\{w : \|w_s\|_2 \le c\ \forall s\}`.

    Args:
      w: floating array.
      max_value: the largest allowed norm :math:`c > 0`; a Python float, or a
        traced scalar (not validated).
      axis: int or tuple of ints, the axes the norm runs over (Keras semantics).

    Returns:
      An array with the shape and dtype of ``w``.

    Raises:
      ValueError: ``max_value <= 0`` or NaN; ``axis`` out of range or repeated.
      TypeError: non-float ``w``; ``axis`` not an int or tuple of ints.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> w = jnp.array([[3.0, 0.3], [4.0, 0.4]])  # column norms 5 and 0.5
      >>> jaxreg.max_norm(w, 1.0)
      Array([[0.6, 0.3],
             [0.8, 0.4]], dtype=float32)

    References:
      Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov. "Dropout: A Simple
      Way to Prevent Neural Networks from Overfitting." JMLR 15, 2014 (section
      5.1, max-norm regularization). https://jmlr.org/papers/v15/srivastava14a.html
    """
    w = check_float_array(w, "w")
    max_value = check_positive(max_value, "max_value")
    axes = normalize_axes(axis, w.ndim)
    norms = safe_norm(w, axis=axes, keepdims=True)
    tol = tolerance(w.dtype)
    scale = jnp.where(norms > max_value * (1.0 + tol), _safe_div(max_value, norms), 1.0)
    return _rescale(w, scale)


def unit_norm(w: jax.typing.ArrayLike, *, axis=0) -> jax.Array:
    r"""Unit-norm projection: :math:`w_s \leftarrow w_s / \|w_s\|_2` for each slice.

    An all-zero slice has no direction and stays zero (no NaN in values or
    gradients).

    Args:
      w: floating array.
      axis: int or tuple of ints, the axes the norm runs over (Keras semantics).

    Returns:
      An array with the shape and dtype of ``w``.

    Raises:
      ValueError: ``axis`` out of range or repeated.
      TypeError: non-float ``w``; bad ``axis`` type.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.unit_norm(jnp.array([[3.0, 0.0], [4.0, 0.0]]))
      Array([[0.6, 0. ],
             [0.8, 0. ]], dtype=float32)

    References:
      Keras ``UnitNorm`` constraint, https://keras.io/api/layers/constraints/
    """
    w = check_float_array(w, "w")
    axes = normalize_axes(axis, w.ndim)
    norms = safe_norm(w, axis=axes, keepdims=True)
    # A slice whose norm is already 1 (within the tolerance) is returned unchanged.
    tol = tolerance(w.dtype)
    scale = jnp.where(jnp.abs(norms - 1.0) <= tol, 1.0, _safe_div(1.0, norms))
    return _rescale(w, scale)


def min_max_norm(
    w: jax.typing.ArrayLike, min_value, max_value, *, rate=1.0, axis=0
) -> jax.Array:
    r"""Keep each slice's norm within ``[min_value, max_value]``.

    .. math::

       w_s \leftarrow w_s \cdot \frac{r\,\operatorname{clip}(\|w_s\|, a, b)
       + (1 - r)\,\|w_s\|}{\|w_s\|},

    with :math:`a, b` = ``min_value``, ``max_value`` and :math:`r` = ``rate``. With
    ``rate=1`` this is the projection onto the norm shell; ``rate < 1`` moves the
    norm only part of the way at each call (Keras' ``MinMaxNorm``), and is then not
    idempotent. An all-zero slice stays zero (it has no direction to rescale).

    Args:
      w: floating array.
      min_value: lower norm bound, ``>= 0``.
      max_value: upper norm bound, ``>= min_value``.
      rate: fraction in ``[0, 1]`` of the way to move toward the interval.
      axis: int or tuple of ints, the axes the norm runs over (Keras semantics).

    Returns:
      An array with the shape and dtype of ``w``.

    Raises:
      ValueError: negative ``min_value``; ``min_value > max_value``; ``rate``
        outside ``[0, 1]``; ``axis`` out of range.
      TypeError: non-float ``w``; bad ``axis`` type.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> w = jnp.array([[0.3, 30.0], [0.4, 40.0]])  # column norms 0.5 and 50
      >>> v = jaxreg.min_max_norm(w, 1.0, 2.0)
      >>> bool(jnp.allclose(v, jnp.array([[0.6, 1.2], [0.8, 1.6]])))
      True

    References:
      Keras ``MinMaxNorm`` constraint, https://keras.io/api/layers/constraints/
    """
    w = check_float_array(w, "w")
    lo = check_nonnegative(min_value, "min_value")
    hi = check_nonnegative(max_value, "max_value")
    if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
        raise ValueError(
            f"`min_value` must be <= `max_value`; got min_value={lo!r}, "
            f"max_value={hi!r}."
        )
    r = check_nonnegative(rate, "rate")
    if isinstance(r, float) and (math.isnan(r) or r > 1.0):
        raise ValueError(f"`rate` must lie in [0, 1]; got rate={r!r}.")
    axes = normalize_axes(axis, w.ndim)
    norms = safe_norm(w, axis=axes, keepdims=True)
    desired = r * jnp.clip(norms, lo, hi) + (1.0 - r) * norms
    tol = tolerance(w.dtype)
    inside = (norms >= lo * (1.0 - tol)) & (norms <= hi * (1.0 + tol))
    scale = jnp.where(inside, 1.0, _safe_div(desired, norms))
    return _rescale(w, scale)


def non_neg(w: jax.typing.ArrayLike) -> jax.Array:
    r"""Non-negativity projection :math:`w \leftarrow \max(w, 0)` (elementwise).

    Args:
      w: floating array.

    Returns:
      An array with the shape and dtype of ``w``.

    Raises:
      TypeError: non-float ``w``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.non_neg(jnp.array([-1.0, 0.5]))
      Array([0. , 0.5], dtype=float32)
    """
    w = check_float_array(w, "w")
    return jnp.maximum(w, jnp.zeros((), w.dtype))
