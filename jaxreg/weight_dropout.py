"""DropConnect: dropout on weights, as pure functions.

DropConnect (Wan et al. 2013) drops individual *connections* of a layer instead of
its output units. For a dense layer with input ``v``, weights ``W`` and a Bernoulli
weight mask ``M`` (each entry kept with probability ``p``), the pre-activation is

.. math::

   u = (M \\odot W)\\, v \\quad\\text{(classic)}, \\qquad
   u = \\tfrac{1}{p} (M \\odot W)\\, v \\quad\\text{(inverted, the default)}.

This module provides

* :func:`dropconnect`: one mask applied to one weight array (the "weight drop" of
  AWD-LSTM, Merity et al. 2018, when applied to recurrent weights);
* :func:`dropconnect_dense`: a dense layer under DropConnect, with one mask shared
  across the batch or, as in the paper, an independent mask per example (computed
  in chunks of the batch, so memory stays bounded);
* :func:`dropconnect_moments` and :func:`dropconnect_inference`: the paper's
  inference rule, a Gaussian moment-matched approximation of the pre-activation
  that is sampled, pushed through the activation and averaged;
* :func:`dropconnect_params`: DropConnect over a whole parameter pytree, so any
  model function (Flax, Equinox, plain JAX) can be trained with it by calling
  ``loss(dropconnect_params(key, params, rate), batch)``.

As everywhere in jaxreg, ``rate`` is the probability of *dropping* a weight (the
rate is not the keep rate!), masks come from :func:`jaxreg.keep_mask`, and scale
factors use ``p = keep_probability(rate)``, the keep probability the sampler
actually realises (``1 - rate`` up to ``2**-33``), so expectations are exact.

References:
  Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
  DropConnect." ICML 2013. https://proceedings.mlr.press/v28/wan13.html

  Merity, Keskar, Socher. "Regularizing and Optimizing LSTM Language Models."
  ICLR 2018. https://arxiv.org/abs/1708.02182
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxreg._checks import (
    check_bool,
    check_float_array,
    check_int,
    check_rate,
    check_shard_spec,
    float32_or_wider,
    spec_entries,
    static_value,
)
from jaxreg._keys import as_key
from jaxreg._numerics import safe_inverse, safe_sqrt
from jaxreg._sampler import (
    explicit_sharding,
    keep_probability,
    seed_words,
    shard_position,
    stacked_keep,
)
from jaxreg._trees import is_float_leaf, resolve_mask
from jaxreg.stochastic import dropout
from jaxreg.uncertainty import mc_dropout_predict

__all__ = [
    "dropconnect",
    "dropconnect_dense",
    "dropconnect_inference",
    "dropconnect_moments",
    "dropconnect_params",
]

# Default budget of per-example masks, in mask elements per chunk:
# chunk * in * out <= 2**18 (1 MiB of float32 masked weights per chunk), so that
# a chunk's masked kernels stay in cache between the hash that draws them and
# the products that read them. Kernels of at least _ONE_BY_ONE elements are
# always processed one example at a time (see _per_example_matmul).
_PER_EXAMPLE_BUDGET = 2**18
_ONE_BY_ONE = 2**16


def _check_dense_args(x, w, bias):
    """Validate the operands of a dense layer ``x @ w + bias``."""
    x = check_float_array(x, "x")
    w = check_float_array(w, "w")
    if w.ndim != 2:
        raise ValueError(
            "`w` must be a kernel of shape (in_features, out_features); got "
            f"w.shape={w.shape}."
        )
    if x.ndim == 0 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            "`x` must have shape (..., in_features) with in_features == w.shape[0]; "
            f"got x.shape={x.shape} and w.shape={w.shape}."
        )
    if bias is not None:
        bias = check_float_array(bias, "bias")
        if bias.shape != (w.shape[1],):
            raise ValueError(
                "`bias` must have shape (out_features,) == (w.shape[1],); got "
                f"bias.shape={bias.shape} and w.shape={w.shape}."
            )
    return x, w, bias


def _add_bias(y: jax.Array, bias) -> jax.Array:
    return y if bias is None else y + bias


def dropconnect(
    key,
    w: jax.typing.ArrayLike,
    rate,
    *,
    inverted: bool = True,
    deterministic: bool = False,
    shard_spec=None,
) -> jax.Array:
    """DropConnect on one weight array: zero each weight with probability ``rate``.

    With the mask ``M ~ Bernoulli(p)`` elementwise, ``p = keep_probability(rate)``:

    * ``inverted=True`` (default): training returns ``M * w / p``, inference
      returns ``w``;
    * ``inverted=False`` (the paper's form): training returns ``M * w``, inference
      returns ``p * w``.

    In both modes ``E_M[train output] == inference output`` exactly. One mask is
    drawn per call; applied to the recurrent kernel of an RNN once per sequence
    (outside the time loop) this is AWD-LSTM's weight drop.

    Args:
      key: PRNG key; may be None when ``deterministic=True`` or ``rate`` is 0 or 1.
      w: floating weight array of any shape.
      rate: probability of dropping a weight, in ``[0, 1]``; a Python float
        (validated now) or a traced scalar (schedules under ``jit``; not
        validated, values outside ``[0, 1]`` act as the nearest end point). At
        ``rate == 1`` the output is zeros.
      inverted: scale kept weights by ``1 / p`` at training (True) or scale by
        ``p`` at inference (False).
      deterministic: return the inference output; ``key`` is ignored.
      shard_spec: None, or inside ``jax.shard_map`` the ``PartitionSpec`` of
        ``w`` (its ``in_specs`` entry): ``w`` is then one shard's block of the
        kernel (tensor parallelism) and gets exactly the block of the global
        call's output, with no communication (see :func:`jaxreg.keep_mask`).

    Returns:
      An array with the shape and dtype of ``w``.

    Raises:
      ValueError: ``rate`` outside ``[0, 1]`` or NaN; missing or batched ``key``;
        a bad ``shard_spec``.
      TypeError: non-float ``w``; ``key`` not a PRNG key; non-bool flags.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> w = jaxreg.dropconnect(jax.random.key(0), jnp.ones((3, 4)), 0.5)
      >>> bool(jnp.all((w == 0) | (w == 2)))
      True
      >>> jaxreg.dropconnect(None, jnp.ones(2), 0.25, inverted=False,
      ...                    deterministic=True)
      Array([0.75, 0.75], dtype=float32)

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013. https://proceedings.mlr.press/v28/wan13.html

      Merity, Keskar, Socher. "Regularizing and Optimizing LSTM Language
      Models." ICLR 2018 (weight drop). https://arxiv.org/abs/1708.02182
    """
    w = check_float_array(w, "w")
    check_bool(inverted, "inverted")
    check_bool(deterministic, "deterministic")
    return dropout(
        key,
        w,
        rate,
        deterministic=deterministic,
        inverted=inverted,
        shard_spec=shard_spec,
    )


def _default_chunk(num_examples: int, in_features: int, out_features: int) -> int:
    per_example = max(1, in_features * out_features)
    return max(1, min(num_examples, _PER_EXAMPLE_BUDGET // per_example))


def dropconnect_dense(
    key,
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    rate,
    *,
    bias: jax.typing.ArrayLike | None = None,
    per_example: bool = False,
    chunk_size: int | None = None,
    inverted: bool = True,
    deterministic: bool = False,
) -> jax.Array:
    """A dense layer ``x @ w + bias`` under DropConnect.

    * ``per_example=False``: one weight mask for the whole batch; the output is
      exactly ``x @ dropconnect(key, w, rate, inverted=inverted) + bias``. Cost:
      one ``in x out`` mask, plus the matmul.
    * ``per_example=True``: an independent weight mask for every example, as in
      Wan et al. 2013. Flattening the batch dimensions of ``x`` row-major into
      examples ``n = 0, 1, ...``, row ``n`` of the output is exactly

      ``x[n] @ dropconnect(jax.random.fold_in(key, n), w, rate) + bias``,

      so the result does not depend on ``chunk_size``. (For ``rbg`` and
      ``unsafe_rbg`` keys, whose bits JAX does not reproduce under ``vmap``,
      ``key`` here is the threefry key with data ``jax.random.bits(key, (2,))``.)
      Cost: the masks grow as ``batch x in x out`` (one random 32-bit word per
      weight per example, drawn once in the forward pass and once more in the
      backward pass, where ``dx`` and ``dw`` share it) and every example needs
      its own masked kernel; for batch 256 and a 512 x 512 kernel a forward +
      backward step costs about 20x a plain dense step on CPU
      (``benchmarks/bench_dropconnect.py``). Live memory is bounded
      by processing the batch in chunks of ``chunk_size`` examples
      (``lax.map``): at most ``chunk_size x in x out`` mask elements exist at
      once, in the forward *and* the backward pass (each chunk's derivative
      rule is a :func:`jax.checkpoint` that saves nothing, so masks are
      regenerated from the seed words rather than stored for the gradient;
      forward- and reverse-mode autodiff both work). Kernels of
      ``2**16`` or more elements are processed one example at a time whatever
      ``chunk_size`` says (a batched product of large masked kernels is several
      times slower on CPU).

    ``deterministic=True`` returns the inference output
    ``x @ dropconnect(None, w, rate, inverted=inverted, deterministic=True) + bias``
    (for both values of ``per_example``), i.e. the mean-field ("mean inference")
    approximation; see :func:`dropconnect_inference` for the paper's rule.

    Args:
      key: PRNG key; may be None when ``deterministic=True`` or ``rate`` is 0 or 1.
      x: floating input of shape ``(..., in_features)``.
      w: floating kernel of shape ``(in_features, out_features)``.
      rate: probability of dropping a weight, in ``[0, 1]``; a Python float or a
        traced scalar (not validated).
      bias: optional bias of shape ``(out_features,)`` (never dropped).
      per_example: independent mask per example (True) or one shared mask.
      chunk_size: examples per chunk when ``per_example=True`` (ignored
        otherwise); ``None`` picks the largest chunk with
        ``chunk_size * in * out <= 2**18`` (1 MiB of float32 kernels, which
        stays in cache). The last chunk is zero-padded.
      inverted: inverted (scale ``1/p`` at training) or classic scaling.
      deterministic: return the inference output; ``key`` is ignored.

    Returns:
      An array of shape ``x.shape[:-1] + (out_features,)`` and dtype
      ``result_type(x, w, bias)``.

    Raises:
      ValueError: shape mismatch between ``x``, ``w`` and ``bias`` (the message
        shows both shapes); bad ``rate``; ``chunk_size < 1``; missing key.
      TypeError: non-float operands; non-int ``chunk_size``; non-bool flags.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> key, x, w = jax.random.key(0), jnp.ones((4, 3)), jnp.ones((3, 2))
      >>> y = jaxreg.dropconnect_dense(key, x, w, 0.5)
      >>> bool(jnp.all(y == x @ jaxreg.dropconnect(key, w, 0.5)))
      True
      >>> y = jaxreg.dropconnect_dense(key, x, w, 0.5, per_example=True,
      ...                              chunk_size=3)
      >>> n = 2
      >>> wn = jaxreg.dropconnect(jax.random.fold_in(key, n), w, 0.5)
      >>> bool(jnp.allclose(y[n], x[n] @ wn))
      True

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013, section 2 (training, one mask per example).
      https://proceedings.mlr.press/v28/wan13.html
    """
    x, w, bias = _check_dense_args(x, w, bias)
    rate = check_rate(rate)
    check_bool(per_example, "per_example")
    check_bool(inverted, "inverted")
    check_bool(deterministic, "deterministic")
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
    value = static_value(rate)
    if deterministic or not per_example or value in (0.0, 1.0):
        kernel = dropconnect(
            key, w, rate, inverted=inverted, deterministic=deterministic
        )
        return _add_bias(x @ kernel, bias)
    key = as_key(key)
    batch_shape = x.shape[:-1]
    in_features, out_features = w.shape
    rows = x.reshape(-1, in_features)
    if rows.shape[0] == 0:
        return _add_bias(x @ w, bias)
    y = _per_example_rows(_vmap_exact_key(key), rows, w, rate, chunk_size, inverted)
    return _add_bias(y.reshape(batch_shape + (out_features,)), bias)


def _per_example_rows(key, rows, w, rate, chunk_size, inverted):
    """Rows ``rows[n] @ dropconnect(fold_in(key, n), w, rate)``.

    Where the rows (examples) or the kernel's columns are split over Explicit
    mesh axes, each device runs its own rows and columns in a ``shard_map`` over
    those axes: a row's mask depends only on the key, the row's global number
    and the weights' global indices, so no communication is needed. (A split of
    the contracted axis is left to JAX: the matmul itself needs a reduction.)
    """
    value = static_value(rate)
    extra = () if value is not None else (rate,)

    def run(key, rows, w, *extra, offset=0, kernel_spec=None):
        n = rows.shape[0]
        chunk = chunk_size or _default_chunk(n, *w.shape)
        traced_rate = extra[0] if extra else None
        return _per_example_matmul(
            key,
            rows,
            w,
            traced_rate,
            offset,
            static_rate=value,
            chunk=min(chunk, n),
            inverted=inverted,
            kernel_spec=kernel_spec,
        )

    x_split, w_split = _split_entries(rows), _split_entries(w)
    if not (x_split[0] or w_split[1]) or x_split[1] or w_split[0]:
        return run(key, rows, w, *extra)
    row_axes, col_axes = x_split[0], w_split[1]
    kernel_spec = P(None, col_axes or None)

    def local(key, rows, w, *extra):
        offset = shard_position(row_axes, jnp.uint32) * rows.shape[0]
        return run(key, rows, w, *extra, offset=offset, kernel_spec=kernel_spec)

    rows_spec = P(row_axes or None, None)
    return jax.shard_map(
        local,
        mesh=(explicit_sharding(rows) or explicit_sharding(w)).mesh,
        in_specs=(P(), rows_spec, kernel_spec) + (P(),) * len(extra),
        out_specs=P(row_axes or None, col_axes or None),
        axis_names=set(row_axes + col_axes),
    )(key, rows, w, *extra)


def _split_entries(a: jax.Array) -> tuple[tuple[str, ...], ...]:
    """The Explicit mesh axes splitting each axis of ``a``."""
    sharding = explicit_sharding(a)
    return spec_entries(sharding.spec if sharding else (), a.ndim)


def _vmap_exact_key(key):
    """``key`` if its random bits are reproducible under ``vmap``, else a threefry key.

    JAX batches the bits of ``rbg``/``unsafe_rbg`` keys under ``vmap`` from a
    single key of the batch (valid samples, but not those of a loop over the keys,
    and dependent on the batch size). Per-example masks are drawn under ``vmap``,
    so for those implementations the example keys are folded from the threefry key
    whose data are the 64 bits ``jax.random.bits(key, (2,))``.
    """
    if str(jax.random.key_impl(key)) == "threefry2x32":
        return key
    data = jax.random.bits(key, (2,), jnp.uint32)
    return jax.random.wrap_key_data(data, impl="threefry2x32")


@partial(jax.jit, static_argnames=("static_rate", "chunk", "inverted", "kernel_spec"))
def _per_example_matmul(
    key, rows, w, traced_rate, offset, *, static_rate, chunk, inverted, kernel_spec
):
    """Rows ``x[n] @ dropconnect(fold_in(key, offset + n), w, rate)``, ``chunk`` at
    a time.

    Jitted at module level (a Python-float rate is a static argument, so it keeps
    its exact static threshold) so that eager calls hit the compilation cache.
    Inside ``shard_map`` ``kernel_spec`` is the ``shard_spec`` of ``w``.

    The seed words of every example's key are drawn up front, in one vectorised
    threefry call; example ``n``'s mask is then
    ``keep_mask(fold_in(key, offset + n), w.shape, rate)`` drawn from its seed
    words (:func:`jaxreg._sampler.stacked_keep`). Kernels of at least
    ``_ONE_BY_ONE`` elements are processed one example per loop step whatever
    ``chunk`` is (measured on CPU: a batched product of several such masked
    kernels costs 5-7x more than one kernel at a time; the result does not
    depend on the chunking). Each step is a ``custom_jvp`` (:func:`_masked_rows`)
    whose tangent is a checkpoint that saves nothing: the backward pass keeps the
    seed words, regenerates each mask once and uses it for both ``dx`` and
    ``dw``; forward-mode autodiff keeps working.
    """
    manual = None if kernel_spec is None else check_shard_spec(kernel_spec, 2)
    n, in_features = rows.shape
    if w.size >= _ONE_BY_ONE:
        chunk = 1
    num_chunks = -(-n // chunk)
    padded = num_chunks * chunk
    if padded != n:
        rows = jnp.concatenate([rows, jnp.zeros((padded - n, in_features), rows.dtype)])
    index = jnp.arange(padded, dtype=jnp.uint32) + jnp.asarray(offset, jnp.uint32)
    seeds = jax.vmap(lambda i: seed_words(jax.random.fold_in(key, i)))(index)
    keep_p = keep_probability(static_rate if traced_rate is None else traced_rate)
    scale = safe_inverse(keep_p) if inverted else 1.0
    if traced_rate is not None:
        traced_rate = lax.stop_gradient(traced_rate)
        scale = lax.stop_gradient(scale)

    def run_chunk(w, xs, sd):
        return _masked_rows(w, xs, sd, traced_rate, scale, static_rate, manual)

    if num_chunks == 1:
        y = run_chunk(w, rows, seeds)
    else:
        xs = rows.reshape(num_chunks, chunk, in_features)
        sd = seeds.reshape(num_chunks, chunk, 2)
        y = lax.map(lambda a: run_chunk(w, a[0], a[1]), (xs, sd))
        y = y.reshape(padded, -1)
    return y[:n]


def _chunk_keep(sd, shape, traced_rate, static_rate, manual):
    """The keep decisions of a chunk's kernels, ``(chunk, in, out)`` booleans."""
    rate = static_rate if traced_rate is None else traced_rate
    return stacked_keep(sd, shape, rate, manual=manual)


@partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def _masked_rows(w, xs, sd, traced_rate, scale, static_rate, manual):
    """Rows ``xs[c] @ where(keep_c, w * scale, 0)`` of one chunk (``sd``: its
    seed words), the masks drawn once and fused into the kernels."""
    keep = _chunk_keep(sd, w.shape, traced_rate, static_rate, manual)
    return jax.vmap(jnp.matmul)(xs, _scaled_where(keep, w, scale))


# A checkpoint that saves nothing: linearizing the tangent keeps only its inputs
# (weights, rows, seed words), so the masks are regenerated in the backward pass.
@partial(
    jax.checkpoint,
    policy=jax.checkpoint_policies.nothing_saveable,
    static_argnums=(7, 8),
)
def _masked_rows_tangent(w, xs, sd, traced_rate, scale, tw, txs, static_rate, manual):
    """Tangent ``txs[c] @ (M_c * w * scale) + xs[c] @ (M_c * tw * scale)``.

    The masks ``M_c`` come out of a ``lax.cond`` whose two branches are the same
    computation on a runtime predicate: a conditional's result is a buffer, so
    the transposed products (``dx`` and ``dw``) read one regenerated mask per
    chunk. Written as a plain elementwise producer, XLA fuses it into each of
    its two consumers and draws every random word twice in the backward pass.
    """

    def draw():
        return _chunk_keep(sd, w.shape, traced_rate, static_rate, manual)

    keep = lax.cond(sd[0, 0] > 0, draw, draw)
    products = jax.vmap(jnp.matmul)
    return products(txs, _scaled_where(keep, w, scale)) + products(
        xs, _scaled_where(keep, tw, scale)
    )


