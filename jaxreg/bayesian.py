"""Learned-rate and Bayesian dropout: concrete dropout and sparse variational dropout.

Both techniques turn the dropout rate into something the training objective learns,
as pure functions of explicit inputs.

* **Concrete dropout** (Gal, Hron & Kendall 2017) learns one drop probability
  ``p = sigmoid(logit_p)`` per layer. The Bernoulli mask is replaced by its
  continuous relaxation (the concrete / relaxed Bernoulli distribution), so the
  gradient of the loss with respect to ``logit_p`` exists and is unbiased for the
  relaxed objective: :func:`concrete_dropout` and
  :func:`concrete_dropout_regularizer`.
* **Sparse variational dropout** (Molchanov, Ashukha & Vetrov 2017) learns one
  Gaussian dropout rate ``alpha`` per *weight*. Weights whose ``log alpha`` grows
  beyond a threshold carry only noise and are pruned at inference:
  :func:`sparse_vd_log_alpha`, :func:`sparse_vd_kl`, :func:`sparse_vd_dense`,
  :func:`sparse_vd_prune`, :func:`sparse_vd_pruned_fraction`.

The random numbers here are continuous (uniform and normal draws), not keep masks,
so they come from :mod:`jax.random` directly rather than from
:func:`jaxreg.keep_mask`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxreg._checks import (
    check_bool,
    check_float_array,
    check_int,
    check_nonnegative,
    check_positive,
    check_same_shape,
    check_threshold,
    float32_or_wider,
)
from jaxreg._keys import as_key
from jaxreg._numerics import clip_traced
from jaxreg._sampler import explicit_sharding

__all__ = [
    "concrete_dropout",
    "concrete_dropout_regularizer",
    "sparse_vd_dense",
    "sparse_vd_kl",
    "sparse_vd_log_alpha",
    "sparse_vd_prune",
    "sparse_vd_pruned_fraction",
]

# Molchanov et al. 2017, eq. (14): -KL ~= k1 sigmoid(k2 + k3 log a) - 0.5 log1p(1/a) - k1
_K1 = 0.63576
_K2 = 1.87320
_K3 = 1.48695
# Added to w**2 inside log(alpha) and to the pre-activation variance.
_EPS = 1e-8


def _exp_limit(dtype) -> float:
    """A bound on ``t`` below which ``exp(t)`` (and ``1 + exp(t)``) is finite."""
    return math.log(float(jnp.finfo(dtype).max)) - 1.0


def _divided_by_keep(a: jax.Array, log_a: jax.Array, logit: jax.Array) -> jax.Array:
    """``a / (1 - p) = a * (1 + exp(logit))`` for ``a >= 0`` with ``log(a)`` given.

    Up to ``logit ~ 87`` (float32) this is the direct product; beyond, where
    ``1 + exp(logit)`` overflows (``0 * inf`` would be NaN), it is evaluated in
    log space, ``exp(log_a + softplus(logit))``, saturating at a finite value.
    Each branch only sees the arguments it is valid for, so gradients stay
    finite.
    """
    limit = _exp_limit(logit.dtype)
    big = logit > limit
    direct = a * (1.0 + jnp.exp(jnp.where(big, 0.0, logit)))
    log_scaled = log_a + jax.nn.softplus(jnp.where(big, logit, 0.0))
    return jnp.where(big, jnp.exp(jnp.minimum(log_scaled, limit)), direct)


def _as_float_param(value, name: str) -> jax.Array:
    """A parameter array (logit, log-variance, ...) that must be floating."""
    return check_float_array(value, name)


def _broadcast_check(small_shape, x_shape, small: str, big: str) -> None:
    try:
        out = jnp.broadcast_shapes(small_shape, x_shape)
    except ValueError as err:
        raise ValueError(
            f"`{small}` with shape {tuple(small_shape)} does not broadcast against "
            f"`{big}` with shape {tuple(x_shape)}; use a scalar (one rate per layer) "
            f"or a shape that broadcasts, e.g. ({x_shape[-1] if x_shape else 1},)."
        ) from err
    if tuple(out) != tuple(x_shape):
        raise ValueError(
            f"`{small}` with shape {tuple(small_shape)} would enlarge `{big}` with "
            f"shape {tuple(x_shape)} to {tuple(out)}; it must broadcast to "
            f"`{big}`'s shape."
        )


# ------------------------------------------------------------------ concrete dropout
def concrete_dropout(
    key,
    x: jax.typing.ArrayLike,
    logit_p: jax.typing.ArrayLike,
    *,
    temperature=0.1,
    deterministic: bool = False,
) -> jax.Array:
    r"""Concrete dropout: dropout with a learnable, differentiable drop probability.

    The drop probability is ``p = sigmoid(logit_p)`` (the rate is not the keep
    rate!). The Bernoulli drop indicator is replaced by its concrete relaxation
    with temperature :math:`t`: for :math:`u \sim U(0, 1)`,

    .. math::

        \tilde z = \sigma\!\left(\frac{\operatorname{logit}(p) + \log u - \log(1-u)}
        {t}\right), \qquad
        y = x \cdot \frac{1 - \tilde z}{1 - p}.

    :math:`\tilde z \in (0, 1)` tends to a Bernoulli(:math:`p`) drop indicator as
    :math:`t \to 0`; for :math:`t > 0` it is a smooth function of ``logit_p``, so
    gradients reach the rate. As in inverted dropout, the kept part is scaled by
    :math:`1/(1-p)` and inference (``deterministic=True``) returns ``x``. The
    probability that :math:`\tilde z > 1/2` is exactly :math:`p` at every
    temperature, but :math:`E[1 - \tilde z]` equals :math:`1 - p` only in the
    limit :math:`t \to 0`, so ``E[y] == x`` holds only approximately (closely
    at the paper's :math:`t = 0.1`). Train
    ``logit_p`` together with the weights and add
    :func:`concrete_dropout_regularizer` to the loss: without it the likelihood
    alone drives ``p`` to 0.

    The uniforms are drawn in float32 (or wider) from :func:`jax.random.uniform`
    on ``[tiny, 1)``, so the logistic noise is always finite.

    Args:
      key: PRNG key (may be None when ``deterministic=True``).
      x: floating array (the input of the layer whose units are dropped).
      logit_p: logit of the drop probability, a floating scalar (one rate per
        layer, as in the paper) or an array that broadcasts to ``x`` (e.g. one
        rate per feature, shape ``(x.shape[-1],)``). Usually a trainable
        parameter; initialise it at ``logit(0.1)`` for example.
      temperature: relaxation temperature :math:`t > 0`; the paper uses 0.1. A
        Python float is validated; a traced value is not.
      deterministic: if True, return ``x`` (the inference output) and ignore
        ``key``.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: ``temperature <= 0`` or NaN; ``logit_p`` does not broadcast to
        ``x``; missing or batched ``key`` on the stochastic path.
      TypeError: non-float ``x`` or ``logit_p``; ``key`` not a PRNG key;
        non-bool ``deterministic``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x = jnp.ones((2, 3))
      >>> y = jaxreg.concrete_dropout(jax.random.key(0), x, jnp.log(0.1 / 0.9))
      >>> y.shape, y.dtype
      ((2, 3), dtype('float32'))
      >>> bool((jaxreg.concrete_dropout(None, x, 0.0, deterministic=True) == x).all())
      True
      >>> # the gradient with respect to the rate is real
      >>> g = jax.grad(lambda l: jaxreg.concrete_dropout(
      ...     jax.random.key(0), x, l).sum())(-2.0)
      >>> bool(jnp.isfinite(g) & (g != 0))
      True

    References:
      Gal, Hron, Kendall. "Concrete Dropout." NeurIPS 2017.
      https://arxiv.org/abs/1705.07832

      Maddison, Mnih, Teh. "The Concrete Distribution: A Continuous Relaxation of
      Discrete Random Variables." ICLR 2017. https://arxiv.org/abs/1611.00712
    """
    x = check_float_array(x)
    logit_p = _as_float_param(logit_p, "logit_p")
    _broadcast_check(logit_p.shape, x.shape, "logit_p", "x")
    temperature = check_positive(temperature, "temperature")
    if check_bool(deterministic, "deterministic"):
        return x
    key = as_key(key)
    ct = float32_or_wider(x.dtype, logit_p.dtype)
    tiny = jnp.finfo(ct).tiny
    sharding = explicit_sharding(x)
    u = jax.random.uniform(
        key, x.shape, ct, minval=tiny, maxval=1.0, out_sharding=sharding
    )
    logit = logit_p.astype(ct)
    t = jnp.asarray(clip_traced(temperature, float(tiny)), ct)  # traced <= 0: tiny
    z = (logit + jnp.log(u) - jnp.log1p(-u)) / t
    # The relaxed keep indicator over 1 - p, p = sigmoid(logit); finite for any
    # logit (in log space where 1 / (1 - p) overflows).
    scale = _divided_by_keep(jax.nn.sigmoid(-z), jax.nn.log_sigmoid(-z), logit)
    return (x.astype(ct) * scale).astype(x.dtype)


def concrete_dropout_regularizer(
    weights,
    logit_p: jax.typing.ArrayLike,
    *,
    input_dim: int,
    weight_regularizer,
    dropout_regularizer,
) -> jax.Array:
    r"""The regularization term of concrete dropout for one layer.

    For a layer whose ``input_dim`` = :math:`K` input units are dropped with
    probability :math:`p = \sigma(\text{logit\_p})` and whose weights (the
    parameters of the layer that *consumes* the dropped units) are :math:`W`,

    .. math::

        R(W, p) = \lambda_w \frac{\lVert W \rVert_2^2}{1 - p}
                  + \lambda_p\, K \left[p \log p + (1 - p) \log (1 - p)\right].

    The second bracket is minus the entropy :math:`H(p)` of a Bernoulli(p)
    variable: it is minimised at :math:`p = 1/2` and scales with the number of
    dropped units, while the first term favours large keep probabilities for
    layers with large weights. Add :math:`R` for every concrete-dropout layer to
    the mean training loss.

    This is the KL term of the paper,
    :math:`\frac{l^2 (1-p)}{2} \lVert M \rVert^2 - K H(p)`, divided by the number
    of training points :math:`N` (and by the model precision :math:`\tau`) and
    written for *inverted* dropout, whose weights are
    :math:`W = (1-p) M`. With prior length-scale :math:`l`, the paper's
    parameterisation is

    .. math::

        \lambda_w = \texttt{weight\_regularizer} = \frac{l^2}{\tau N}, \qquad
        \lambda_p = \texttt{dropout\_regularizer} = \frac{2}{\tau N}

    (the factor 1/2 of the weight term is folded into :math:`\lambda_w`, as in
    the authors' code; for classification take :math:`\tau = 1`).

    Args:
      weights: the weights the dropped units feed (an array or a pytree of arrays,
        e.g. ``{"w": kernel, "b": bias}``); the sum of squares runs over all leaves.
      logit_p: the layer's drop-probability logit, a floating scalar.
      input_dim: :math:`K`, the number of dropped units per example (the input
        feature dimension of the layer), a positive int.
      weight_regularizer: :math:`\lambda_w \ge 0`.
      dropout_regularizer: :math:`\lambda_p \ge 0`.

    Returns:
      A float32 (or wider) scalar.

    Raises:
      ValueError: negative or NaN regularizer strengths; ``input_dim < 1``;
        non-scalar ``logit_p``; empty ``weights``.
      TypeError: non-int ``input_dim``; non-float ``logit_p`` or weights.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> w = jnp.ones((4, 2))
      >>> r = jaxreg.concrete_dropout_regularizer(
      ...     w, 0.0, input_dim=4, weight_regularizer=1e-2, dropout_regularizer=1e-1)
      >>> expected = 1e-2 * 8 / 0.5 + 1e-1 * 4 * jnp.log(0.5)  # p = 1/2
      >>> bool(jnp.allclose(r, expected))
      True

    References:
      Gal, Hron, Kendall. "Concrete Dropout." NeurIPS 2017, eq. (3)-(4) and
      appendix. https://arxiv.org/abs/1705.07832
    """
    logit_p = _as_float_param(logit_p, "logit_p")
    if logit_p.shape != ():
        raise ValueError(
            "`logit_p` must be a scalar (one drop probability per layer) in the "
            f"regularizer; got shape {logit_p.shape}."
        )
    input_dim = check_int(input_dim, "input_dim", minimum=1)
    weight_regularizer = check_nonnegative(weight_regularizer, "weight_regularizer")
    dropout_regularizer = check_nonnegative(dropout_regularizer, "dropout_regularizer")
    leaves = jax.tree.leaves(weights)
    if not leaves:
        raise ValueError("`weights` is empty; pass the layer's kernel (and bias).")
    leaves = [check_float_array(w, "weights") for w in leaves]
    ct = float32_or_wider(logit_p.dtype)
    sq = sum(jnp.sum(jnp.square(w.astype(ct))) for w in leaves)
    logit = logit_p.astype(ct)
    p = jax.nn.sigmoid(logit)
    # p log p + (1 - p) log(1 - p), written with log-sigmoids (no log(0)).
    neg_entropy = p * jax.nn.log_sigmoid(logit) + (1 - p) * jax.nn.log_sigmoid(-logit)
    scaled = jnp.asarray(weight_regularizer, ct) * sq
    positive = scaled > 0  # zero weights: the term is 0, not 0 * inf
    log_scaled = jnp.log(jnp.where(positive, scaled, 1.0))
    weight_term = jnp.where(positive, _divided_by_keep(scaled, log_scaled, logit), 0.0)
    dropout_term = jnp.asarray(dropout_regularizer, ct) * input_dim * neg_entropy
    return weight_term + dropout_term


# ------------------------------------------------------ sparse variational dropout
def sparse_vd_log_alpha(
    w: jax.typing.ArrayLike, log_sigma2: jax.typing.ArrayLike
) -> jax.Array:
    r"""Per-weight log dropout rate of sparse variational dropout.

    In the additive reparameterisation each weight is
    :math:`w_{ij} \sim \mathcal N(\theta_{ij}, \sigma^2_{ij})`, and its Gaussian
    dropout rate is :math:`\alpha_{ij} = \sigma^2_{ij} / \theta^2_{ij}`:

    .. math::

        \log \alpha = \log \sigma^2 - \log(\theta^2 + 10^{-8}).

    The ``1e-8`` keeps :math:`\log\alpha` finite at :math:`\theta = 0`. Nothing is
    clipped.

    Args:
      w: the weight means :math:`\theta` (floating array).
      log_sigma2: :math:`\log \sigma^2`, same shape as ``w``.

    Returns:
      :math:`\log \alpha`, shape of ``w``, float32 or wider.

    Raises:
      ValueError: shape mismatch.
      TypeError: non-float inputs.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> la = jaxreg.sparse_vd_log_alpha(jnp.array([1.0, 0.1]), jnp.zeros(2))
      >>> [round(v, 3) for v in la.tolist()]
      [-0.0, 4.605]

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017, section 4.2. https://arxiv.org/abs/1701.05369
    """
    w = check_float_array(w, "w")
    log_sigma2 = check_float_array(log_sigma2, "log_sigma2")
    check_same_shape(w, log_sigma2, "w", "log_sigma2")  # one variance per weight
    ct = float32_or_wider(w.dtype, log_sigma2.dtype)
    w = w.astype(ct)
    return log_sigma2.astype(ct) - jnp.log(w * w + _EPS)


def sparse_vd_kl(log_alpha) -> jax.Array:
    r"""The approximate KL divergence of sparse variational dropout, summed.

    With the log-uniform prior the KL divergence of each weight depends on its
    :math:`\alpha` only; Molchanov et al. fit

    .. math::

        -\mathrm{KL} \approx k_1 \sigma(k_2 + k_3 \log\alpha)
                      - \tfrac12 \log\!\left(1 + \alpha^{-1}\right) - k_1,

    with :math:`k_1 = 0.63576`, :math:`k_2 = 1.87320`, :math:`k_3 = 1.48695`.
    This function returns :math:`\sum \mathrm{KL}` over all weights (all leaves if
    ``log_alpha`` is a pytree). It is non-negative, decreasing in
    :math:`\log\alpha` and tends to 0 as :math:`\alpha \to \infty`. The training
    objective (negative ELBO per example) is ``mean_nll + kl / N`` for ``N``
    training points. It is evaluated as
    :math:`k_1 \sigma(-k_2 - k_3\log\alpha) + \tfrac12\operatorname{softplus}(-\log\alpha)`,
    the same expression without cancellation, finite and positive for every input.

    Args:
      log_alpha: :math:`\log\alpha` (an array or a pytree of arrays), e.g. from
        :func:`sparse_vd_log_alpha`.

    Returns:
      A scalar, float32 or wider.

    Raises:
      ValueError: empty ``log_alpha``.
      TypeError: non-float leaves.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> kl = jaxreg.sparse_vd_kl(jnp.array([-4.0, 0.0, 4.0, 30.0]))
      >>> bool(kl > 0)
      True
      >>> float(jaxreg.sparse_vd_kl(jnp.array([40.0]))) < 1e-6
      True

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017, eq. (14). https://arxiv.org/abs/1701.05369
    """
    leaves = jax.tree.leaves(log_alpha)
    if not leaves:
        raise ValueError("`log_alpha` is empty; pass at least one array.")
    total = jnp.zeros((), jnp.float32)
    for leaf in leaves:
        la = check_float_array(leaf, "log_alpha")
        la = la.astype(float32_or_wider(la.dtype))
        # KL = k1 (1 - sigmoid(k2 + k3 la)) + 0.5 log1p(exp(-la)), written without
        # the cancellation 1 - sigmoid(.) so that it stays accurate (and > 0) in
        # float32 for large log alpha.
        kl = _K1 * jax.nn.sigmoid(-(_K2 + _K3 * la)) + 0.5 * jax.nn.softplus(-la)
        total = total + jnp.sum(kl)
    return total


def sparse_vd_prune(
    w: jax.typing.ArrayLike, log_sigma2: jax.typing.ArrayLike, *, threshold=3.0
) -> jax.Array:
    r"""The sparsified weights: ``w`` with every weight of large dropout rate zeroed.

    .. math::

        \hat w = w \cdot [\log\alpha \le \text{threshold}].

    A weight with :math:`\log\alpha > 3` (the paper's threshold) has
    :math:`\alpha > 20`: its signal-to-noise ratio is below :math:`1/\sqrt{20}`.

    Args:
      w: weight means.
      log_sigma2: log variances, same shape.
      threshold: the log-alpha threshold, a Python number (``inf`` prunes
        nothing).

    Returns:
      An array with the shape and dtype of ``w``.

    Raises:
      ValueError: shape mismatch; NaN ``threshold``.
      TypeError: non-float inputs; non-number ``threshold``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.sparse_vd_prune(jnp.array([1.0, 0.01]), jnp.zeros(2))
      Array([1., 0.], dtype=float32)

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017, section 4.3. https://arxiv.org/abs/1701.05369
    """
    threshold = check_threshold(threshold)
    la = sparse_vd_log_alpha(w, log_sigma2)
    w = jnp.asarray(w)
    return jnp.where(la <= threshold, w, jnp.zeros((), w.dtype))


def sparse_vd_pruned_fraction(log_alpha, *, threshold=3.0) -> jax.Array:
    """Fraction of weights that sparse variational dropout prunes.

    ``mean(log_alpha > threshold)`` over all elements of all leaves (weighted by
    size, so a pytree of per-layer log alphas gives the whole-network fraction).
    A NaN ``log_alpha`` counts as pruned, as :func:`sparse_vd_prune` zeroes it.

    Args:
      log_alpha: an array or a pytree of arrays of :math:`\\log\\alpha`.
      threshold: the log-alpha threshold (paper: 3), a Python number.

    Returns:
      A float32 scalar in ``[0, 1]``.

    Raises:
      ValueError: empty ``log_alpha``; NaN ``threshold``.
      TypeError: non-float leaves; non-number ``threshold``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> float(jaxreg.sparse_vd_pruned_fraction(jnp.array([-1.0, 2.0, 3.5, 8.0])))
      0.5

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017. https://arxiv.org/abs/1701.05369
    """
    threshold = check_threshold(threshold)
    leaves = jax.tree.leaves(log_alpha)
    if not leaves:
        raise ValueError("`log_alpha` is empty; pass at least one array.")
    pruned = 0
    total = 0
    for leaf in leaves:
        la = check_float_array(leaf, "log_alpha")
        pruned = pruned + jnp.sum(~(la <= threshold))  # as sparse_vd_prune: NaN too
        total += la.size
    return (pruned / total).astype(jnp.float32)


def sparse_vd_dense(
    key,
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    log_sigma2: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    threshold=3.0,
    deterministic: bool = False,
) -> jax.Array:
    r"""A dense layer with sparse variational dropout (local reparameterisation).

    Training samples the pre-activations instead of the weights (the local
    reparameterisation trick): with :math:`\sigma^2 = \exp(\text{log\_sigma2})`,

    .. math::

        \mu = x W + b, \qquad v = x^2 \sigma^2, \qquad
        y = \mu + \sqrt{v + 10^{-8}}\, \varepsilon, \quad
        \varepsilon \sim \mathcal N(0, I),

    one independent :math:`\varepsilon` per output unit and example. Inference
    (``deterministic=True``) uses the weight means with every weight of
    :math:`\log\alpha > \text{threshold}` pruned: :math:`y = x \hat W + b`
    (see :func:`sparse_vd_prune`). Add ``sparse_vd_kl(sparse_vd_log_alpha(w,
    log_sigma2)) / N`` to the mean loss.

    Args:
      key: PRNG key (may be None when ``deterministic=True``).
      x: inputs ``(..., d_in)``, floating.
      w: weight means ``(d_in, d_out)``.
      log_sigma2: log variances ``(d_in, d_out)``; initialise around -10.
      bias: optional bias ``(d_out,)`` (deterministic, not dropped).
      threshold: log-alpha pruning threshold at inference (paper: 3); ``inf``
        disables pruning.
      deterministic: inference path (pruned weight means, no noise, no key).

    Returns:
      ``(..., d_out)`` in the dtype of ``x``.

    Raises:
      ValueError: shape mismatches; missing or batched ``key`` on the stochastic
        path; NaN ``threshold``.
      TypeError: non-float inputs; ``key`` not a PRNG key; non-bool
        ``deterministic``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> x = jnp.ones((5, 3)); w = jnp.full((3, 2), 0.5)
      >>> ls2 = jnp.full((3, 2), -10.0)
      >>> jaxreg.sparse_vd_dense(jax.random.key(0), x, w, ls2).shape
      (5, 2)
      >>> jaxreg.sparse_vd_dense(None, x, w, ls2, deterministic=True)[0]
      Array([1.5, 1.5], dtype=float32)

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017, sections 4.1-4.3. https://arxiv.org/abs/1701.05369

      Kingma, Salimans, Welling. "Variational Dropout and the Local
      Reparameterization Trick." NeurIPS 2015. https://arxiv.org/abs/1506.02557
    """
    x = check_float_array(x)
    w = check_float_array(w, "w")
    if w.ndim != 2:
        raise ValueError(f"`w` must be a (d_in, d_out) matrix; got shape {w.shape}.")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"`x` must end in d_in={w.shape[0]} features to match `w` of shape "
            f"{w.shape}; got x.shape={x.shape}."
        )
    la = sparse_vd_log_alpha(w, log_sigma2)  # checks log_sigma2
    if bias is not None:
        bias = check_float_array(bias, "bias")
        if bias.shape != (w.shape[1],):
            raise ValueError(
                f"`bias` must have shape ({w.shape[1]},) to match `w` of shape "
                f"{w.shape}; got bias.shape={bias.shape}."
            )
    threshold = check_threshold(threshold)
    deterministic = check_bool(deterministic, "deterministic")
    ct = float32_or_wider(x.dtype, w.dtype)
    xc = x.astype(ct)
    wc = w.astype(ct)
    if deterministic:
        y = xc @ jnp.where(la <= threshold, wc, jnp.zeros((), ct))
    else:
        key = as_key(key)
        mu = xc @ wc
        # exp saturates (finite) beyond log_sigma2 ~ 87 so that a zero input
        # never meets an infinite variance (0 * inf = NaN).
        ls2 = jnp.minimum(jnp.asarray(log_sigma2).astype(ct), _exp_limit(ct))
        var = (xc * xc) @ jnp.exp(ls2)
        eps = jax.random.normal(key, mu.shape, ct, out_sharding=explicit_sharding(mu))
        y = mu + jnp.sqrt(var + _EPS) * eps
    if bias is not None:
        y = y + bias.astype(ct)
    return y.astype(x.dtype)
