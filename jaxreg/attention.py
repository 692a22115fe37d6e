"""Attention dropout, and drop-in ``attention_fn`` for Flax linen and NNX.

Dropout on attention probabilities (Vaswani et al. 2017, section 5.4; BERT, GPT-2,
ViT and T5 train with it) is where dropout costs most: its mask has one element
per (batch, head, query, key). Flax draws that mask with
``jax.random.bernoulli``, and autodiff then keeps the mask *and* the dropped
probabilities for the backward pass, beside the probabilities themselves.

Here the mask comes from jaxreg's counter-based sampler (:func:`jaxreg.keep_mask`:
a keyed hash of each element's global index), so it is a pure function of the key
and is *regenerated* in the backward pass. :func:`dot_product_attention` goes one
step further: the dropout and the product with the values form one
checkpointed region whose only inputs are the probabilities, the values and the
key's seed words, so the backward pass keeps exactly what attention without
dropout keeps (the probabilities, which the softmax needs anyway) and
recomputes the mask and the dropped probabilities from them.

The three functions:

* :func:`attention_dropout` -- dropout of attention weights, key-only under
  autodiff.
* :func:`dot_product_attention_weights` and :func:`dot_product_attention` --
  drop-ins for ``flax.linen.dot_product_attention(_weights)`` and
  ``flax.nnx.dot_product_attention(_weights)``, accepted as ``attention_fn=`` by
  ``flax.linen.MultiHeadDotProductAttention`` and ``flax.nnx.MultiHeadAttention``.
  Without dropout (inference, or rate 0) they call the fused
  :func:`jax.nn.dot_product_attention` where the arguments allow it.

This module imports neither Flax nor Equinox: a ``module`` given for sowing is
recognised when it is used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import (
    check_bool,
    check_callable,
    check_float_array,
    check_rate,
    check_shard_spec,
    fill_doc,
    float32_or_wider,
    short_repr,
    static_value,
)
from jaxreg._keys import as_key
from jaxreg._numerics import safe_inverse
from jaxreg._sampler import keep_probability, mask_words, select_scaled
from jaxreg.stochastic import dropout

__all__ = [
    "attention_dropout",
    "dot_product_attention",
    "dot_product_attention_weights",
]

_WEIGHTS_LAYOUT = "[batch..., num_heads, q_length, kv_length]"

# Argument texts the two Flax drop-ins share (written into their docstrings by
# `fill_doc`; continuation lines carry the docstrings' indentation).
_ARGS_DOC = {
    "query_key": (
        "query: ``[batch..., q_length, num_heads, qk_depth]``.\n"
        "      key: ``[batch..., kv_length, num_kv_heads, qk_depth]``; "
        "``num_kv_heads``\n"
        "        divides ``num_heads`` (grouped-query attention, as in ``flax.nnx``)."
    ),
    "bias_to_module": (
        "bias: None or an array broadcastable to\n"
        "        ``[batch..., num_heads, q_length, kv_length]``, added to the logits.\n"
        "      mask: None or an array broadcastable to the same shape; weights where "
        "it\n"
        "        is False (0) are masked out.\n"
        "      broadcast_dropout: Flax's meaning: one dropout mask shared over all "
        "batch\n"
        "        and head axes.\n"
        "      dropout_rng: PRNG key for the dropout mask (needed when dropping).\n"
        "      dropout_rate: drop probability in ``[0, 1]`` (the rate is not the keep\n"
        "        rate!); a Python float (validated: negative, NaN or > 1 raise, where\n"
        "        Flax silently disables dropout for a negative rate) or a traced\n"
        "        scalar when the function is called directly (schedules under one\n"
        "        ``jit``).\n"
        "      deterministic: if True, no dropout.\n"
        "      dtype: computation dtype (default: the common dtype of the inputs).\n"
        "      precision: ``jax.lax.Precision`` of the einsums.\n"
        "      module: None, or a Flax module (linen or NNX) into whose "
        "intermediates the\n"
        '        weights before dropout are sown as ``"attention_weights"``.'
    ),
    "nnx_and_shard_spec": (
        "promote_dtype: NNX's dtype promotion function (default: promote to\n"
        "        ``dtype`` or to the common dtype).\n"
        "      is_causal: apply a causal (lower-triangular) mask, as in NNX.\n"
        "      shard_spec: None, or inside ``jax.shard_map`` the ``PartitionSpec`` "
        "of the\n"
        "        attention weights ``[batch..., heads, q, k]``: each shard gets its "
        "block\n"
        "        of the global mask (see :func:`attention_dropout`). On an Explicit "
        "mesh\n"
        "        (``jax.set_mesh``) with inputs split over batch and heads nothing "
        "is\n"
        "        needed."
    ),
}


# --- argument checks ---------------------------------------------------------


def _check_qkv(query, key, value=None):
    """Ranks, batch dimensions, depths, heads and lengths of q, k (and v).

    Returns the number of query heads. Grouped-query attention is allowed: the
    key and value heads must divide the query heads (as in ``flax.nnx``).
    """
    named = [("query", query), ("key", key)]
    if value is not None:
        named.append(("value", value))
    for name, a in named:
        if a.ndim < 3:
            raise ValueError(
                f"`{name}` must have shape [batch..., length, num_heads, depth] "
                f"(rank 3 or more); got shape {a.shape}."
            )
    shapes = ", ".join(f"{n}={a.shape}" for n, a in named)
    if any(a.ndim != query.ndim for _, a in named):
        raise ValueError(f"query, key and value must have the same rank; got {shapes}.")
    if any(a.shape[:-3] != query.shape[:-3] for _, a in named):
        raise ValueError(
            f"query, key and value must have the same batch dimensions; got {shapes}."
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            "`query` and `key` must have the same depth (last axis); got "
            f"query={query.shape}, key={key.shape}."
        )
    heads = query.shape[-2]
    for name, a in named[1:]:
        if a.shape[-2] == 0 or heads % a.shape[-2]:
            raise ValueError(
                f"The heads of `{name}` ({a.shape[-2]}) must divide the heads of "
                f"`query` ({heads}) (grouped-query attention); got {shapes}."
            )
    if value is not None and key.shape[-3] != value.shape[-3]:
        raise ValueError(
            "`key` and `value` must have the same length (axis -3); got "
            f"key={key.shape}, value={value.shape}."
        )
    return heads


def _check_broadcastable(a, shape, name):
    """``a`` as an array, checked to broadcast to the weights' ``shape``."""
    if a is None:
        return None
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(
            f"`{name}` must be None or an array broadcastable to {_WEIGHTS_LAYOUT}; "
            f"got {type(a).__name__} {short_repr(a)}."
        )
    a = jnp.asarray(a)
    ok = a.ndim <= len(shape)
    if ok:
        try:
            ok = np.broadcast_shapes(a.shape, shape) == tuple(shape)
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(
            f"`{name}` of shape {a.shape} does not broadcast to the attention "
            f"weights' shape {tuple(shape)} ({_WEIGHTS_LAYOUT})."
        )
    return a


