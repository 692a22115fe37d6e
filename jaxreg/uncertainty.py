"""Monte-Carlo dropout: predictive mean and variance over sampled masks.

Gal & Ghahramani (2016) show that a network trained with dropout approximates a
Bayesian model, and that keeping dropout on at test time and averaging ``T``
stochastic forward passes estimates the predictive moments:

.. math::

   \\mathbb{E}[y] \\approx \\frac{1}{T}\\sum_{t=1}^{T} \\hat y_t, \\qquad
   \\operatorname{Var}[y] \\approx \\frac{1}{T}\\sum_{t=1}^{T} \\hat y_t^2
   - \\Big(\\frac{1}{T}\\sum_{t=1}^{T} \\hat y_t\\Big)^2 \\;(+\\,\\tau^{-1}),

where ``\\hat y_t`` is the output of a forward pass with freshly sampled masks and
``\\tau^{-1}`` the observation noise of a regression model (not added here).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxreg._checks import check_int, float32_or_wider
from jaxreg._keys import as_key

__all__ = ["mc_dropout_predict"]


def _acc_dtype(dtype):
    return float32_or_wider(dtype)


def _chunk_stats(sample, keys):
    """``(mean, m2)`` pytrees of ``sample`` over a 1-D batch of keys."""
    ys = jax.vmap(sample)(keys)
    ys = jax.tree_util.tree_map(lambda y: y.astype(_acc_dtype(y.dtype)), ys)
    mean = jax.tree_util.tree_map(lambda y: jnp.mean(y, axis=0), ys)
    m2 = jax.tree_util.tree_map(
        lambda y, m: jnp.sum(jnp.square(y - m[None]), axis=0), ys, mean
    )
    return mean, m2


def _combine(count_a, stats_a, count_b, stats_b):
    """Merge two ``(mean, m2)`` summaries (Chan, Golub, LeVeque 1979)."""
    (mean_a, m2_a), (mean_b, m2_b) = stats_a, stats_b
    total = count_a + count_b
    delta = jax.tree_util.tree_map(lambda a, b: b - a, mean_a, mean_b)
    mean = jax.tree_util.tree_map(lambda a, d: a + d * (count_b / total), mean_a, delta)
    m2 = jax.tree_util.tree_map(
        lambda a, b, d: a + b + jnp.square(d) * (count_a * count_b / total),
        m2_a,
        m2_b,
        delta,
    )
    return total, (mean, m2)


def mc_dropout_predict(
    fn: Callable, key, *args, num_samples: int, chunk_size: int | None = None
):
    """Predictive mean and variance of a stochastic forward pass (MC dropout).

    Evaluates ``fn(k_t, *args)`` for the ``T = num_samples`` keys
    ``k = jax.random.split(key, T)`` (vectorized with ``jax.vmap``) and returns,
    elementwise over the output,

    ``mean = (1/T) sum_t y_t`` and ``variance = (1/T) sum_t (y_t - mean)**2``

    (the Monte-Carlo estimate of the model's predictive variance; add the
    observation noise ``1/tau`` yourself for regression). With ``chunk_size``,
    keys are processed ``chunk_size`` at a time in a ``lax.scan`` that merges
    running (mean, sum of squared deviations) summaries (Chan et al.'s parallel
    form of Welford's algorithm), so live memory is ``chunk_size`` outputs rather
    than ``T``, also under ``grad`` (chunks are rematerialised with
    :func:`jax.checkpoint`). A remainder ``T mod chunk_size`` is handled by one
    extra, smaller chunk. Which sample gets which key does not depend on
    ``chunk_size``; only the floating-point summation order does. (With
    ``rbg``/``unsafe_rbg`` keys, JAX draws the random bits of a ``vmap``-ed batch
    of keys from one key of the batch: the samples are still independent draws,
    but not those of a loop over the keys, and they depend on ``chunk_size``.)

    Args:
      fn: a stochastic forward pass ``fn(key, *args) -> pytree of arrays``, e.g.
        a model applied with dropout on (``deterministic=False``).
      key: PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
      *args: passed to ``fn`` unchanged for every sample (may be traced).
      num_samples: number of forward passes ``T``, ``>= 1``.
      chunk_size: forward passes evaluated at once; None evaluates all ``T`` at
        once. A value above ``T`` acts as ``T`` (one chunk; the result is the
        same).

    Returns:
      ``(mean, variance)``, each a pytree like the output of ``fn``. Statistics
      are accumulated and returned in ``promote_types(dtype, float32)`` (float32
      for bfloat16/float16/integer outputs, float64 for float64).

    Raises:
      ValueError: ``num_samples < 1`` or ``chunk_size < 1``; missing or batched
        ``key``.
      TypeError: ``fn`` not callable; non-int ``num_samples``/``chunk_size``;
        ``key`` not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> w = jnp.array([1.0, 2.0])
      >>> fn = lambda k, x: jaxreg.dropout(k, x, 0.5) @ w
      >>> mean, var = jaxreg.mc_dropout_predict(fn, jax.random.key(0), jnp.ones(2),
      ...                                       num_samples=4000, chunk_size=500)
      >>> bool(abs(mean - 3.0) < 0.2), bool(abs(var - 5.0) < 0.6)  # 5 = sum w^2
      (True, True)

    References:
      Gal, Ghahramani. "Dropout as a Bayesian Approximation: Representing Model
      Uncertainty in Deep Learning." ICML 2016. https://arxiv.org/abs/1506.02142
    """
    if not callable(fn):
        raise TypeError(
            "`fn` must be a callable `fn(key, *args)` (a stochastic forward pass); "
            f"got {type(fn).__name__} {fn!r}."
        )
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
    key = as_key(key)
    keys = jax.random.split(key, num_samples)

    def sample(k):
        return fn(k, *args)

    chunk = num_samples if chunk_size is None else min(chunk_size, num_samples)
    num_full, remainder = divmod(num_samples, chunk)
    run = jax.checkpoint(lambda ks: _chunk_stats(sample, ks))

    stats = run(keys[:chunk])
    count = chunk
    if num_full > 1:
        rest = keys[chunk : num_full * chunk].reshape((num_full - 1, chunk))

        def step(carry, ks):
            n, acc = carry
            n, acc = _combine(n, acc, jnp.float32(chunk), run(ks))
            return (n, acc), None

        (_, stats), _ = lax.scan(step, (jnp.float32(count), stats), rest)
        count = num_full * chunk
    if remainder:
        tail = run(keys[num_full * chunk :])
        _, stats = _combine(float(count), stats, float(remainder), tail)
    mean, m2 = stats
    return mean, jax.tree_util.tree_map(lambda s: s / num_samples, m2)
