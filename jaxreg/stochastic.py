"""The dropout family on activations, as pure functions.

Every function takes the PRNG key first, the array next, the rate (a drop
probability: the rate is not the keep rate!) third, and options keyword-only. Masks
come from :func:`jaxreg.keep_mask`; scale factors use the keep probability that the
sampler realises (:func:`jaxreg.keep_probability`), so expectations are exact.

``deterministic=True`` selects the inference path, which needs no key. Output dtype
equals input dtype (float32, bfloat16, float16, ...); low-precision inputs are scaled
in float32 and rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxreg._checks import (
    check_axis,
    check_bool,
    check_broadcast_dims,
    check_choice,
    check_float_array,
    check_int,
    check_nonnegative,
    check_rate,
    check_shard_spec,
    compute_dtype,
    fill_doc,
    float32_or_wider,
    static_value,
)
from jaxreg._keys import as_key
from jaxreg._numerics import clip_traced, safe_inverse
from jaxreg._sampler import (
    activation_fn,
    activation_name,
    explicit_sharding,
    keep_probability,
    masked_activation_scale,
    masked_scale,
    masked_scale_blocks,
    masked_select,
)

__all__ = [
    "alpha_dropout",
    "drop_path",
    "dropblock",
    "dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "spatial_dropout",
    "zoneout",
]

# SELU constants (Klambauer et al. 2017, eq. 14).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_ALPHA_PRIME = -_SELU_SCALE * _SELU_ALPHA


def _shard_spec_doc(array: str = "x"):
    """Decorator: write the ``shard_spec`` argument's text, shared by the
    shard-aware functions of this module, where their docstring says
    ``{shard_spec}``; ``array`` names the argument whose block the spec gives."""
    text = (
        "shard_spec: None, or inside ``jax.shard_map`` the ``PartitionSpec`` of\n"
        f"        ``{array}`` (its ``in_specs`` entry, over the manual mesh axes): "
        f"``{array}`` is\n"
        "        then one shard's block and gets exactly the output that the same call\n"
        "        on the global array under ``jit`` gives that block, with no\n"
        "        communication (see :func:`jaxreg.keep_mask`)."
    )
    return fill_doc(shard_spec=text)


def _check_deterministic(deterministic, key) -> bool:
    """Check the ``deterministic`` flag, and a key whenever one is given.

    A key passed on a path that does not use it (inference, rate 0 or 1) is still
    validated, so a batched or non-key object is never accepted silently.
    """
    if key is not None:
        as_key(key)
    return check_bool(deterministic, "deterministic")


def _static_output(x: jax.Array, rate, deterministic, key):
    """The output when no noise is drawn, else None: ``x`` at inference (after
    checking ``deterministic`` and any key) or at a concrete rate of 0, zeros at a
    concrete rate of 1."""
    if _check_deterministic(deterministic, key):
        return x
    value = static_value(rate)
    if value == 0.0:
        return x
    if value == 1.0:
        return jnp.zeros_like(x)
    return None


def _scaled(x: jax.Array, scale) -> jax.Array:
    return (x.astype(compute_dtype(x)) * scale).astype(x.dtype)


@_shard_spec_doc()
def dropout(
    key,
    x: jax.typing.ArrayLike,
    rate,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
    inverted: bool = True,
    activation=None,
    shard_spec=None,
) -> jax.Array:
    """Dropout: zero each element with probability ``rate``.

    With ``inverted=True`` (the default, as in Flax, Keras and PyTorch) training
    returns ``x * mask / p`` and inference returns ``x``; with ``inverted=False``
    (classic dropout of Srivastava et al. 2014) training returns ``x * mask`` and
    inference returns ``x * p``. Here ``p = keep_probability(rate)``, the keep
    probability the sampler realises (``1 - rate`` up to ``2**-33``), so in both
    modes ``E[train output] == inference output`` exactly.

    Args:
      key: PRNG key; may be None when ``deterministic=True`` or ``rate`` is 0 or 1.
      x: floating array.
      rate: drop probability in ``[0, 1]``; a Python float, or a traced scalar for
        schedules under ``jit`` (a traced value cannot be validated).
      broadcast_dims: axes along which one mask value is shared (e.g. the time
        axis for variational RNN dropout).
      deterministic: if True, return the inference output and ignore ``key``.
      inverted: inverted (scale at training) or classic (scale at inference).
      activation: None, or an elementwise activation applied to ``x`` *before*
        dropping, fused with it: ``"tanh"``, ``"sigmoid"``, ``"relu"``,
        ``"elu"``, ``"softplus"`` or the matching function (``jnp.tanh``,
        ``jax.nn.relu``, ``flax.linen.sigmoid``, ...). The result is
        ``dropout(key, f(x), rate, ...)`` (up to one rounding, as ``f`` is
        computed in at least float32), but the backward pass keeps only the
        output: these activations' derivatives are functions of their output,
        which can be read off the kept elements, and the dropped elements get
        no gradient. Applying ``f`` separately makes autodiff keep both ``f(x)``
        and the dropout output, one extra activation-sized buffer per layer.
        Gradients equal the composition's up to rounding: the derivative is
        computed from the rounded output, so where ``f`` saturates (``tanh`` or
        ``sigmoid`` near their bounds) its relative error grows like one
        rounding over the distance to the bound, as for JAX's own rules.
      {shard_spec}

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: ``rate`` outside ``[0, 1]`` or NaN; ``broadcast_dims`` out of
        range; a missing or batched ``key`` on the stochastic path; an
        ``activation`` that cannot be fused; a bad ``shard_spec`` (see
        :func:`jaxreg.keep_mask`).
      TypeError: non-float ``x``; ``key`` not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> y = jaxreg.dropout(jax.random.key(0), jnp.ones((2, 4)), 0.5)
      >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
      True
      >>> jaxreg.dropout(None, jnp.ones(3), 0.5, deterministic=True)
      Array([1., 1., 1.], dtype=float32)
      >>> jaxreg.dropout(None, jnp.ones(3), 0.5, deterministic=True, inverted=False)
      Array([0.5, 0.5, 0.5], dtype=float32)
      >>> x = jnp.array([-1.0, 0.0, 2.0])
      >>> jaxreg.dropout(None, x, 0.5, deterministic=True, activation="relu")
      Array([0., 0., 2.], dtype=float32)

    References:
      Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov. "Dropout: A Simple
      Way to Prevent Neural Networks from Overfitting." JMLR 15, 2014.
      https://jmlr.org/papers/v15/srivastava14a.html
    """
    x = check_float_array(x)
    rate = check_rate(rate)
    dims = check_broadcast_dims(broadcast_dims, x.ndim)
    manual = check_shard_spec(shard_spec, x.ndim)
    _check_deterministic(deterministic, key)
    check_bool(inverted, "inverted")
    name = activation_name(activation)
    keep = keep_probability(rate)
    value = static_value(rate)
    if deterministic or value == 0.0:  # a rate of 0 drops nothing, scales by 1
        fx = x if name is None else activation_fn(name)(x)
        return _scaled(fx, keep) if deterministic and not inverted else fx
    if value == 1.0:
        return jnp.zeros_like(x)
    # The mask is regenerated from the key's seed words in the backward pass
    # (never stored); it is exactly keep_mask(key, x.shape, rate, ...).
    scale = safe_inverse(keep) if inverted else 1.0
    if name is None:
        return masked_scale(key, x, rate, scale, broadcast_dims=dims, manual=manual)
    unscale = keep if inverted else 1.0
    return masked_activation_scale(
        key, x, rate, scale, unscale, name, broadcast_dims=dims, manual=manual
    )


@_shard_spec_doc()
def spatial_dropout(
    key,
    x: jax.typing.ArrayLike,
    rate,
    *,
    channel_axis: int = -1,
    deterministic: bool = False,
    shard_spec=None,
) -> jax.Array:
    """Spatial (channel-wise) dropout for 1-D, 2-D and 3-D feature maps.

    Drops whole channels: one keep decision per (example, channel), shared over all
    spatial positions, scaled like inverted :func:`dropout`. Axis 0 is the batch.

    Args:
      key: PRNG key (may be None when ``deterministic=True``).
      x: floating array of rank 3, 4 or 5, e.g. ``(N, L, C)``, ``(N, H, W, C)``,
        ``(N, D, H, W, C)`` for ``channel_axis=-1`` (use ``channel_axis=1`` for
        channels-first layouts).
      rate: drop probability in ``[0, 1]``.
      channel_axis: the channel axis (not 0, the batch axis).
      deterministic: return ``x`` unchanged.
      {shard_spec}

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: rank not in {3, 4, 5}, ``channel_axis`` out of range or equal to
        the batch axis, bad ``rate``, missing key.
      TypeError: non-float ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> y = jaxreg.spatial_dropout(jax.random.key(1), jnp.ones((2, 5, 3)), 0.5)
      >>> bool(jnp.all(y == y[:, :1, :]))  # constant along the spatial axis
      True

    References:
      Tompson, Goroshin, Jain, LeCun, Bregler. "Efficient Object Localization Using
      Convolutional Networks." CVPR 2015. https://arxiv.org/abs/1411.4280
    """
    x = check_float_array(x)
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            "`x` must be a batch of 1-D, 2-D or 3-D feature maps (rank 3, 4 or 5); "
            f"got shape {x.shape}."
        )
    ch = check_axis(channel_axis, x.ndim, "channel_axis")
    if ch == 0:
        raise ValueError(
            f"`channel_axis`={channel_axis} is the batch axis (axis 0 of an input of "
            f"rank {x.ndim}); spatial dropout needs the batch on axis 0 and channels "
            "elsewhere (e.g. channel_axis=-1 or 1)."
        )
    spatial = tuple(i for i in range(1, x.ndim) if i != ch)
    return dropout(
        key,
        x,
        rate,
        broadcast_dims=spatial,
        deterministic=deterministic,
        shard_spec=shard_spec,
    )


def gaussian_dropout(
    key, x: jax.typing.ArrayLike, rate, *, deterministic: bool = False
) -> jax.Array:
    """Multiplicative Gaussian noise with mean 1 and variance ``rate / (1 - rate)``.

    Training returns ``x * (1 + sqrt(rate / (1 - rate)) * eps)`` with
    ``eps ~ N(0, 1)``, matching the first two moments of inverted dropout with the
    same rate; inference returns ``x``.

    Args:
      key: PRNG key (may be None when ``deterministic=True`` or ``rate == 0``).
      x: floating array.
      rate: drop-equivalent rate in ``[0, 1)`` (``1`` would mean infinite noise,
        so a Python 1.0 is an error). A traced rate cannot be checked in Python:
        it is clipped to ``[0, 1]`` like ``dropout``'s (a negative one acts as 0,
        the input is returned), and a rate of 1 returns zeros with zero
        gradients, like ``dropout`` at rate 1; never NaN.
      deterministic: return ``x`` unchanged.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: ``rate`` outside ``[0, 1)``, missing key.
      TypeError: non-float ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> jaxreg.gaussian_dropout(jax.random.key(0), jnp.ones(3), 0.2).shape
      (3,)

    References:
      Srivastava et al. 2014 (section 10, "Multiplicative Gaussian Noise").
      https://jmlr.org/papers/v15/srivastava14a.html
    """
    x = check_float_array(x)
    rate = check_rate(rate, allow_one=False)
    if _check_deterministic(deterministic, key) or static_value(rate) == 0.0:
        return x
    key = as_key(key)
    ct = compute_dtype(x)
    # A traced rate outside [0, 1] acts as the nearest end point, as in dropout.
    r = jnp.clip(jnp.asarray(rate, ct), 0.0, 1.0)
    finite = r < 1.0  # only a traced rate can reach 1 here
    safe_r = jnp.where(finite, r, 0.0)
    std = jnp.sqrt(safe_r / (1.0 - safe_r))
    eps = jax.random.normal(key, x.shape, ct, out_sharding=explicit_sharding(x))
    y = jnp.where(finite, x.astype(ct) * (1.0 + std * eps), 0.0)
    return y.astype(x.dtype)


def gaussian_noise(
    key, x: jax.typing.ArrayLike, stddev, *, deterministic: bool = False
) -> jax.Array:
    """Additive zero-mean Gaussian noise: ``x + stddev * eps``, ``eps ~ N(0, 1)``.

    Args:
      key: PRNG key (may be None when ``deterministic=True`` or ``stddev == 0``).
      x: floating array.
      stddev: noise standard deviation, finite and ``>= 0``; a traced value is
        not validated (a negative one acts as 0).
      deterministic: return ``x`` unchanged.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: negative, NaN or infinite ``stddev``, missing key.
      TypeError: non-float ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> jaxreg.gaussian_noise(None, jnp.ones(2), 0.1, deterministic=True)
      Array([1., 1.], dtype=float32)

    References:
      Bishop. "Training with Noise is Equivalent to Tikhonov Regularization."
      Neural Computation 7(1), 1995. https://doi.org/10.1162/neco.1995.7.1.108
    """
    x = check_float_array(x)
    stddev = check_nonnegative(stddev, "stddev")
    if _check_deterministic(deterministic, key) or static_value(stddev) == 0.0:
        return x
    key = as_key(key)
    ct = compute_dtype(x)
    eps = jax.random.normal(key, x.shape, ct, out_sharding=explicit_sharding(x))
    stddev = jnp.asarray(clip_traced(stddev, 0.0), ct)  # traced < 0 acts as 0
    return (x.astype(ct) + stddev * eps).astype(x.dtype)


@_shard_spec_doc()
def alpha_dropout(
    key,
    x: jax.typing.ArrayLike,
    rate,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
    shard_spec=None,
) -> jax.Array:
    """Alpha dropout for self-normalizing (SELU) networks.

    Dropped units are set to ``alpha' = -scale * alpha`` (the SELU's negative
    saturation value), then the affine map ``a * y + b`` restores zero mean and
    unit variance for standard-normal input, with keep probability ``q``::

        a = (q + alpha'^2 q (1 - q)) ** -0.5,    b = -a * alpha' * (1 - q).

    Inference returns ``x``. At ``rate == 1`` the output is the limit ``0``.

    With ``broadcast_dims`` one keep decision is shared along those axes: for an
    NHWC batch, ``broadcast_dims=(1, 2)`` drops whole channel maps, as PyTorch's
    ``FeatureAlphaDropout`` does for NCHW input (its ``(2, 3)``). Each element
    still is ``x`` or ``alpha'`` with the same marginal probabilities, so the
    mean and variance of a standard-normal input are kept just the same.

    Args:
      key: PRNG key (may be None when ``deterministic=True`` or rate is 0 or 1).
      x: floating array.
      rate: drop probability in ``[0, 1]``.
      broadcast_dims: axes along which one keep decision is shared (feature alpha
        dropout), as in :func:`dropout`.
      deterministic: return ``x`` unchanged.
      {shard_spec}

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: bad ``rate``, ``broadcast_dims`` or ``shard_spec``, missing key.
      TypeError: non-float ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = jaxreg.alpha_dropout(jax.random.key(1), x, 0.2)
      >>> bool(abs(y.mean()) < 0.02 and abs(y.var() - 1) < 0.02)
      True
      >>> # Feature alpha dropout: whole channel maps of an NHWC batch.
      >>> x = jnp.ones((2, 4, 4, 3))
      >>> y = jaxreg.alpha_dropout(jax.random.key(1), x, 0.5, broadcast_dims=(1, 2))
      >>> bool(jnp.all(y == y[:, :1, :1, :]))
      True

    References:
      Klambauer, Unterthiner, Mayr, Hochreiter. "Self-Normalizing Neural
      Networks." NeurIPS 2017, section "New Dropout Technique".
      https://arxiv.org/abs/1706.02515 ; PyTorch ``FeatureAlphaDropout``,
      https://pytorch.org/docs/stable/generated/torch.nn.FeatureAlphaDropout.html
    """
    x = check_float_array(x)
    rate = check_rate(rate)
    dims = check_broadcast_dims(broadcast_dims, x.ndim)
    manual = check_shard_spec(shard_spec, x.ndim)
    fixed = _static_output(x, rate, deterministic, key)
    if fixed is not None:
        return fixed
    q = keep_probability(rate)
    ct = compute_dtype(x)
    q = jnp.asarray(q, ct)
    safe_q = jnp.where(q > 0, q, 1.0)
    a = jnp.where(q > 0, (safe_q + _ALPHA_PRIME**2 * safe_q * (1 - safe_q)) ** -0.5, 0)
    b = -a * _ALPHA_PRIME * (1 - q)
    # where(keep_mask(key, x.shape, rate), x, alpha'); the mask is regenerated in
    # the backward pass from the key's seed words instead of stored.
    alpha = jnp.asarray(_ALPHA_PRIME, ct)
    y = masked_select(
        key, rate, x.astype(ct), alpha, broadcast_dims=dims, manual=manual
    )
    return (a * y + jnp.where(q > 0, b, 0.0)).astype(x.dtype)


@_shard_spec_doc()
def drop_path(
    key,
    x: jax.typing.ArrayLike,
    rate,
    *,
    mode: str = "row",
    deterministic: bool = False,
    shard_spec=None,
) -> jax.Array:
    """Stochastic depth: drop a whole residual branch.

    Apply to the output of a residual branch before adding the shortcut:
    ``y = shortcut + drop_path(key, branch(x), rate)``. Kept branches are scaled by
    ``1 / p`` (inverted), so inference returns ``x``.

    Args:
      key: PRNG key (may be None when ``deterministic=True`` or rate is 0 or 1).
      x: floating array with the batch on axis 0 (for ``mode="row"``).
      rate: drop probability in ``[0, 1]``.
      mode: ``"row"`` drops each example's branch independently (as in timm and
        torchvision); ``"batch"`` drops the branch for the whole batch at once (as
        in Huang et al. 2016).
      deterministic: return ``x`` unchanged.
      {shard_spec}

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: unknown ``mode``, scalar ``x`` with ``mode="row"``, bad
        ``rate``, missing key.
      TypeError: non-float ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> y = jaxreg.drop_path(jax.random.key(0), jnp.ones((4, 3)), 0.5)
      >>> bool(jnp.all((y == 0).all(1) | (y == 2).all(1)))  # whole rows
      True

    References:
      Huang, Sun, Liu, Sedra, Weinberger. "Deep Networks with Stochastic Depth."
      ECCV 2016. https://arxiv.org/abs/1603.09382
    """
    x = check_float_array(x)
    check_choice(mode, "mode", ("row", "batch"))
    if mode == "row" and x.ndim == 0:
        raise ValueError(
            "`x` must have a batch axis for mode='row'; got a scalar. Use "
            "mode='batch' to drop the whole input."
        )
    dims = tuple(range(1 if mode == "row" else 0, x.ndim))
    return dropout(
        key,
        x,
        rate,
        broadcast_dims=dims,
        deterministic=deterministic,
        shard_spec=shard_spec,
    )


def _dropblock_center_rate(rate, block_size: int, gamma_scale=1.0):
    """Per-position seed rate ``gamma`` with ``1 - (1 - gamma)**(b*b) == rate``,
    times ``gamma_scale`` (clipped to 1)."""
    n = block_size * block_size
    value, scale = static_value(rate), static_value(gamma_scale)
    if value is not None and scale is not None:
        return min(1.0, scale * (1.0 - (1.0 - value) ** (1.0 / n)))
    r = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    s = clip_traced(jnp.asarray(gamma_scale, jnp.float32), 0.0)
    return jnp.minimum(1.0, s * (1.0 - (1.0 - r) ** (1.0 / n)))


@_shard_spec_doc()
def dropblock(
    key,
    x: jax.typing.ArrayLike,
    rate,
    *,
    block_size: int = 7,
    couple_channels: bool = False,
    gamma_scale=1.0,
    deterministic: bool = False,
    shard_spec=None,
) -> jax.Array:
    """DropBlock: drop contiguous ``block_size x block_size`` regions (NHWC).

    Block centres are seeded independently per example and channel on a grid
    padded by ``block_size - 1``, so every position is covered by exactly
    ``block_size**2`` possible blocks; with the seed rate
    ``gamma = 1 - (1 - rate) ** (1 / block_size**2)`` each position is then dropped
    with probability exactly ``rate`` (up to the sampler's ``2**-33``), edges
    included. Blocks near the border are clipped by it (Ghiasi et al. instead keep
    centres inside the map, which drops edges less often). Kept units are scaled by
    ``1 / (1 - rate_realised)``, so ``E[output] == x``; inference returns ``x``.

    **Channels.** Ghiasi et al. describe two forms: one block mask shared across
    the feature channels, and one mask per channel. ``couple_channels=True``
    draws one block mask per example and shares it across all channels (a
    region is removed from every feature map at once). The default,
    ``couple_channels=False``, draws one mask per channel, as the authors'
    TensorFlow implementation (``tensorflow/tpu``, ResNet) and timm's
    ``DropBlock2d`` do.

    **gamma_scale** multiplies the seed rate, as timm's argument of that name
    does: the seed rate is ``min(1, gamma_scale * gamma)``, so each position is
    dropped with probability ``1 - (1 - gamma_scale * gamma) ** block_size**2``
    and kept units are scaled by the inverse of that keep probability (the
    expectation stays exact). ``gamma_scale=1`` (the default) gives the rate
    ``rate``.

    **Schedules.** Ghiasi et al. raise the drop rate linearly from 0 to its final
    value over training; ``rate`` may be a traced scalar, e.g. a schedule
    evaluated at the step inside one compiled train step
    (e.g. :func:`jaxreg.schedules.linear_ramp`, as the paper does).

    Args:
      key: PRNG key (may be None when ``deterministic=True`` or rate is 0 or 1).
      x: floating array of shape ``(N, H, W, C)``.
      rate: drop probability of each position, in ``[0, 1]`` (a Python float or
        a traced scalar).
      block_size: side of the square blocks, a Python or NumPy int ``>= 1`` (1 is
        plain dropout).
      couple_channels: share one block mask across the channels of an example.
      gamma_scale: factor ``>= 0`` on the seed rate (a Python float or a traced
        scalar; a traced negative value acts as 0).
      deterministic: return ``x`` unchanged.
      {shard_spec}
        Blocks that cross shard borders stay whole: each shard also draws the
        ``block_size - 1`` seed rows and columns past its block.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: ``x`` not rank 4, ``block_size < 1``, bad ``rate``, negative
        ``gamma_scale``, missing key.
      TypeError: non-float ``x``, non-int ``block_size``, non-bool
        ``couple_channels``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> y = jaxreg.dropblock(jax.random.key(0), jnp.ones((1, 8, 8, 1)), 0.2,
      ...                      block_size=3)
      >>> y.shape
      (1, 8, 8, 1)
      >>> y = jaxreg.dropblock(jax.random.key(0), jnp.ones((2, 8, 8, 4)), 0.2,
      ...                      block_size=3, couple_channels=True)
      >>> bool(jnp.all(y == y[..., :1]))  # one mask for all channels
      True

    References:
      Ghiasi, Lin, Le. "DropBlock: A regularization method for convolutional
      networks." NeurIPS 2018. https://arxiv.org/abs/1810.12890
    """
    x = check_float_array(x)
    if x.ndim != 4:
        raise ValueError(
            f"`x` must be an NHWC batch of feature maps (rank 4); got shape {x.shape}."
        )
    block_size = check_int(block_size, "block_size", minimum=1)
    rate = check_rate(rate)
    coupled = check_bool(couple_channels, "couple_channels")
    gamma_scale = check_nonnegative(gamma_scale, "gamma_scale")
    manual = check_shard_spec(shard_spec, x.ndim)
    fixed = _static_output(x, rate, deterministic, key)
    if fixed is not None:
        return fixed
    gamma = _dropblock_center_rate(rate, block_size, gamma_scale)
    keep = keep_probability(gamma) ** (block_size * block_size)
    # The seeds are keep_mask(key, (N, H + b - 1, W + b - 1, C or 1), gamma),
    # grown into blocks by a b x b window minimum; seeds and blocks are
    # regenerated in the backward pass from the key's seed words instead of stored.
    scale = safe_inverse(keep)
    return masked_scale_blocks(
        key, x, gamma, scale, block_size, manual=manual, coupled=coupled
    )


@_shard_spec_doc("h_new")
def zoneout(
    key,
    h_prev: jax.typing.ArrayLike,
    h_new: jax.typing.ArrayLike,
    rate,
    *,
    deterministic: bool = False,
    shard_spec=None,
) -> jax.Array:
    """Zoneout: each unit keeps its previous value with probability ``rate``.

    Training returns ``where(m, h_new, h_prev)`` with ``m ~ Bernoulli(p)``,
    ``p = keep_probability(rate)`` (the probability of updating); inference returns
    the expectation ``p * h_new + (1 - p) * h_prev``.

    Args:
      key: PRNG key (may be None when ``deterministic=True`` or rate is 0 or 1).
      h_prev: previous hidden state (floating).
      h_new: candidate new hidden state, same shape as ``h_prev``.
      rate: probability of keeping the previous value ("zoning out").
      deterministic: return the expectation instead of a sample.
      {shard_spec}

    Returns:
      The next hidden state, shape and dtype of ``h_new``.

    Raises:
      ValueError: shape mismatch, bad ``rate``, missing key.
      TypeError: non-float states.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.zoneout(None, jnp.zeros(2), jnp.ones(2), 0.25, deterministic=True)
      Array([0.75, 0.75], dtype=float32)

    References:
      Krueger et al. "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
      Activations." ICLR 2017. https://arxiv.org/abs/1606.01305
    """
    h_prev = check_float_array(h_prev, "h_prev")
    h_new = check_float_array(h_new, "h_new")
    if h_prev.shape != h_new.shape:
        raise ValueError(
            "`h_prev` and `h_new` must have the same shape; got "
            f"h_prev.shape={h_prev.shape} and h_new.shape={h_new.shape}."
        )
    rate = check_rate(rate)
    manual = check_shard_spec(shard_spec, h_new.ndim)
    dtype = h_new.dtype
    if _check_deterministic(deterministic, key):
        p = keep_probability(rate)
        ct = float32_or_wider(h_new.dtype, h_prev.dtype)
        out = p * h_new.astype(ct) + (1.0 - p) * h_prev.astype(ct)
        return out.astype(dtype)
    # Same mask as keep_mask(key, h_new.shape, rate), regenerated in the backward
    # pass from the key's seed words instead of stored.
    return masked_select(key, rate, h_new, h_prev.astype(dtype), manual=manual)