def _promote(arrays, names, dtype, promote_dtype):
    """Flax's dtype promotion: all to ``dtype``, or to their common dtype."""
    arrays = [check_float_array(a, n) for a, n in zip(arrays, names, strict=True)]
    if promote_dtype is not None:
        check_callable(promote_dtype, "promote_dtype", example="flax.nnx.promote_dtype")
        return list(promote_dtype(tuple(arrays), dtype=dtype))
    if dtype is None:
        dtype = jnp.result_type(*arrays)
    else:
        try:
            dtype = jnp.dtype(dtype)
        except TypeError as err:
            raise TypeError(
                f"`dtype` must be None or a floating dtype; got {short_repr(dtype)}."
            ) from err
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`dtype` must be a floating dtype; got dtype={dtype}.")
    return [a.astype(dtype) for a in arrays]


def _check_einsums(precision, einsum_dot_general, einsum, name):
    if einsum is not None:
        check_callable(einsum, name, example="functools.partial(jnp.einsum)")
        if precision is not None or einsum_dot_general is not None:
            raise ValueError(
                f"`precision`/`einsum_dot_general` and `{name}` are mutually "
                f"exclusive (as in Flax); got precision={precision!r}, "
                f"einsum_dot_general={short_repr(einsum_dot_general)}."
            )
    if einsum_dot_general is not None:
        check_callable(
            einsum_dot_general, "einsum_dot_general", example="lax.dot_general"
        )


