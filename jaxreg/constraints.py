r"""Weight constraints as pure projections.

Each function maps one weight array to the nearest point of a constraint set (in
Euclidean distance), with Keras' meaning of ``axis``: the norm is computed **over**
``axis``, so each slice that keeps the other indices fixed is constrained on its
own. For a Dense kernel ``(in, out)`` the default ``axis=0`` constrains each output
unit's incoming weight vector; for a conv kernel ``(h, w, in, out)`` use
``axis=(0, 1, 2)`` to constrain each filter. ``axis`` may be an int or a tuple.

Norms are computed with scaling (each slice is divided by a power of two near its
largest magnitude before squaring, and rescaled through the same factor), so
weights around ``1e30`` or ``1e-30`` are projected exactly in float32 and bfloat16
where the plain ``sqrt(sum(w**2))`` of Keras and optax overflows to ``inf`` or
underflows to 0.

Unlike Keras, which divides by ``norm + 1e-7``, weights that already satisfy the
constraint come back unchanged, bit for bit, and projecting twice equals
projecting once, bit for bit. To make that hold in floating point, a norm within
a relative tolerance :math:`\tau` of a bound counts as on the bound, with
:math:`\tau = \max(\epsilon_{\text{dtype}}, 8\,\epsilon_{\text{float32}})` (about
:math:`10^{-6}` for float32, :math:`2^{-7}` for bfloat16): the rounding noise of the
rescaled weights and of the norm itself. All-zero slices give zeros, with finite
values and gradients. Norms are computed in float32 (or wider); the output dtype
equals the input dtype. Bounds given as Python numbers must be finite; traced bounds
(e.g. under :func:`optax.inject_hyperparams`) cannot be checked and are clipped to
their domain (a negative ``max_value`` acts as 0, a ``rate`` outside ``[0, 1]`` as
the nearest end point).

To apply a constraint after every optimizer step, use
:func:`jaxreg.max_norm_constraint` and friends (built on :func:`jaxreg.project`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg._checks import (
    check_float_array,
    check_int,
    check_layer_axes,
    check_norm_bounds,
    check_positive,
    check_stacked_count,
    check_unit_interval,
)
from jaxreg._numerics import clip_traced, norm, norm_parts, promote_f32, safe_div
from jaxreg._sampler import explicit_sharding
from jaxreg._trees import per_layer

__all__ = ["max_norm", "max_spectral_norm", "min_max_norm", "non_neg", "unit_norm"]


def tolerance(dtype) -> float:
    """Relative tolerance under which a norm counts as on its bound."""
    return max(float(jnp.finfo(dtype).eps), 8.0 * float(jnp.finfo(jnp.float32).eps))


def _axis_stacked_doc(fn):
    """Decorator: write the text of the ``axis`` and ``stacked_axes`` arguments,
    shared by the norm projections, where their docstring says ``{axis_stacked}``."""
    if fn.__doc__ is not None:  # None under python -OO
        fn.__doc__ = fn.__doc__.replace(
            "{axis_stacked}",
            "axis: int or tuple of ints, the axes the norm runs over (Keras "
            "semantics),\n"
            "        counted on the per-layer shape.\n"
            "      stacked_axes: the number of leading layer axes of a stacked ``w`` "
            "(an int\n"
            "        ``>= 0``): each layer is constrained as if unstacked.",
        )
    return fn


def _slice_norms(w: jax.Array, axis, stacked_axes):
    """``(scale, unit, norms)`` of every slice: ``norms = scale * unit`` (see
    :func:`jaxreg._numerics.norm_parts`; ``norms`` may overflow to inf, the
    parts never do)."""
    axes = check_layer_axes(axis, w.ndim, stacked_axes)
    scale, unit = norm_parts(w, axis=axes, keepdims=True)
    return scale, unit, scale * unit


def _rescaled(w: jax.Array, keep, scale, factor) -> jax.Array:
    """``w`` where ``keep``, else ``(w / scale) * factor``; rounded once to w.dtype.

    With ``factor = target / unit`` the slice gets norm ``target`` without ever
    forming ``w / norm`` (``w / scale`` is exact and below 2 in magnitude).
    """
    wc = promote_f32(w)
    return jnp.where(keep, wc, (wc / scale) * factor).astype(w.dtype)


@_axis_stacked_doc
def max_norm(
    w: jax.typing.ArrayLike, max_value, *, axis=0, stacked_axes=0
) -> jax.Array:
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
      {axis_stacked}

    Returns:
      An array with the shape and dtype of ``w``.

    Raises:
      ValueError: ``max_value <= 0`` or NaN; ``axis`` out of range or repeated;
        ``stacked_axes`` negative or above the rank.
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
    c = clip_traced(check_positive(max_value, "max_value"), 0.0)
    scale, unit, norms = _slice_norms(w, axis, stacked_axes)
    inside = norms <= c * (1.0 + tolerance(w.dtype))
    return _rescaled(w, inside, scale, safe_div(c, unit))


@_axis_stacked_doc
def unit_norm(w: jax.typing.ArrayLike, *, axis=0, stacked_axes=0) -> jax.Array:
    r"""Unit-norm projection: :math:`w_s \leftarrow w_s / \|w_s\|_2` for each slice.

    An all-zero slice has no direction and stays zero (no NaN in values or
    gradients).

    Args:
      w: floating array.
      {axis_stacked}

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
    scale, unit, norms = _slice_norms(w, axis, stacked_axes)
    # A slice whose norm is already 1 (within the tolerance) is returned unchanged.
    on_sphere = jnp.abs(norms - 1.0) <= tolerance(w.dtype)
    return _rescaled(w, on_sphere, scale, safe_div(1.0, unit))


