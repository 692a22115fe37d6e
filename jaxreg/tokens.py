"""Token-level regularizers for sequence and vision-transformer models.

:func:`patch_dropout` keeps a fixed number of tokens per example and *removes*
the rest (instead of zeroing them), so the output is shorter than the input and
every later layer runs on fewer tokens: under ``jit`` the output shape is static,
and the saving is real compute, not masked compute.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxreg._checks import check_bool, check_int, check_rate, static_value
from jaxreg._keys import as_key
from jaxreg._sampler import _bits, _seed

__all__ = ["patch_dropout"]


def _num_keep(num_tokens: int, rate: float) -> int:
    """timm's count of kept (non-prefix) tokens: ``max(1, int(L * (1 - rate)))``."""
    return max(1, int(num_tokens * (1.0 - rate)))


def patch_dropout(
    key,
    x: jax.typing.ArrayLike,
    rate,
    *,
    num_prefix_tokens: int = 0,
    ordered: bool = True,
    deterministic: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """PatchDropout: keep a random subset of a fixed size of every example's tokens.

    ``x`` holds a batch of token sequences ``(B, N, ...)`` whose first
    ``num_prefix_tokens`` tokens (a CLS token, register tokens) are always kept.
    Of the other ``L = N - num_prefix_tokens`` tokens, every example keeps
    ``K = max(1, int(L * (1 - rate)))`` (timm's count), chosen uniformly at
    random without replacement and independently per example; the others are
    removed. The output holds the prefix tokens first, then the kept patches,
    so it has the static shape ``(B, num_prefix_tokens + K, ...)``: every
    later layer runs on fewer tokens (Liu et al. 2022 train ViTs on 25-50% of
    the patches; FLIP masks 50-75% of them).

    The choice is drawn from jaxreg's counter-based sampler: one 32-bit word per
    (example, token), and the ``K`` tokens with the largest words are kept. The
    words are independent draws, so two tokens of a row tie with probability
    about ``N**2 / 2**33`` (8e-6 for 256 tokens); a tie is broken towards the
    lower index, the only departure from an exactly uniform subset. No rescaling is applied (tokens are removed, not
    zeroed), and gradients reach the kept tokens only. Inference
    (``deterministic=True``, or ``rate == 0``) returns all tokens.

    Args:
      key: PRNG key (may be None when ``deterministic=True`` or ``rate == 0``).
      x: array of shape ``(B, N, ...)``: batch, tokens, features (any dtype).
      rate: the fraction of non-prefix tokens to drop, a Python float in
        ``[0, 1)``. It fixes the output shape, so it must be concrete (a traced
        rate is a ``TypeError``).
      num_prefix_tokens: leading tokens that are always kept, an int in
        ``[0, N)``. timm's ``PatchDropout`` defaults to 1 (a CLS token).
      ordered: if True (default) the kept tokens stay in their original order
        (the indices are sorted); if False they come in random order, which
        skips a sort of ``K`` indices per example (timm's default; attention
        with position embeddings added beforehand does not depend on the order).
      deterministic: if True, return all tokens and ignore ``key``.

    Returns:
      ``(kept, indices)``: ``kept`` of shape ``(B, num_prefix_tokens + K, ...)``
      and dtype of ``x``, and int32 ``indices`` of shape
      ``(B, num_prefix_tokens + K)`` into axis 1 of ``x``, so that
      ``kept == jnp.take_along_axis(x, indices[:, :, None], axis=1)`` (for 3-D
      ``x``). The prefix indices ``0, ..., num_prefix_tokens - 1`` come first.
      (timm returns the patch indices only, counted from the first non-prefix
      token: ``indices[:, num_prefix_tokens:] - num_prefix_tokens``.) On the
      deterministic path ``kept`` is ``x`` and ``indices`` is ``arange(N)`` per
      example.

    Raises:
      TypeError: a traced ``rate``, non-int ``num_prefix_tokens``, non-bool
        ``ordered``/``deterministic``, a bad key.
      ValueError: ``x`` of rank < 2, ``rate`` outside ``[0, 1)`` or NaN,
        ``num_prefix_tokens`` outside ``[0, N)``, a missing key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x = jnp.arange(2 * 9 * 4, dtype=jnp.float32).reshape(2, 9, 4)
      >>> kept, idx = jaxreg.patch_dropout(jax.random.key(0), x, 0.5,
      ...                                  num_prefix_tokens=1)
      >>> kept.shape, idx.shape                    # 1 CLS token + 4 of 8 patches
      ((2, 5, 4), (2, 5))
      >>> bool((idx[:, 0] == 0).all())               # the CLS token is kept
      True
      >>> bool((kept == jnp.take_along_axis(x, idx[..., None], axis=1)).all())
      True

    References:
      Liu, Amadei, Eyben, Sung, Schuller. "PatchDropout: Economizing Vision
      Transformers Using Patch Dropout." WACV 2023.
      https://arxiv.org/abs/2208.07220

      Li, Fan, Hu, Feichtenhofer, He. "Scaling Language-Image Pre-training via
      Masking" (FLIP). CVPR 2023. https://arxiv.org/abs/2212.00794
    """
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(
            "`x` must be an array of token sequences (B, N, ...); got "
            f"{type(x).__name__}."
        )
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            "`x` must hold a batch of token sequences, shape (B, N, ...); got shape "
            f"{x.shape}. For a single sequence add a batch axis: `x[None]`."
        )
    batch, num_tokens = x.shape[:2]
    prefix = check_int(num_prefix_tokens, "num_prefix_tokens", minimum=0)
    if prefix >= num_tokens:
        raise ValueError(
            f"`num_prefix_tokens` must be smaller than the number of tokens "
            f"N={num_tokens} (at least one patch token is needed); got "
            f"num_prefix_tokens={prefix}."
        )
    rate = check_rate(rate, allow_one=False)
    if static_value(rate) is None:
        raise TypeError(
            "`rate` must be a Python float: it fixes the number of kept tokens, "
            "hence the output shape, which cannot depend on a traced value. Pass "
            "it as a static argument (e.g. `jax.jit(..., static_argnums=...)`)."
        )
    check_bool(ordered, "ordered")
    if key is not None:
        as_key(key)
    if check_bool(deterministic, "deterministic") or rate == 0.0:
        indices = jnp.broadcast_to(
            jnp.arange(num_tokens, dtype=jnp.int32), (batch, num_tokens)
        )
        return x, indices
    key = as_key(key, why="patch dropout draws which tokens to keep")
    keep = _num_keep(num_tokens - prefix, rate)
    return _patch_dropout(key, x, keep, prefix, ordered)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _patch_dropout(key, x, keep: int, prefix: int, ordered: bool):
    """Keep ``prefix`` leading tokens and ``keep`` random others of each row."""
    batch, num_tokens = x.shape[:2]
    words = _bits(_seed(key), (batch, num_tokens - prefix))  # ties: lower index
    _, chosen = jax.lax.top_k(words, keep)
    if ordered:
        chosen = jnp.sort(chosen, axis=-1)
    chosen = chosen.astype(jnp.int32) + prefix
    head = jnp.broadcast_to(jnp.arange(prefix, dtype=jnp.int32), (batch, prefix))
    indices = jnp.concatenate([head, chosen], axis=1)
    gather = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, gather, axis=1), indices
