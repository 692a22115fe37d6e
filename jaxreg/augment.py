"""Input-side regularizers: mixing, occlusion and shift augmentations.

Pure functions of a PRNG key and a batch, safe under ``jit`` and ``vmap``. All of them
act on a *batch*: axis 0 is the example axis. Spatial layouts:

* rank 2, ``(N, L)``: a batch of 1-D signals without channels (e.g. MNIST-1D);
* rank 3, ``(N, L, C)``: 1-D signals with channels last;
* rank 4, ``(N, H, W, C)``: images, NHWC.

:func:`mixup` and its spatial cousin :func:`cutmix` mix pairs of examples
(each example with a random partner from the same batch) and mix their labels with
the same proportion. Labels must be one-hot or soft (floating, shape ``(N, ...)``);
for integer class labels use ``jax.nn.one_hot(labels, num_classes)`` first.
:func:`cutout` zeroes a random patch per example; :func:`random_shift` translates
each example by a random integer offset.

Input noise needs no function of its own here:

* additive Gaussian input noise is :func:`jaxreg.gaussian_noise` applied to the
  input, ``x + stddev * eps``;
* multiplicative Gaussian input noise is :func:`jaxreg.gaussian_dropout` applied to
  the input, ``x * (1 + sqrt(rate / (1 - rate)) * eps)`` (mean 1, variance
  ``rate / (1 - rate)``, the moments of dropout with that rate);
* input dropout (Bernoulli masking of input features) is :func:`jaxreg.dropout`.

Sharding: the output has the sharding of ``x`` (also over Explicit mesh axes),
and the values do not depend on the layout. Per-example random values (patch
centres, offsets) are drawn with the batch's sharding, so each device draws
those of its own examples. :func:`cutout` needs no communication, nor does
:func:`random_shift` unless its spatial axes are split (a translation crosses
the devices' borders: the maps are gathered whole along those axes first).
:func:`mixup` and :func:`cutmix` pair every example with a partner anywhere in
the batch, so over a batch split across devices the partners' rows are
gathered from the other devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg._checks import (
    check_choice,
    check_float_array,
    check_int,
    check_positive,
    compute_dtype,
    spec_entries,
)
from jaxreg._keys import as_key
from jaxreg._numerics import clip_traced
from jaxreg._sampler import explicit_sharding

__all__ = ["cutmix", "cutout", "mixup", "random_shift"]

_MODES = ("constant", "edge", "wrap", "reflect")


def _spatial_axes(x: jax.Array, name: str = "x") -> tuple[int, ...]:
    if x.ndim == 2 or x.ndim == 3:
        return (1,)
    if x.ndim == 4:
        return (1, 2)
    raise ValueError(
        f"`{name}` must be a batch of 1-D signals (N, L) or (N, L, C), or of images "
        f"(N, H, W, C); got shape {x.shape} (rank {x.ndim})."
    )


def _check_labels(x: jax.Array, y) -> jax.Array:
    try:
        dtype = y.dtype if hasattr(y, "dtype") else jnp.result_type(y)
    except TypeError as err:
        raise TypeError(
            f"`y` must be an array of one-hot or soft labels; got {type(y).__name__}."
        ) from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`y` must hold one-hot or soft labels of floating dtype; got dtype "
            f"{dtype}. For integer class labels pass "
            "`jax.nn.one_hot(y, num_classes)`."
        )
    y = jnp.asarray(y)
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"`y` must have the batch size of `x` on axis 0; got y.shape={y.shape} "
            f"and x.shape={x.shape}."
        )
    return y


def _check_sizes(value, name: str, n: int, minimum: int) -> tuple[int, ...]:
    """An int or a length-``n`` sequence of ints, each ``>= minimum``."""
    many = isinstance(value, Sequence) and not isinstance(value, str)
    values = value if many else (value,) * n
    if len(values) != n:
        raise ValueError(
            f"`{name}` must be an int or a sequence of {n} ints (one per spatial "
            f"axis); got {name}={value!r}."
        )
    return tuple(check_int(v, name, minimum=minimum) for v in values)


def _check_alpha(alpha):
    """The Beta concentration: a concrete one must be finite and > 0; a traced one
    cannot be checked and is clipped to ``[tiny, max]`` of float32 (an ``alpha``
    of 0 or below then mixes nothing, each example is kept or swapped whole; NaN
    propagates)."""
    info = jnp.finfo(jnp.float32)
    return clip_traced(check_positive(alpha, "alpha"), info.tiny, info.max)


def _batch_sharding(x: jax.Array, ndim: int):
    """The explicit sharding of a new ``ndim``-d per-example array for ``x``: its
    axis 0 split like the batch axis of ``x`` (None when that is not split)."""
    sharding = explicit_sharding(x)
    if sharding is None or not sharding.spec or sharding.spec[0] is None:
        return None
    return NamedSharding(sharding.mesh, P(sharding.spec[0], *(None,) * (ndim - 1)))


def _partners(a: jax.Array, perm: jax.Array) -> jax.Array:
    """``a[perm]`` (the partner of every example), laid out like ``a``.

    Over a batch split across devices, a partner may live on another device, so
    this gather moves rows between devices (the only communication in the
    augmentations).
    """
    return a.at[perm].get(out_sharding=explicit_sharding(a))


def _mix(a: jax.Array, b: jax.Array, lam) -> jax.Array:
    ct = compute_dtype(a)
    lam = jnp.asarray(lam, ct)
    return (lam * a.astype(ct) + (1 - lam) * b.astype(ct)).astype(a.dtype)


def mixup(
    key, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *, alpha
) -> tuple[jax.Array, jax.Array]:
    r"""Mixup: convex combinations of pairs of examples and of their labels.

    One coefficient :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` is drawn for
    the batch and each example is mixed with a partner :math:`\pi(i)` given by a
    uniformly random permutation :math:`\pi` of the batch:

    .. math::

        \tilde x_i = \lambda x_i + (1 - \lambda) x_{\pi(i)}, \qquad
        \tilde y_i = \lambda y_i + (1 - \lambda) y_{\pi(i)}.

    Mixed labels of one-hot or soft labels still sum to one. Train with the soft
    cross-entropy against :math:`\tilde y` (e.g.
    ``optax.softmax_cross_entropy``). Large :math:`\alpha` mixes more evenly;
    :math:`\alpha \to 0` approaches no mixing.

    Args:
      key: PRNG key.
      x: floating batch, any shape with the examples on axis 0.
      y: one-hot or soft labels ``(N, ...)`` (floating).
      alpha: the Beta concentration, finite and ``> 0``. A Python number is
        validated; a traced value is not (it is clipped to the positive finite
        float32 numbers, so 0 or below mixes nothing).

    Returns:
      ``(x_mixed, y_mixed)`` with the shapes and dtypes of ``x`` and ``y``.

    Raises:
      ValueError: ``alpha <= 0``, NaN or infinite; ``x`` without a batch axis;
        batch sizes of ``x`` and ``y`` differ; missing or batched ``key``.
      TypeError: non-float ``x``; integer ``y`` (one-hot encode it first).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x = jnp.arange(8.0).reshape(4, 2)
      >>> y = jax.nn.one_hot(jnp.arange(4), 4)
      >>> xm, ym = jaxreg.mixup(jax.random.key(0), x, y, alpha=0.4)
      >>> xm.shape, bool(jnp.allclose(ym.sum(-1), 1.0))
      ((4, 2), True)

    References:
      Zhang, Cisse, Dauphin, Lopez-Paz. "mixup: Beyond Empirical Risk
      Minimization." ICLR 2018. https://arxiv.org/abs/1710.09412
    """
    x = check_float_array(x)
    if x.ndim < 1:
        raise ValueError("`x` must have a batch axis (axis 0); got a scalar.")
    y = _check_labels(x, y)
    alpha = _check_alpha(alpha)
    key = as_key(key)
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha, dtype=jnp.float32)
    perm = jax.random.permutation(k_perm, x.shape[0])
    return _mix(x, _partners(x, perm), lam), _mix(y, _partners(y, perm), lam)


def cutmix(
    key, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *, alpha
) -> tuple[jax.Array, jax.Array]:
    r"""CutMix: paste a random box from a partner example, mix labels by area.

    Draw :math:`\lambda_0 \sim \mathrm{Beta}(\alpha, \alpha)`, a partner
    permutation :math:`\pi` and one box for the batch. The box has side
    :math:`\lfloor H\sqrt{1-\lambda_0}\rfloor \times \lfloor W\sqrt{1-\lambda_0}\rfloor`
    for images (length :math:`\lfloor L (1-\lambda_0) \rfloor` for 1-D signals),
    so its nominal area fraction is :math:`1 - \lambda_0`; its centre is uniform
    over the input and it is clipped at the border. Inside the box the pixels
    come from :math:`x_{\pi(i)}`. The label coefficient is then the *actual* kept
    fraction,

    .. math::

        \lambda = 1 - \frac{|\text{box} \cap \text{input}|}{H W}, \qquad
        \tilde y_i = \lambda y_i + (1 - \lambda) y_{\pi(i)},

    so every label weight equals the share of the input it comes from.

    Args:
      key: PRNG key.
      x: floating batch ``(N, L)``, ``(N, L, C)`` or ``(N, H, W, C)``.
      y: one-hot or soft labels ``(N, ...)`` (floating).
      alpha: the Beta concentration, finite and ``> 0`` (paper: 1, i.e.
        uniform). A Python number is validated; a traced value is not (it is
        clipped to the positive finite float32 numbers).

    Returns:
      ``(x_mixed, y_mixed)`` with the shapes and dtypes of ``x`` and ``y``.

    Raises:
      ValueError: ``alpha <= 0``, NaN or infinite; rank of ``x`` not 2, 3 or 4;
        batch sizes differ; missing or batched ``key``.
      TypeError: non-float ``x``; integer ``y``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x = jnp.zeros((2, 8, 8, 3)).at[1].set(1.0)
      >>> y = jax.nn.one_hot(jnp.arange(2), 2)
      >>> xm, ym = jaxreg.cutmix(jax.random.key(3), x, y, alpha=1.0)
      >>> # the label weight of example 1 equals its share of the pixels
      >>> bool(jnp.allclose(ym[0, 1] + ym[1, 1], xm[0].mean() + xm[1].mean()))
      True

    References:
      Yun, Han, Oh, Chun, Choe, Yoo. "CutMix: Regularization Strategy to Train
      Strong Classifiers with Localizable Features." ICCV 2019.
      https://arxiv.org/abs/1905.04899
    """
    x = check_float_array(x)
    axes = _spatial_axes(x)
    y = _check_labels(x, y)
    alpha = _check_alpha(alpha)
    key = as_key(key)
    k_lam, k_perm, k_box = jax.random.split(key, 3)
    lam0 = jax.random.beta(k_lam, alpha, alpha, dtype=jnp.float32)
    perm = jax.random.permutation(k_perm, x.shape[0])
    dims = [x.shape[a] for a in axes]
    # Side ratio: area fraction 1 - lam0 spread over the spatial axes.
    ratio = (1.0 - lam0) ** (1.0 / len(axes))
    centres = jax.random.randint(k_box, (len(axes),), 0, jnp.asarray(dims))
    inside = jnp.ones((), bool)
    cut_count = jnp.ones((), jnp.float32)
    for j, (a, d) in enumerate(zip(axes, dims, strict=True)):
        cut = jnp.floor(d * ratio).astype(jnp.int32)
        lo = jnp.clip(centres[j] - cut // 2, 0, d)
        hi = jnp.clip(centres[j] - cut // 2 + cut, 0, d)
        pos = lax.broadcasted_iota(
            jnp.int32, [d if i == a else 1 for i in range(x.ndim)], a
        )
        inside = inside & (pos >= lo) & (pos < hi)
        cut_count = cut_count * (hi - lo).astype(jnp.float32)
    # An empty input has nothing to cut: lam = 1 (cut_count is 0), never 0 / 0.
    lam = 1.0 - cut_count / float(max(math.prod(dims), 1))
    x_mixed = jnp.where(inside, _partners(x, perm), x)
    return x_mixed, _mix(y, _partners(y, perm), lam)


def cutout(key, x: jax.typing.ArrayLike, *, size) -> jax.Array:
    r"""Cutout: zero one random patch per example.

    For each example independently a centre is drawn uniformly over all positions
    and the patch of side ``size`` around it (positions
    ``[c - size // 2, c - size // 2 + size)`` on each spatial axis, all channels)
    is set to zero; patches are clipped at the border, as in the paper, so a patch
    near an edge is smaller. Use it at training time only.

    Args:
      key: PRNG key.
      x: floating batch ``(N, L)``, ``(N, L, C)`` or ``(N, H, W, C)``.
      size: patch side, an int ``>= 1`` (a square for images) or one int per
        spatial axis.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: rank of ``x`` not 2, 3 or 4; ``size < 1`` or the wrong number of
        sizes; missing or batched ``key``.
      TypeError: non-float ``x``; non-int ``size``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> y = jaxreg.cutout(jax.random.key(0), jnp.ones((3, 10)), size=4)
      >>> y.shape, bool(((y == 0).sum(1) <= 4).all())  # clipped at the border
      ((3, 10), True)

    References:
      DeVries, Taylor. "Improved Regularization of Convolutional Neural Networks
      with Cutout." 2017. https://arxiv.org/abs/1708.04552
    """
    x = check_float_array(x)
    axes = _spatial_axes(x)
    sizes = _check_sizes(size, "size", len(axes), 1)
    key = as_key(key)
    dims = [x.shape[a] for a in axes]
    n = x.shape[0]
    centres = jax.random.randint(
        key, (n, len(axes)), 0, jnp.asarray(dims), out_sharding=_batch_sharding(x, 2)
    )
    inside = jnp.ones((n,) + (1,) * (x.ndim - 1), bool)
    for j, (a, d, s) in enumerate(zip(axes, dims, sizes, strict=True)):
        lo = centres[:, j] - s // 2
        shape = [n] + [1] * (x.ndim - 1)
        lo = lo.reshape(shape)
        pos = lax.broadcasted_iota(
            jnp.int32, [d if i == a else 1 for i in range(x.ndim)], a
        )
        inside = inside & (pos >= lo) & (pos < lo + s)
    return jnp.where(inside, jnp.zeros((), x.dtype), x)


def random_shift(
    key, x: jax.typing.ArrayLike, *, max_shift, mode: str = "constant"
) -> jax.Array:
    r"""Translate each example by a random integer offset.

    For every example and spatial axis an offset :math:`s` is drawn uniformly from
    ``{-max_shift, ..., max_shift}`` and the output is
    :math:`\tilde x[t] = x[t - s]`; positions shifted in from outside are filled
    according to ``mode``: ``"constant"`` (zeros), ``"edge"`` (repeat the border
    value), ``"wrap"`` (circular shift) or ``"reflect"`` (mirror, without repeating
    the border; needs ``max_shift < L``).

    Args:
      key: PRNG key.
      x: floating batch ``(N, L)``, ``(N, L, C)`` or ``(N, H, W, C)``.
      max_shift: the largest shift, an int ``>= 0`` or one per spatial axis.
      mode: fill mode, one of ``"constant"``, ``"edge"``, ``"wrap"``,
        ``"reflect"``.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: rank of ``x`` not 2, 3 or 4; negative ``max_shift`` or the wrong
        number of values; unknown ``mode``; ``"reflect"`` with a shift not smaller
        than the axis; missing or batched ``key``.
      TypeError: non-float ``x``; non-int ``max_shift``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x = jnp.arange(6.0)[None]
      >>> y = jaxreg.random_shift(jax.random.key(0), x, max_shift=2, mode="wrap")
      >>> sorted(y[0].tolist()) == x[0].tolist()  # a circular shift of x
      True

    References:
      Krizhevsky, Sutskever, Hinton. "ImageNet Classification with Deep
      Convolutional Neural Networks." NeurIPS 2012 (random translations).
      https://papers.nips.cc/paper_files/paper/2012/hash/c399862d3b9d6b76c8436e924a68c45b-Abstract.html
    """
    x = check_float_array(x)
    axes = _spatial_axes(x)
    shifts = _check_sizes(max_shift, "max_shift", len(axes), 0)
    check_choice(mode, "mode", _MODES)
    dims = [x.shape[a] for a in axes]
    if mode == "reflect":
        for s, d in zip(shifts, dims, strict=True):
            if s >= d:
                raise ValueError(
                    f"`max_shift`={max_shift!r} must be smaller than the spatial "
                    f"size {d} with mode='reflect'."
                )
    key = as_key(key)
    if all(s == 0 for s in shifts):
        return x
    sharding = explicit_sharding(x)
    entries = spec_entries(sharding.spec if sharding else (), x.ndim)
    if not any(entries[a] for a in axes):
        return _shift(key, x, axes, shifts, mode)
    # The spatial axes are split over devices: a translation moves values
    # across the devices' borders, so the maps are gathered whole along those
    # axes (the one communication of this function), shifted, and split again.
    whole = P(*(None if i in axes else (e or None) for i, e in enumerate(entries)))
    x_whole = jax.sharding.reshard(x, NamedSharding(sharding.mesh, whole))
    return jax.sharding.reshard(_shift(key, x_whole, axes, shifts, mode), sharding)


def _shift(key, x, axes, shifts, mode):
    """:func:`random_shift` of ``x`` whose spatial axes are not split."""
    n = x.shape[0]
    pad = [(0, 0)] * x.ndim
    for a, s in zip(axes, shifts, strict=True):
        pad[a] = (s, s)
    padded = jnp.pad(x, pad, mode=mode)
    lows = jnp.asarray([-s for s in shifts])
    highs = jnp.asarray([s + 1 for s in shifts])
    offsets = jax.random.randint(
        key, (n, len(axes)), lows, highs, out_sharding=_batch_sharding(x, 2)
    )
    sizes = list(x.shape[1:])

    def one(example, offset):
        # output[t] = input[t - s] = padded[t - s + max_shift]
        starts = [jnp.zeros((), jnp.int32)] * (x.ndim - 1)
        for j, (a, s) in enumerate(zip(axes, shifts, strict=True)):
            starts[a - 1] = (s - offset[j]).astype(jnp.int32)
        return lax.dynamic_slice(example, starts, sizes)

    return jax.vmap(one)(padded, offsets)