@_axis_stacked_doc
def min_max_norm(
    w: jax.typing.ArrayLike, min_value, max_value, *, rate=1.0, axis=0, stacked_axes=0
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
      {axis_stacked}

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
    lo, hi = check_norm_bounds(min_value, max_value)
    lo, hi = clip_traced(lo, 0.0), clip_traced(hi, 0.0)
    r = clip_traced(check_unit_interval(rate, "rate"), 0.0, 1.0)
    scale, unit, norms = _slice_norms(w, axis, stacked_axes)
    tol = tolerance(w.dtype)
    inside = (norms >= lo * (1.0 - tol)) & (norms <= hi * (1.0 + tol))
    # w * (r * clip(norm, lo, hi) + (1 - r) * norm) / norm, with w = scale * (w /
    # scale) and norm = scale * unit: the factor on w / scale never overflows.
    factor = r * safe_div(jnp.clip(norms, lo, hi), unit) + (1.0 - r) * scale
    return _rescaled(w, inside, scale, factor)


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


def _unit(x: jax.Array, fallback: jax.Array) -> jax.Array:
    """``x / ||x||``, or ``fallback`` where ``x`` is zero (no direction).

    ``fallback`` is added to zeros laid out like ``x`` first: on Explicit mesh
    axes the select needs both cases in ``x``'s sharding, and a replicated
    vector plus a sharded one takes the sharded layout (values unchanged).
    """
    n = norm(x)
    return jnp.where(n > 0, safe_div(x, n), fallback + jnp.zeros_like(x))


def _matvec_shardings(m: jax.Array):
    """Output shardings of ``m @ u``, ``m.T @ v`` and ``v @ (m @ u)``.

    On Explicit mesh axes a product that contracts a split axis must be told
    its output layout: the vectors follow the matrix's rows and columns, the
    scalar is replicated. None (XLA decides) elsewhere.
    """
    sharding = explicit_sharding(m)
    if sharding is None:
        return None, None, None
    spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
    return tuple(
        NamedSharding(sharding.mesh, P(*entries))
        for entries in ((spec[0],), (spec[1],), ())
    )


def _spectral_step(w: jax.Array, max_value, u: jax.Array, *, n_iter: int):
    """One matrix's projection (no layer axes): ``(w_new, u_new)``."""
    m = promote_f32(w).reshape(-1, w.shape[-1])
    rows, cols, scalar = _matvec_shardings(m)
    u = promote_f32(u)
    v = jnp.zeros((m.shape[0],), m.dtype)
    for _ in range(n_iter):
        v = _unit(jnp.matmul(m, u, out_sharding=rows), v)
        u = _unit(jnp.matmul(m.T, v, out_sharding=cols), u)
    mu = jnp.matmul(m, u, out_sharding=rows)
    v = _unit(mu, v)
    sigma = jnp.matmul(v, mu, out_sharding=scalar)  # <= the largest singular value
    inside = sigma <= max_value * (1.0 + tolerance(w.dtype))
    factor = jnp.where(inside, 1.0, safe_div(max_value, sigma))
    out = jnp.where(inside, promote_f32(w), promote_f32(w) * factor)
    return out.astype(w.dtype), u


def max_spectral_norm(
    w: jax.typing.ArrayLike,
    max_value,
    u: jax.typing.ArrayLike,
    *,
    n_power_iterations: int = 1,
    stacked_axes: int = 0,
) -> tuple[jax.Array, jax.Array]:
    r"""Bound the spectral norm (largest singular value) of a weight matrix.

    The kernel is read as the matrix :math:`M` of shape ``(prod(others), out)``
    (a Dense kernel ``(in, out)`` as is, a conv kernel ``(h, w, in, out)`` as
    ``(h * w * in, out)``). Power iteration from ``u`` (Miyato et al. 2018),

    .. math::

       v \leftarrow \frac{M u}{\|M u\|}, \quad
       u \leftarrow \frac{M^\top v}{\|M^\top v\|}, \quad
       \hat\sigma = v^\top M u ,

    repeated ``n_power_iterations`` times, estimates the spectral norm from
    below; when :math:`\hat\sigma` exceeds :math:`c` = ``max_value`` the kernel
    is rescaled by :math:`c / \hat\sigma`. Kernels with :math:`\hat\sigma \le c`
    come back unchanged, bit for bit (then also :math:`\sigma \le c` is not
    guaranteed, only :math:`\hat\sigma \le c`: carry ``u`` over the training
    steps, as :func:`jaxreg.spectral_norm_constraint` does, and the estimate
    converges to :math:`\sigma` as the weights change slowly). Computed in
    float32 (or wider); the output dtype equals the input dtype.

    Args:
      w: floating kernel with at least 2 dimensions after ``stacked_axes``.
      max_value: the bound :math:`c > 0` (a Python float or a traced scalar).
      u: the power-iteration vector of shape ``w.shape[:stacked_axes] +
        (out,)`` (any non-zero start, e.g. a random normal vector).
      n_power_iterations: power-iteration steps per call, an int ``>= 1``.
      stacked_axes: the number of leading layer axes (one ``u`` and one bound
        per layer).

    Returns:
      ``(w_new, u_new)``: the kernel with the shape and dtype of ``w``, and the
      updated vector (float32 or wider) to pass to the next call.

    Raises:
      ValueError: ``max_value <= 0``; ``w`` with fewer than 2 dimensions per
        layer; ``u`` of another shape; ``n_power_iterations < 1``.
      TypeError: non-float ``w``; non-int ``n_power_iterations``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> w = jnp.diag(jnp.array([4.0, 1.0]))  # singular values 4 and 1
      >>> w_new, u = jaxreg.max_spectral_norm(w, 2.0, jnp.array([1.0, 0.0]))
      >>> w_new
      Array([[2. , 0. ],
             [0. , 0.5]], dtype=float32)

    References:
      Miyato, Kataoka, Koyama, Yoshida. "Spectral Normalization for Generative
      Adversarial Networks." ICLR 2018. https://arxiv.org/abs/1802.05957
    """
    w = check_float_array(w, "w")
    c = clip_traced(check_positive(max_value, "max_value"), 0.0)
    n_iter = check_int(n_power_iterations, "n_power_iterations", minimum=1)
    k = check_stacked_count(stacked_axes, w.ndim)
    if w.ndim - k < 2:
        raise ValueError(
            f"`max_spectral_norm` needs a matrix per layer (2 or more dimensions "
            f"after {k} layer axes); got `w` of shape {w.shape}."
        )
    u = jnp.asarray(u)
    want = w.shape[:k] + w.shape[-1:]
    if u.shape != want:
        raise ValueError(
            f"`u` must have shape {want} (the layer axes and the output axis of "
            f"`w` of shape {w.shape}); got {u.shape}."
        )

    return per_layer(functools.partial(_spectral_step, n_iter=n_iter), k, (0, None, 0))(
        w, c, u
    )