def _training(deterministic, dropout_rate, dropout_rng):
    """``(train, rate)``: whether dropout applies, and the checked rate."""
    rate = check_rate(dropout_rate, "dropout_rate")
    deterministic = check_bool(deterministic, "deterministic")
    if dropout_rng is not None:
        as_key(dropout_rng, name="dropout_rng")
    train = not deterministic and static_value(rate) != 0.0
    if train:
        as_key(
            dropout_rng,
            name="dropout_rng",
            why="attention dropout is on (deterministic=False and dropout_rate > 0)",
        )
    return train, rate


def _broadcast_dims(broadcast_dropout: bool, ndim: int) -> tuple[int, ...]:
    """Flax's ``broadcast_dropout``: one mask over the batch and head axes."""
    return tuple(range(ndim - 2)) if broadcast_dropout else ()


# --- the maths ---------------------------------------------------------------


def _einsum(precision, dot_general):
    return functools.partial(
        jnp.einsum,
        precision=precision,
        _dot_general=dot_general if dot_general is not None else jax.lax.dot_general,
    )


def _logits(query, key, bias, mask, is_causal, einsum):
    """Scaled, biased and masked logits ``[batch..., heads, q, k]`` (Flax's order
    of operations: the query is scaled by ``1/sqrt(depth)`` before the product)."""
    dtype = query.dtype
    heads, kv_heads = query.shape[-2], key.shape[-2]
    query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
    if heads == kv_heads:
        logits = einsum("...qhd,...khd->...hqk", query, key)
    else:  # grouped-query attention: each key head serves `group` query heads
        group = heads // kv_heads
        query = query.reshape(query.shape[:-2] + (kv_heads, group, query.shape[-1]))
        logits = einsum("...qhgd,...khd->...hgqk", query, key)
        logits = logits.reshape(logits.shape[:-4] + (heads,) + logits.shape[-2:])
    if bias is not None:
        logits = logits + bias
    if mask is not None or is_causal:
        keep = None if mask is None else mask.astype(bool)
        if is_causal:
            causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))
            keep = causal if keep is None else keep & causal
        logits = jnp.where(keep, logits, jnp.finfo(dtype).min)
    return logits


def _softmax(logits, dtype, force_fp32_for_softmax):
    if force_fp32_for_softmax and dtype != jnp.float32:
        return jax.nn.softmax(logits.astype(jnp.float32))
    return jax.nn.softmax(logits).astype(dtype)


def _sow(module, weights):
    """Sow the weights into ``module``'s intermediates (linen or NNX)."""
    if not hasattr(module, "sow"):
        raise TypeError(
            "`module` must be None or the Flax module (linen or NNX) to sow the "
            f"attention weights into; got {type(module).__name__} "
            f"{short_repr(module)}."
        )
    from flax import nnx  # imported only when a module asks for it

    collection = nnx.Intermediate if isinstance(module, nnx.Module) else "intermediates"
    module.sow(collection, "attention_weights", weights)


def _weighted_values(weights, value, einsum):
    """``sum_k weights[..., h, q, k] * value[..., k, h, d]`` -> ``[..., q, h, d]``,
    with the value heads shared by groups of weight heads (GQA)."""
    heads, v_heads = weights.shape[-3], value.shape[-2]
    if heads == v_heads:
        return einsum("...hqk,...khd->...qhd", weights, value)
    group = heads // v_heads
    weights = weights.reshape(
        weights.shape[:-3] + (v_heads, group) + weights.shape[-2:]
    )
    out = einsum("...hgqk,...khd->...qhgd", weights, value)
    return out.reshape(out.shape[:-3] + (heads, out.shape[-1]))


def _probabilities(logits, static):
    """The softmax of the logits, in Flax's dtypes (see :func:`_softmax`)."""
    return _softmax(logits, static.dtype, static.force_fp32_for_softmax)


def _dropped_values(words, scale, weights, value, static):
    """``_weighted_values(dropout(weights), value)``, mask regenerated from
    ``words``."""
    dropped = select_scaled(
        words, weights, scale, broadcast_dims=static.dims, manual=static.manual
    )
    return _weighted_values(
        dropped, value, _einsum(static.precision, static.dot_general)
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(6,))
def _attend(seed, t, drop_all, scale, logits, value, static):
    """``(dropout(softmax(logits)) @ value, softmax(logits))`` in one region.

    The derivative rule below computes the tangent from the probabilities, the
    values and the seed words alone, inside a checkpoint that saves nothing:
    linearizing it (reverse mode) keeps exactly those, so the backward pass
    stores one probability-sized array (the softmax's derivative needs it in
    any case) and regenerates the mask and the dropped probabilities. Without
    the rule, autodiff would keep the mask or the dropped probabilities and
    the softmax's own intermediates beside the probabilities.
    """
    p = _probabilities(logits, static)
    return _dropped_values((seed, t, drop_all), scale, p, value, static), p


