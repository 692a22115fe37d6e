"""The one Bernoulli keep-mask sampler of jaxreg.

Every random mask in the library (dropout, spatial dropout, drop-path, DropBlock,
zoneout, DropConnect, ...) is drawn by :func:`keep_mask`, and every scale factor is
computed from :func:`keep_probability`, the keep probability the sampler *actually
realises*. That pairing is what makes ``E[dropout(x)] == x`` exact even though the
rate is quantized.

Design
------
The keep decision is made in integer bit space: for each mask element one
uniformly distributed 32-bit word ``u`` is drawn from the key, and the element is
kept iff ``u >= t`` with the integer threshold ``t = round(rate * 2**32)``. Hence

* the realised keep probability is exactly ``(2**32 - t) / 2**32``;
* the realised rate differs from the nominal one by at most ``2**-33``
  (about ``1.2e-10``), far below what any statistical test can see
  (at ``10**7`` draws one binomial sigma is ``>= 3e-6`` for ``0.001 <= rate``);
* no low-precision float is ever compared, whatever the dtype of the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import check_broadcast_dims, check_rate, static_value
from jaxreg._keys import as_key

__all__ = ["keep_mask", "keep_probability"]

_TWO32 = 4294967296  # 2**32
_MAX_RATE_ERROR = 2.0**-33


def _threshold(rate):
    """Integer threshold and realised keep probability for a drop ``rate``.

    For a concrete rate both are Python numbers (the threshold an int in
    ``[0, 2**32]``); for a traced rate they are a ``uint32`` scalar, a bool "drop
    everything" flag and a float32 scalar.
    """
    value = static_value(rate)
    if value is not None:
        t = round(value * _TWO32)
        return t, (_TWO32 - t) / _TWO32
    r = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    t = jnp.round(r * jnp.float32(_TWO32))
    drop_all = t >= jnp.float32(_TWO32)
    keep = jnp.where(drop_all, 0.0, (jnp.float32(_TWO32) - t) / jnp.float32(_TWO32))
    return (jnp.where(drop_all, 0.0, t).astype(jnp.uint32), drop_all), keep


def keep_probability(rate):
    """The keep probability that :func:`keep_mask` realises for a drop ``rate``.

    It equals ``1 - rate`` up to ``2**-33``. jaxreg scales by this value (not by
    ``1 - rate``) so that expectations are preserved exactly.

    Args:
      rate: drop probability in ``[0, 1]``; a Python float or a traced scalar.

    Returns:
      A Python float for a concrete ``rate``, otherwise a float32 scalar array.

    Raises:
      ValueError: if a concrete ``rate`` is outside ``[0, 1]`` or NaN.

    Examples:
      >>> import jaxreg
      >>> jaxreg.keep_probability(0.25)
      0.75
      >>> abs(jaxreg.keep_probability(0.1) - 0.9) < 2**-33
      True
    """
    rate = check_rate(rate)
    return _threshold(rate)[1]


def keep_mask(
    key, shape: Sequence[int], rate, *, broadcast_dims: Sequence[int] = ()
) -> jax.Array:
    """Draw a Bernoulli keep-mask: ``True`` with probability ``1 - rate``.

    The decision is made in integer bit space (one 32-bit word per independent
    element, kept iff it is at least ``round(rate * 2**32)``), so the realised rate
    deviates from ``rate`` by at most ``2**-33`` and is exactly
    ``1 - keep_probability(rate)``.

    Args:
      key: a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``, any
        implementation). The same key gives the same mask.
      shape: shape of the mask.
      rate: drop probability in ``[0, 1]``: a Python float (validated now) or a
        traced scalar (not validated; values outside ``[0, 1]`` act as the
        nearest end point). Note: the rate is not the keep rate!
      broadcast_dims: axes along which the mask is shared (drawn with size 1 and
        broadcast), e.g. the time axis for variational RNN dropout.

    Returns:
      A boolean array of shape ``shape``.

    Raises:
      ValueError: bad ``rate`` or ``broadcast_dims``, missing or batched ``key``.
      TypeError: ``key`` is not a PRNG key.

    Examples:
      >>> import jax, jaxreg
      >>> m = jaxreg.keep_mask(jax.random.key(0), (2, 3), 0.5, broadcast_dims=(0,))
      >>> m.shape, bool((m[0] == m[1]).all())
      ((2, 3), True)

    References:
      Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting", JMLR 2014. https://jmlr.org/papers/v15/srivastava14a.html
    """
    rate = check_rate(rate)
    shape = tuple(int(s) for s in shape)
    dims = check_broadcast_dims(broadcast_dims, len(shape))
    value = static_value(rate)
    if value == 0.0:
        return jnp.ones(shape, bool)
    if value == 1.0:
        return jnp.zeros(shape, bool)
    key = as_key(key)
    mask_shape = tuple(1 if i in dims else s for i, s in enumerate(shape))
    threshold, _ = _threshold(rate)
    bits = jax.random.bits(key, mask_shape, jnp.uint32)
    if value is not None:
        if threshold >= _TWO32:
            mask = jnp.zeros(mask_shape, bool)
        else:
            mask = bits >= np.uint32(threshold)
    else:
        t, drop_all = threshold
        mask = (bits >= t) & ~drop_all
    return jnp.broadcast_to(mask, shape)
