"""Numerical building blocks shared by the pure modules.

* :func:`safe_div`, :func:`safe_inverse`, :func:`safe_sqrt`: the guarded forms of
  ``a / b``, ``1 / b`` and ``sqrt(v)`` that return 0 where the denominator (the
  radicand) is not positive, with finite gradients there (the "double where":
  the unselected branch never sees the bad value, so its derivative is not NaN).
* :func:`norm_parts` and :func:`norm`: Euclidean norms that neither overflow nor
  underflow. Each slice is divided by a power of two near its largest magnitude
  before squaring (exact: only the exponent changes), so weights around ``1e30``
  or ``1e-30`` have finite, accurate norms in float32 and bfloat16, and in the
  normal range the result is bit-identical to the plain ``sqrt(sum(x**2))``.
* :func:`clip_traced`: the documented treatment of traced hyperparameters that
  cannot be validated in Python (clip to the domain, as ``dropout`` does for a
  traced rate).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxreg._checks import float32_or_wider

__all__ = [
    "abs_zero_grad",
    "clip_traced",
    "norm",
    "norm_parts",
    "promote_f32",
    "safe_div",
    "safe_inverse",
    "safe_sqrt",
]


def promote_f32(x: jax.Array) -> jax.Array:
    """``x`` in its compute dtype: its dtype promoted to (at least) float32."""
    return x.astype(float32_or_wider(x.dtype))


def safe_div(num, den):
    """``num / den`` where ``den > 0``, 0 where ``den <= 0``, NaN where ``den`` is.

    No inf, and no NaN that was not in ``den``, in values or gradients; Python
    floats stay Python floats.
    """
    if isinstance(num, float) and isinstance(den, float):
        return num / den if den > 0 or math.isnan(den) else 0.0
    positive = den > 0
    # den * 0 is 0 for a finite den and NaN for a NaN one (a NaN norm stays NaN).
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), den * 0)


def safe_inverse(den):
    """``1 / den`` where ``den > 0``, else 0 (NaN stays NaN), see :func:`safe_div`."""
    return safe_div(1.0, den)


def safe_sqrt(v: jax.Array) -> jax.Array:
    """``sqrt(v)`` where ``v > 0``, 0 where ``v <= 0`` (NaN stays NaN), with
    gradient 0 (not inf) at 0."""
    positive = v > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), v * 0)


def abs_zero_grad(x: jax.Array) -> jax.Array:
    """``|x|`` in the compute dtype as ``sign(x) * x``: gradient 0 at 0 (not 1)."""
    x = promote_f32(x)
    return jnp.sign(x) * x


def _power_of_two_scale(x: jax.Array, axis) -> jax.Array:
    """Per slice (dims kept), a power of two ``2**e``, ``max|x| / 2 < 2**e <= max|x|``.

    Dividing by it is exact (it only shifts exponents). ``e`` is clipped to the
    normal range of the dtype, so the scale is never 0 or inf: an all-zero or
    subnormal slice gets the smallest normal power, a non-finite one stays
    non-finite after the division.
    """
    peak = lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
    info = jnp.finfo(x.dtype)
    _, exponent = jnp.frexp(peak)
    exponent = jnp.clip(exponent - 1, info.minexp, info.maxexp - 1)
    return jnp.ldexp(jnp.ones_like(peak), exponent)


def norm_parts(x: jax.Array, axis=None, keepdims: bool = False):
    """``(scale, unit)`` with ``norm(x) == scale * unit`` over ``axis``.

    ``scale`` is a power of two near the slice's largest magnitude (no gradient
    flows through it) and ``unit = ||x / scale||`` lies in ``[1, 2 sqrt(n))``
    for a nonzero slice of ``n`` entries, the largest entry of ``x / scale``
    lying in ``[1, 2)`` (0 for a zero slice), so neither part
    over- or underflows even where ``scale * unit`` would. Computed in
    ``promote_f32(x)``'s dtype; ``unit`` has gradient 0 at an all-zero slice.
    """
    x = promote_f32(x)
    if isinstance(axis, list):
        axis = tuple(axis)
    scale = _power_of_two_scale(x, axis)
    y = x / scale
    unit = safe_sqrt(jnp.sum(y * y, axis=axis, keepdims=keepdims))
    return (scale if keepdims else jnp.squeeze(scale, axis=axis)), unit


def norm(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
    """Euclidean norm over ``axis``, in (at least) float32, without overflow.

    Equal to ``sqrt(sum(x**2))`` wherever that does not over- or underflow (bit
    for bit, see :func:`norm_parts`), finite for any finite ``x`` whose norm is
    representable, with gradient ``x / norm`` and 0 at an all-zero slice.
    """
    scale, unit = norm_parts(x, axis=axis, keepdims=keepdims)
    return scale * unit


def clip_traced(value, low=None, high=None):
    """Clip a traced hyperparameter to ``[low, high]``; concrete values pass.

    Concrete values are validated eagerly by :mod:`jaxreg._checks` and returned
    unchanged. A traced value cannot be checked in Python: it is clipped to its
    domain so that it acts as the nearest valid value (a NaN stays NaN).
    """
    if isinstance(value, (int, float)):
        return value
    return jnp.clip(value, low, high)