def _attend_tangent(seed, t, drop_all, scale, p, value, dlogits, dvalue, static):
    """Tangents of the output and of the probabilities, linear in
    ``(dlogits, dvalue)``; the mask is regenerated from the seed words."""
    ct = float32_or_wider(p.dtype, dlogits.dtype)
    pf, dl = p.astype(ct), dlogits.astype(ct)
    dp = (pf * (dl - jnp.sum(pf * dl, axis=-1, keepdims=True))).astype(p.dtype)
    words = (seed, t, drop_all)
    dout = _dropped_values(words, scale, p, dvalue, static) + _dropped_values(
        words, scale, dp, value, static
    )
    return dout, dp


_attend_tangent_remat = jax.checkpoint(
    _attend_tangent,
    policy=jax.checkpoint_policies.nothing_saveable,
    static_argnums=(8,),
)


@_attend.defjvp
def _attend_jvp(static, primals, tangents):
    seed, t, drop_all, scale, logits, value = primals
    out, p = _attend(seed, t, drop_all, scale, logits, value, static)
    dout, dp = _attend_tangent_remat(
        seed, t, drop_all, scale, p, value, tangents[4], tangents[5], static
    )
    return (out, p), (dout.astype(out.dtype), dp)


class _Static(NamedTuple):
    """The static (hashable) configuration of :func:`_attend`."""

    dims: tuple[int, ...]
    manual: tuple | None
    precision: object
    dot_general: object
    dtype: object
    force_fp32_for_softmax: bool


def _fused(query, key, value, bias, mask, is_causal):
    """:func:`jax.nn.dot_product_attention` on ``[batch..., len, heads, depth]``
    inputs of any number of batch axes (folded into one), Flax's mask semantics."""
    batch = query.shape[:-3]
    size = math.prod(batch)
    rank = len(batch) + 3

    def four_d(a):
        if a is None:
            return None
        a = a.reshape((1,) * (rank - a.ndim) + a.shape)
        if all(d == 1 for d in a.shape[: len(batch)]):
            return a.reshape((1,) + a.shape[len(batch) :])
        a = jnp.broadcast_to(a, batch + a.shape[len(batch) :])
        return a.reshape((size,) + a.shape[len(batch) :])

    if len(batch) != 1:
        query, key, value = (
            a.reshape((size,) + a.shape[-3:]) for a in (query, key, value)
        )
    if mask is not None:
        mask = mask.astype(bool)
    out = jax.nn.dot_product_attention(
        query, key, value, four_d(bias), four_d(mask), is_causal=is_causal
    )
    return out.reshape(batch + out.shape[-3:])


def _prepare(query, key, value, bias, mask, dtype, promote_dtype):
    arrays, names = [query, key], ["query", "key"]
    if value is not None:
        arrays.append(value)
        names.append("value")
    arrays = _promote(arrays, names, dtype, promote_dtype)
    heads = _check_qkv(*arrays)
    q, k = arrays[0], arrays[1]
    shape = q.shape[:-3] + (heads, q.shape[-3], k.shape[-3])
    bias = _check_broadcastable(bias, shape, "bias")
    mask = _check_broadcastable(mask, shape, "mask")
    return arrays, bias, mask, shape


# --- public functions --------------------------------------------------------