@_masked_rows.defjvp
def _masked_rows_jvp(static_rate, manual, primals, tangents):
    # The rate and the scale (a function of the rounded threshold) have zero
    # derivative; the seed words are integers.
    w, xs, sd, traced_rate, scale = primals
    tw, txs = tangents[0], tangents[1]
    y = _masked_rows(w, xs, sd, traced_rate, scale, static_rate, manual)
    ty = _masked_rows_tangent(
        w, xs, sd, traced_rate, scale, tw, txs, static_rate, manual
    )
    return y, ty


def _scaled_where(keep, w, scale):
    """``where(keep, w * scale, 0)`` in (at least) float32, rounded once to
    ``w.dtype``: the kernels :func:`dropconnect` returns for these masks."""
    ct = float32_or_wider(w.dtype)
    kept = w.astype(ct) * jnp.asarray(scale).astype(ct)
    return jnp.where(keep, kept, jnp.zeros((), ct)).astype(w.dtype)


def _moment_scales(rate, inverted: bool):
    """``(mean_scale, var_scale)`` with ``mean = mean_scale * x@w`` etc.

    With keep probability ``p`` and the kept-weight factor ``s`` (``1/p``
    inverted, ``1`` classic), one masked weight ``s * m * w`` has mean ``p s w``
    and variance ``p (1 - p) s**2 w**2``. At ``p == 0`` the inverted factor is 0
    (the layer outputs the bias), so no division by zero occurs.
    """
    p = keep_probability(rate)
    s = safe_inverse(p) if inverted else 1.0
    return p * s, p * (1.0 - p) * s * s