def attention_dropout(
    key,
    weights: jax.typing.ArrayLike,
    rate,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
    shard_spec=None,
) -> jax.Array:
    """Dropout of attention weights, with a mask regenerated in the backward pass.

    Inverted dropout (Srivastava et al. 2014) of the attention weights
    ``[batch..., num_heads, q_length, kv_length]``: each weight is kept with
    probability ``p = keep_probability(rate)`` and divided by ``p``, so
    ``E[attention_dropout(key, w, rate)] == w`` exactly. The mask is
    ``jaxreg.keep_mask(key, weights.shape, rate, broadcast_dims=broadcast_dims)``;
    under autodiff only the key's two seed words are kept, not the mask. Flax's
    ``broadcast_dropout=True`` (one mask shared by all batch and head axes) is
    ``broadcast_dims=tuple(range(weights.ndim - 2))``.

    Args:
      key: PRNG key; may be None when ``deterministic=True`` or ``rate`` is 0.
      weights: floating array of attention weights (probabilities), rank >= 2.
      rate: drop probability in ``[0, 1]`` (the rate is not the keep rate!); a
        Python float, or a traced scalar for schedules under ``jit`` (not
        validated; values outside ``[0, 1]`` act as the nearest end point).
      broadcast_dims: axes along which one mask value is shared.
      deterministic: if True, return ``weights`` unchanged (inference).
      shard_spec: None, or inside ``jax.shard_map`` the ``PartitionSpec`` of
        ``weights``: each shard then gets its block of the global mask (see
        :func:`jaxreg.keep_mask`). On an Explicit mesh nothing is needed: the
        mask is laid out like ``weights``.

    Returns:
      An array with the shape and dtype of ``weights``.

    Raises:
      ValueError: ``rate`` outside ``[0, 1]`` or NaN; ``weights`` of rank below
        2; ``broadcast_dims`` out of range; a missing or batched ``key`` when
        dropping.
      TypeError: non-float ``weights``; ``key`` not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> w = jnp.full((2, 4, 3, 3), 1 / 3)
      >>> y = jaxreg.attention.attention_dropout(jax.random.key(0), w, 0.5)
      >>> sorted({round(v, 4) for v in y.ravel().tolist()})
      [0.0, 0.6667]
      >>> shared = jaxreg.attention.attention_dropout(
      ...     jax.random.key(0), w, 0.5, broadcast_dims=(0, 1))
      >>> bool((shared == shared[:1, :1]).all())
      True

    References:
      Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (section 5.4,
      dropout on attention). https://arxiv.org/abs/1706.03762
      Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting", JMLR 2014. https://jmlr.org/papers/v15/srivastava14a.html
    """
    weights = check_float_array(weights, "weights")
    if weights.ndim < 2:
        raise ValueError(
            f"`weights` must have shape {_WEIGHTS_LAYOUT} (rank 2 or more); got "
            f"shape {weights.shape}."
        )
    return dropout(
        key,
        weights,
        rate,
        broadcast_dims=broadcast_dims,
        deterministic=deterministic,
        shard_spec=shard_spec,
    )


@fill_doc(**_ARGS_DOC)
def dot_product_attention_weights(
    query: jax.typing.ArrayLike,
    key: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    mask: jax.typing.ArrayLike | None = None,
    broadcast_dropout: bool = True,
    dropout_rng=None,
    dropout_rate=0.0,
    deterministic: bool = False,
    dtype=None,
    precision=None,
    module=None,
    *,
    force_fp32_for_softmax: bool = False,
    einsum_dot_general=None,
    einsum=None,
    promote_dtype=None,
    is_causal: bool = False,
    shard_spec=None,
) -> jax.Array:
    """Attention weights ``softmax(q k^T / sqrt(d) + bias)``, masked, with dropout.

    Same arguments and results as ``flax.linen.dot_product_attention_weights``
    and ``flax.nnx.dot_product_attention_weights`` (the union of both; the
    arguments after ``module`` are keyword-only), with jaxreg's dropout: the
    mask is :func:`jaxreg.keep_mask` of ``dropout_rng`` (one mask over the
    batch and head axes if ``broadcast_dropout``), regenerated in the backward
    pass, and the scale is the sampler's realised keep probability, so
    ``E[weights] ==`` the deterministic weights exactly.

    Args:
      {query_key}
      {bias_to_module}
      force_fp32_for_softmax: compute the softmax in float32 (linen's option;
        the result then stays float32, as in linen).
      einsum_dot_general: the ``dot_general`` of the einsum (linen).
      einsum: an einsum to use instead of ``jnp.einsum`` (linen); mutually
        exclusive with ``precision`` and ``einsum_dot_general``.
      {nnx_and_shard_spec}

    Returns:
      The weights ``[batch..., num_heads, q_length, kv_length]``.

    Raises:
      ValueError: shapes of ``query``/``key`` that do not fit (rank, batch
        axes, depth, heads), ``bias`` or ``mask`` that do not broadcast to the
        weights, a bad ``dropout_rate``, a missing ``dropout_rng`` when
        dropping, ``einsum`` together with ``precision``/``einsum_dot_general``.
      TypeError: non-float ``query``/``key``, a non-key ``dropout_rng``, a
        non-bool flag, a ``module`` that cannot sow.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> q = k = jnp.ones((2, 5, 4, 8))  # [batch, length, heads, depth]
      >>> w = jaxreg.attention.dot_product_attention_weights(q, k, is_causal=True)
      >>> w.shape, float(w[0, 0, 1, 0])
      ((2, 4, 5, 5), 0.5)

    References:
      Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
      https://arxiv.org/abs/1706.03762
    """
    _check_einsums(precision, einsum_dot_general, einsum, "einsum")
    flags = (force_fp32_for_softmax, "force_fp32_for_softmax"), (is_causal, "is_causal")
    force_fp32_for_softmax, is_causal = (check_bool(v, n) for v, n in flags)
    broadcast_dropout = check_bool(broadcast_dropout, "broadcast_dropout")
    train, rate = _training(deterministic, dropout_rate, dropout_rng)
    (query, key), bias, mask, shape = _prepare(
        query, key, None, bias, mask, dtype, promote_dtype
    )
    manual = check_shard_spec(shard_spec, len(shape))
    if einsum is None:
        einsum = _einsum(precision, einsum_dot_general)
    logits = _logits(query, key, bias, mask, is_causal, einsum)
    weights = _softmax(logits, query.dtype, force_fp32_for_softmax)
    if module is not None:
        _sow(module, weights)
    if not train:
        return weights
    return dropout(
        dropout_rng,
        weights,
        rate,
        broadcast_dims=_broadcast_dims(broadcast_dropout, weights.ndim),
        shard_spec=None if manual is None else shard_spec,
    )