def dropconnect_moments(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    rate,
    *,
    bias: jax.typing.ArrayLike | None = None,
    inverted: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of the DropConnect pre-activation (Wan et al. 2013).

    For ``u = x @ (s * M * w) + bias`` with ``M ~ Bernoulli(p)`` elementwise,
    ``p = keep_probability(rate)``, the entries of ``u`` are sums of independent
    terms, and the paper approximates each by a Gaussian with the exact moments

    * inverted (``s = 1/p``, the default):
      ``mean = x @ w + bias``, ``var = (1 - p) / p * (x**2) @ (w**2)``
      (``= rate / (1 - rate) * (x**2) @ (w**2)`` up to ``2**-33``);
    * classic (``s = 1``, the paper's form):
      ``mean = p * (x @ w) + bias``, ``var = p * (1 - p) * (x**2) @ (w**2)``.

    These are the exact mean and variance over masks of
    ``dropconnect_dense(key, x, w, rate, bias=bias, inverted=inverted)`` for every
    ``rate`` (at ``rate == 1`` with inverted scaling the layer outputs ``bias``, and
    so do the moments).

    Args:
      x: floating input of shape ``(..., in_features)``.
      w: floating kernel of shape ``(in_features, out_features)``.
      rate: probability of dropping a weight, in ``[0, 1]`` (Python float or a
        traced scalar, not validated).
      bias: optional bias of shape ``(out_features,)``.
      inverted: inverted or classic scaling (as in :func:`dropconnect`).

    Returns:
      ``(mean, variance)``, each of shape ``x.shape[:-1] + (out_features,)`` and
      dtype ``result_type(x, w, bias)`` (computed in at least float32).

    Raises:
      ValueError: shape mismatch (the message shows both shapes); bad ``rate``.
      TypeError: non-float operands; non-bool ``inverted``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> mean, var = jaxreg.dropconnect_moments(jnp.ones((1, 2)), jnp.ones((2, 1)),
      ...                                        0.5)
      >>> mean, var
      (Array([[2.]], dtype=float32), Array([[2.]], dtype=float32))
      >>> jaxreg.dropconnect_moments(jnp.ones((1, 2)), jnp.ones((2, 1)), 0.5,
      ...                            inverted=False)[1]
      Array([[0.5]], dtype=float32)

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013, section 3 (inference, Algorithm 2).
      https://proceedings.mlr.press/v28/wan13.html
    """
    x, w, bias = _check_dense_args(x, w, bias)
    rate = check_rate(rate)
    check_bool(inverted, "inverted")
    out_dtype = jnp.result_type(x, w) if bias is None else jnp.result_type(x, w, bias)
    ct = float32_or_wider(out_dtype)
    xc, wc = x.astype(ct), w.astype(ct)
    mean_scale, var_scale = _moment_scales(rate, inverted)
    mean = _add_bias(mean_scale * (xc @ wc), None if bias is None else bias.astype(ct))
    var = var_scale * ((xc * xc) @ (wc * wc))
    return mean.astype(out_dtype), var.astype(out_dtype)


def dropconnect_inference(
    key,
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    rate,
    activation: Callable[[jax.Array], jax.Array],
    *,
    bias: jax.typing.ArrayLike | None = None,
    num_samples: int = 1000,
    chunk_size: int | None = 100,
    inverted: bool = True,
) -> jax.Array:
    """The paper's inference rule: ``E[activation(u)]`` under the Gaussian approximation.

    Rather than ``activation(E[u])`` (the "mean inference" of dropout), Wan et al.
    2013 approximate each pre-activation by ``u ~ N(mean, var)`` with the moments
    of :func:`dropconnect_moments`, draw ``Z = num_samples`` samples, push them
    through the activation and average:

    .. math::

       r \\approx \\frac{1}{Z} \\sum_{z=1}^{Z} a(u_z), \\qquad
       u_z \\sim \\mathcal{N}(\\mu, \\sigma^2).

    Samples are evaluated ``chunk_size`` at a time (memory
    ``chunk_size x batch x out``) and averaged in float32 with
    :func:`jaxreg.mc_dropout_predict`.

    Args:
      key: PRNG key for the Gaussian samples.
      x: floating input of shape ``(..., in_features)``.
      w: floating kernel of shape ``(in_features, out_features)``.
      rate: probability of dropping a weight, in ``[0, 1]``.
      activation: elementwise activation, e.g. ``jax.nn.relu``.
      bias: optional bias of shape ``(out_features,)``.
      num_samples: number of Gaussian samples ``Z``, ``>= 1``.
      chunk_size: samples evaluated at once (None: all).
      inverted: inverted or classic scaling (as in :func:`dropconnect`).

    Returns:
      The averaged activations, shape ``x.shape[:-1] + (out_features,)``, dtype of
      the pre-activation moments.

    Raises:
      ValueError: shape mismatch, bad ``rate``, ``num_samples < 1``, bad
        ``chunk_size``, missing key.
      TypeError: ``activation`` not callable; non-float operands.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x, w = jnp.array([[1.0, -1.0]]), jnp.array([[1.0], [1.0]])
      >>> r = jaxreg.dropconnect_inference(jax.random.key(0), x, w, 0.5, jax.nn.relu)
      >>> float(r[0, 0]) > 0.0  # E[relu(u)] > relu(E[u]) = 0
      True

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013, section 3 (Algorithm 2).
      https://proceedings.mlr.press/v28/wan13.html
    """
    if not callable(activation):
        raise TypeError(
            "`activation` must be a callable such as `jax.nn.relu`; got "
            f"{type(activation).__name__} {activation!r}."
        )
    mean, var = dropconnect_moments(x, w, rate, bias=bias, inverted=inverted)
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
    key = as_key(key)
    ct = float32_or_wider(mean.dtype)
    mu, sigma = mean.astype(ct), safe_sqrt(var.astype(ct))

    sharding = explicit_sharding(mu)

    def sample(k):
        eps = jax.random.normal(k, mu.shape, ct, out_sharding=sharding)
        return activation(mu + sigma * eps)

    avg, _ = mc_dropout_predict(
        sample, key, num_samples=num_samples, chunk_size=chunk_size
    )
    return avg.astype(mean.dtype)


def dropconnect_params(
    key,
    params,
    rate,
    *,
    mask=None,
    inverted: bool = True,
    deterministic: bool = False,
):
    """DropConnect over a whole parameter pytree.

    Every selected leaf gets its own independent mask (leaf ``i`` in
    ``jax.tree_util`` flattening order uses ``jax.random.fold_in(key, i)``) and is
    transformed exactly as by :func:`dropconnect`; unselected leaves are returned
    unchanged. Any model function can then be trained with DropConnect::

        loss(dropconnect_params(key, params, rate, mask=mask_by_ndim(params)), batch)

    which, applied to the recurrent kernels of an RNN, is AWD-LSTM's weight drop
    (one mask per forward pass, shared by all time steps). Gradients flow to the
    original parameters through the masks.

    Args:
      key: PRNG key; may be None when ``deterministic=True`` or ``rate`` is 0 or 1.
      params: a parameter pytree (Flax linen dict, ``flax.nnx.State``, Equinox
        module, ...). Leaves that are not floating-point (integer counters,
        boolean flags, functions) are returned unchanged, selected or not.
      rate: probability of dropping a weight, in ``[0, 1]``.
      mask: None (every leaf), a pytree of bools with the structure of
        ``params`` or a prefix of it (e.g. from ``jaxreg.mask_by_ndim``), or a
        callable ``params -> such a pytree``: the same meaning as the ``mask`` of
        the penalties and optax transforms.
      inverted: inverted or classic scaling (as in :func:`dropconnect`).
      deterministic: return the inference weights; ``key`` is ignored.

    Returns:
      A pytree with the structure, shapes and dtypes of ``params``.

    Raises:
      ValueError: ``mask`` has another tree structure than ``params`` (both are
        shown); bad ``rate``; missing key.
      TypeError: a ``mask`` leaf that is not a bool (its path is shown).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}
      >>> out = jaxreg.dropconnect_params(jax.random.key(0), params, 0.5,
      ...                                 mask={"kernel": True, "bias": False})
      >>> bool(jnp.all(out["bias"] == 1)), bool(jnp.all((out["kernel"] == 0)
      ...                                                | (out["kernel"] == 2)))
      (True, True)

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013. https://proceedings.mlr.press/v28/wan13.html

      Merity, Keskar, Socher. "Regularizing and Optimizing LSTM Language
      Models." ICLR 2018 (weight-dropped LSTM). https://arxiv.org/abs/1708.02182
    """
    rate = check_rate(rate)
    check_bool(inverted, "inverted")
    check_bool(deterministic, "deterministic")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    flags = jax.tree_util.tree_leaves(resolve_mask(mask, params))
    selected = [
        f and is_float_leaf(leaf) for leaf, f in zip(leaves, flags, strict=True)
    ]
    need_key = (
        not deterministic and static_value(rate) not in (0.0, 1.0) and any(selected)
    )
    if need_key:
        key = as_key(key, why="dropconnect_params is stochastic")
    out = [
        dropconnect(
            jax.random.fold_in(key, i) if need_key else None,
            leaf,
            rate,
            inverted=inverted,
            deterministic=deterministic,
        )
        if sel
        else leaf
        for i, (leaf, sel) in enumerate(zip(leaves, selected, strict=True))
    ]
    return jax.tree_util.tree_unflatten(treedef, out)