@fill_doc(**_ARGS_DOC)
def dot_product_attention(
    query: jax.typing.ArrayLike,
    key: jax.typing.ArrayLike,
    value: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    mask: jax.typing.ArrayLike | None = None,
    broadcast_dropout: bool = True,
    dropout_rng=None,
    dropout_rate=0.0,
    deterministic: bool = False,
    dtype=None,
    precision=None,
    module=None,
    *,
    force_fp32_for_softmax: bool = False,
    einsum_dot_general=None,
    qk_attn_weights_einsum=None,
    attn_weights_value_einsum=None,
    promote_dtype=None,
    is_causal: bool = False,
    shard_spec=None,
) -> jax.Array:
    """Dot-product attention with key-only attention dropout; a Flax drop-in.

    Computes ``dropout(softmax(q k^T / sqrt(d) + bias, masked)) v`` with the
    arguments and results of ``flax.linen.dot_product_attention`` and
    ``flax.nnx.dot_product_attention`` (the union of both; the arguments after
    ``module`` are keyword-only), so it can be given as ``attention_fn=`` to
    ``flax.linen.MultiHeadDotProductAttention`` (which passes only the
    arguments in this signature) and to ``flax.nnx.MultiHeadAttention``.

    *Memory.* In training the dropout and the product with ``value`` form one
    checkpointed region: the backward pass keeps only the probabilities (which
    the softmax's derivative needs in any case), ``value`` and the key's seed
    words, and recomputes the mask and the dropped probabilities. So the
    backward pass stores neither a ``(batch, heads, q, k)`` mask nor a second
    probability-sized array, which Flax's function stores both of. (With a
    custom ``attn_weights_value_einsum`` only the mask is regenerated; the
    einsum keeps its input.)

    *Speed.* Without dropout (``deterministic=True`` or a rate of 0) and
    without ``module``, ``precision``, custom einsums or
    ``force_fp32_for_softmax`` on low-precision inputs, and with value depth
    equal to the key depth, it calls :func:`jax.nn.dot_product_attention` (the
    fused path), which equals the explicit computation up to float rounding.

    Args:
      {query_key}
      value: ``[batch..., kv_length, num_v_heads, v_depth]``, ``num_v_heads``
        dividing ``num_heads``.
      {bias_to_module}
      force_fp32_for_softmax: compute the softmax in float32 (linen's option).
      einsum_dot_general: the ``dot_general`` of the einsums (linen).
      qk_attn_weights_einsum: einsum for the weights (linen); given together
        with ``attn_weights_value_einsum``, and mutually exclusive with
        ``precision`` and ``einsum_dot_general``.
      attn_weights_value_einsum: einsum for weights times values (linen).
      {nnx_and_shard_spec}

    Returns:
      ``[batch..., q_length, num_heads, v_depth]``.

    Raises:
      ValueError: shapes of ``query``/``key``/``value`` that do not fit, a
        ``bias`` or ``mask`` that does not broadcast to the weights, a bad
        ``dropout_rate``, a missing ``dropout_rng`` when dropping, only one of
        the two custom einsums, einsums together with ``precision``.
      TypeError: non-float inputs, a non-key ``dropout_rng``, a non-bool flag,
        a ``module`` that cannot sow.

    Examples:
      linen: ``nn.MultiHeadDotProductAttention(num_heads=8, dropout_rate=0.1,
      attention_fn=jaxreg.attention.dot_product_attention)``; NNX:
      ``nnx.MultiHeadAttention(8, 256, 256, dropout_rate=0.1,
      attention_fn=jaxreg.attention.dot_product_attention, rngs=rngs)``.

      >>> import jax, jax.numpy as jnp, jaxreg
      >>> q = jax.random.normal(jax.random.key(0), (2, 6, 4, 8))
      >>> out = jaxreg.attention.dot_product_attention(
      ...     q, q, q, dropout_rng=jax.random.key(1), dropout_rate=0.1)
      >>> out.shape
      (2, 6, 4, 8)
      >>> inference = jaxreg.attention.dot_product_attention(
      ...     q, q, q, dropout_rate=0.1, deterministic=True)
      >>> inference.shape
      (2, 6, 4, 8)

    References:
      Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
      https://arxiv.org/abs/1706.03762
    """
    if (qk_attn_weights_einsum is None) != (attn_weights_value_einsum is None):
        raise ValueError(
            "`qk_attn_weights_einsum` and `attn_weights_value_einsum` must be given "
            f"together (as in Flax); got qk_attn_weights_einsum="
            f"{short_repr(qk_attn_weights_einsum)}, attn_weights_value_einsum="
            f"{short_repr(attn_weights_value_einsum)}."
        )
    _check_einsums(
        precision, einsum_dot_general, qk_attn_weights_einsum, "qk_attn_weights_einsum"
    )
    if attn_weights_value_einsum is not None:
        check_callable(attn_weights_value_einsum, "attn_weights_value_einsum")
    flags = (force_fp32_for_softmax, "force_fp32_for_softmax"), (is_causal, "is_causal")
    force_fp32_for_softmax, is_causal = (check_bool(v, n) for v, n in flags)
    broadcast_dropout = check_bool(broadcast_dropout, "broadcast_dropout")
    train, rate = _training(deterministic, dropout_rate, dropout_rng)
    (query, key, value), bias, mask, shape = _prepare(
        query, key, value, bias, mask, dtype, promote_dtype
    )
    manual = check_shard_spec(shard_spec, len(shape))
    fusable = (
        not train
        and module is None
        and precision is None
        and einsum_dot_general is None
        and qk_attn_weights_einsum is None
        and key.shape == value.shape
        and not (force_fp32_for_softmax and query.dtype != jnp.float32)
    )
    if fusable:
        return _fused(query, key, value, bias, mask, is_causal)
    dims = _broadcast_dims(broadcast_dropout, len(shape))
    if attn_weights_value_einsum is not None or not train:
        weights = dot_product_attention_weights(
            query,
            key,
            bias,
            mask,
            deterministic=True,
            precision=precision,
            module=module,
            force_fp32_for_softmax=force_fp32_for_softmax,
            einsum_dot_general=einsum_dot_general,
            einsum=qk_attn_weights_einsum,
            is_causal=is_causal,
        )
        if attn_weights_value_einsum is None:
            attn_weights_value_einsum = _einsum(precision, einsum_dot_general)
        elif train:
            weights = dropout(
                dropout_rng, weights, rate, broadcast_dims=dims, shard_spec=shard_spec
            )
        return _weighted_values(weights, value, attn_weights_value_einsum)
    einsum = qk_attn_weights_einsum or _einsum(precision, einsum_dot_general)
    logits = _logits(query, key, bias, mask, is_causal, einsum)
    seed, t, drop_all = mask_words(dropout_rng, rate)
    scale = jax.lax.stop_gradient(
        jnp.asarray(safe_inverse(keep_probability(rate)), jnp.float32)
    )
    static = _Static(
        dims,
        manual,
        precision,
        einsum_dot_general,
        jnp.dtype(query.dtype),
        force_fp32_for_softmax,
    )
    out, weights = _attend(seed, t, drop_all, scale, logits, value, static)
    if module is not None:
        _sow(module, weights)
    return out
