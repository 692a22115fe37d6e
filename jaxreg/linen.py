"""Flax linen modules for every jaxreg technique.

The modules are thin: each one resolves its ``deterministic`` flag and its PRNG key
the way :class:`flax.linen.Dropout` does, then calls the pure function from
:mod:`jaxreg.stochastic` (or :mod:`jaxreg.weight_dropout`, :mod:`jaxreg.penalties`),
so the maths lives in one place. ``import jaxreg`` does not import this module;
``import jaxreg.linen`` brings in Flax.

Conventions shared by all stochastic modules (the same as ``flax.linen.Dropout``):

* ``rate`` is the probability of *dropping* a unit (the rate is not the keep
  rate!). A Python number is validated when the module is constructed; a traced
  value (a schedule under ``jit``) passes through unchecked.
* ``deterministic`` may be given to the constructor *or* to ``__call__``, exactly
  once (:func:`flax.linen.merge_param` semantics). ``True`` selects the inference
  path, which needs no key.
* On the stochastic path the key is ``rng`` if passed to ``__call__``, otherwise
  ``self.make_rng(self.rng_collection)`` (``"dropout"`` by default): pass it as
  ``model.apply(variables, x, rngs={"dropout": key})``. At ``rate`` 0 (and 1 where
  the output is zeros) no key is drawn, as in Flax.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.typing import Dtype, Initializer, PrecisionLike

import jaxreg.penalties as _penalties
import jaxreg.stochastic as _stochastic
import jaxreg.weight_dropout as _weight_dropout
from jaxreg._checks import check_nonnegative, check_rate, static_value
from jaxreg._keys import as_key
from jaxreg._sampler import activation_name

__all__ = [
    "ActivityRegularization",
    "AlphaDropout",
    "DropBlock",
    "DropConnectDense",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "GaussianNoise",
    "SpatialDropout",
    "ZoneoutCell",
]

_INFERENCE_MODES = ("mean", "moments", "mc")


# --------------------------------------------------------------------------------
# Helpers shared by every module in this file (reusable by later additions).
# --------------------------------------------------------------------------------


def _owner(module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _validated(module, check, value, name: str, **kwargs):
    """Run ``check(value, name, **kwargs)``, prefixing errors with the module."""
    try:
        return check(value, name, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{_owner(module)}: {err}") from None


def _check_rate_field(module, name: str = "rate", *, allow_one: bool = True):
    """Validate a rate attribute at construction (traced values pass through)."""
    _validated(module, check_rate, getattr(module, name), name, allow_one=allow_one)


def _check_activation(module, activation):
    """Validate a fusable dropout ``activation`` (the check of :func:`jaxreg.dropout`,
    ValueError prefixed with the module); returns it unchanged."""
    _validated(
        module, lambda value, _: activation_name(value), activation, "activation"
    )
    return activation


def _dense_bias(module):
    """A dense module's ``bias`` parameter as ``nn.Dense`` creates it, or None."""
    if not module.use_bias:
        return None
    shape = (module.features,)
    return module.param("bias", module.bias_init, shape, module.param_dtype)


def _merge_deterministic(module, deterministic) -> bool:
    """``merge_param`` for ``deterministic``, with an error that says what to do."""
    try:
        value = nn.merge_param("deterministic", module.deterministic, deterministic)
    except ValueError as err:
        name = type(module).__name__
        if module.deterministic is None:
            hint = (
                f"Give it exactly once: either `{name}(..., deterministic=not train)` "
                f"when constructing the module, or `{name}(...)(x, "
                "deterministic=not train)` when calling it. True selects the "
                "inference path (no key needed)."
            )
        else:
            hint = (
                f"It was set to {module.deterministic!r} in the constructor; remove "
                "one of the two (construct with `deterministic=None` to choose at "
                "call time)."
            )
        raise ValueError(f"{_owner(module)}: {err} {hint}") from err
    if not isinstance(value, bool):
        raise TypeError(
            f"{_owner(module)}: `deterministic` must be a Python bool (it selects "
            f"the code path at trace time); got {type(value).__name__} {value!r}."
        )
    return value


def _needs_key(rate, *, zero_at_one: bool = True) -> bool:
    """False when a concrete ``rate`` makes the output key-independent."""
    value = static_value(rate)
    if value is None:
        return True
    return not (value == 0.0 or (zero_at_one and value == 1.0))


def _key(module, rng, collection: str | None = None):
    """The key for one stochastic call: ``rng`` if given, else ``make_rng``.

    Missing collections raise :class:`flax.errors.InvalidRngError` (as Flax does)
    with a message that says how to provide the key.
    """
    if rng is not None:
        return _validated(module, lambda k, n: as_key(k, name=n), rng, "rng")
    collection = module.rng_collection if collection is None else collection
    try:
        return module.make_rng(collection)
    except flax.errors.InvalidRngError as err:
        raise flax.errors.InvalidRngError(
            f"{_owner(module)} (at {'/'.join(module.scope.path) or 'top level'}) "
            f'needs a PRNG key from the "{collection}" rng collection, and none was '
            f"given. Pass it to apply: `model.apply(variables, x, "
            f"rngs={{'{collection}': jax.random.key(seed)}})` (use a fresh key for "
            "every step); inside a lifted transform (nn.scan, nn.RNN, nn.vmap) "
            f"also list it in `split_rngs`, e.g. `split_rngs={{'params': False, "
            f"'{collection}': True}}`. Or pass `rng=key` when calling the module, or "
            f"use the inference path with `deterministic=True`. Flax said: {err}"
        ) from err


def _apply_stochastic(
    module, fn, inputs, rate, deterministic, rng, *, zero_at_one=True, **kwargs
):
    """``fn(key, inputs, rate, deterministic=det, **kwargs)`` for one call.

    ``det`` is ``deterministic`` merged with the module's field; ``key`` is None on
    the inference path and where a concrete ``rate`` makes the output
    key-independent (0, and 1 if ``zero_at_one``), otherwise :func:`_key`'s.
    """
    det = _merge_deterministic(module, deterministic)
    needs = _needs_key(rate, zero_at_one=zero_at_one)
    key = None if det or not needs else _key(module, rng)
    return fn(key, inputs, rate, deterministic=det, **kwargs)


# --------------------------------------------------------------------------------
# The dropout family on activations.
# --------------------------------------------------------------------------------


class Dropout(nn.Module):
    """Dropout: a drop-in replacement for :class:`flax.linen.Dropout`.

    Same fields, same ``__call__(inputs, deterministic=None, rng=None)`` contract
    and the same edge cases (``rate == 0`` or ``deterministic`` returns the input,
    ``rate == 1`` returns zeros with finite gradients, neither draws a key); the
    mask comes from :func:`jaxreg.dropout`, whose scaling uses the keep probability
    the sampler realises, so ``E[output] == inputs`` exactly. Training output:
    ``inputs * mask / (1 - rate)``. With ``activation`` set, ``f(inputs)`` takes
    the place of ``inputs`` throughout, computed fused with the mask.

    Attributes:
      rate: the dropout probability (not the keep rate!), in ``[0, 1]``.
      broadcast_dims: dimensions that share one mask value (e.g. the time axis for
        variational RNN dropout).
      deterministic: if True the inputs are returned unchanged; may instead be
        given at call time (exactly one of the two).
      rng_collection: the rng collection the key is drawn from.
      inverted: if False use classic dropout (``inputs * mask`` when training,
        ``inputs * (1 - rate)`` at inference), see :func:`jaxreg.dropout`.
      activation: None, or an elementwise activation the module applies to its
        inputs *before* dropping them, fused with the dropout: ``"tanh"``,
        ``"sigmoid"``, ``"relu"``, ``"elu"``, ``"softplus"`` or the matching
        function (``nn.tanh``, ``nn.relu``, ``jnp.tanh``, ...). The output is
        that of the unfused ``Dropout(...)(f(inputs))`` (``f(inputs)`` when
        deterministic, times ``1 - rate`` if ``inverted=False``), but the reason
        to fuse is memory: under autodiff the layer keeps only its output for
        the backward pass, where ``Dense -> f -> Dropout`` also keeps ``f``'s
        output, one more activation-sized buffer per layer. See the
        ``activation`` argument of :func:`jaxreg.dropout`.

    Raises:
      ValueError: at construction, ``rate`` outside ``[0, 1]`` or NaN, or an
        ``activation`` that cannot be fused; at call, ``deterministic`` given
        nowhere or twice.
      flax.errors.InvalidRngError: the ``rng_collection`` key was not passed to
        ``apply`` (and no ``rng`` was given).

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxreg.linen as jl
      >>> class MLP(nn.Module):
      ...   @nn.compact
      ...   def __call__(self, x, train):
      ...     x = nn.Dense(4)(x)
      ...     return jl.Dropout(0.5, deterministic=not train)(x)
      >>> x = jnp.ones((1, 3))
      >>> variables = MLP().init(jax.random.key(0), x, train=False)
      >>> y = MLP().apply(variables, x, train=True,
      ...                 rngs={"dropout": jax.random.key(1)})
      >>> y.shape
      (1, 4)

      The fused activation (``Dense -> tanh -> Dropout`` in one layer):

      >>> layer = jl.Dropout(0.5, activation="tanh")
      >>> pre = jnp.array([-1.0, 0.0, 2.0])
      >>> bool(jnp.all(layer.apply({}, pre, deterministic=True) == jnp.tanh(pre)))
      True
      >>> y = layer.apply({}, pre, deterministic=False,
      ...                 rngs={"dropout": jax.random.key(1)})
      >>> bool(jnp.all((y == 0) | (y == 2 * jnp.tanh(pre))))
      True

    References:
      Srivastava et al. "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting." JMLR 15, 2014. https://jmlr.org/papers/v15/srivastava14a.html
    """

    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"
    inverted: bool = True
    activation: str | Callable | None = None

    def __post_init__(self):
        _check_rate_field(self)
        _check_activation(self, self.activation)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Apply dropout to ``inputs`` (to ``activation(inputs)``, fused, if set).

        Args:
          inputs: floating array.
          deterministic: overrides nothing: give it here only if the constructor
            did not.
          rng: optional key; by default ``self.make_rng(self.rng_collection)``.

        Returns:
          An array with the shape and dtype of ``inputs``.
        """
        return _apply_stochastic(
            self,
            _stochastic.dropout,
            inputs,
            self.rate,
            deterministic,
            rng,
            broadcast_dims=self.broadcast_dims,
            inverted=self.inverted,
            activation=self.activation,
        )


class SpatialDropout(nn.Module):
    """Spatial dropout: drop whole channels of 1-D/2-D/3-D feature maps.

    One keep decision per (example, channel), shared over all spatial positions;
    see :func:`jaxreg.spatial_dropout`. Axis 0 is the batch.

    Attributes:
      rate: probability of dropping a channel, in ``[0, 1]``.
      channel_axis: the channel axis (``-1`` for NWC/NHWC/NDHWC, ``1`` for
        channels-first).
      deterministic: if True return the inputs (constructor or call, once).
      rng_collection: the rng collection the key is drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> x = jnp.ones((2, 4, 4, 3))
      >>> y = jl.SpatialDropout(0.5).apply({}, x, deterministic=False,
      ...                                  rngs={"dropout": jax.random.key(0)})
      >>> bool(jnp.all(y == y[:, :1, :1, :]))  # constant over space
      True

    References:
      Tompson et al. "Efficient Object Localization Using Convolutional
      Networks." CVPR 2015. https://arxiv.org/abs/1411.4280
    """

    rate: float
    channel_axis: int = -1
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_rate_field(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        return _apply_stochastic(
            self,
            _stochastic.spatial_dropout,
            inputs,
            self.rate,
            deterministic,
            rng,
            channel_axis=self.channel_axis,
        )


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise with mean 1 and variance ``rate / (1 - rate)``.

    Training: ``inputs * (1 + sqrt(rate / (1 - rate)) * eps)``, ``eps ~ N(0, 1)``;
    inference returns the inputs. See :func:`jaxreg.gaussian_dropout`.

    Attributes:
      rate: drop-equivalent rate in ``[0, 1)``.
      deterministic: if True return the inputs (constructor or call, once).
      rng_collection: the rng collection the key is drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.GaussianDropout(0.2, deterministic=True)
      >>> layer.apply({}, jnp.ones(3))
      Array([1., 1., 1.], dtype=float32)

    References:
      Srivastava et al. 2014, section 10 ("Multiplicative Gaussian Noise").
      https://jmlr.org/papers/v15/srivastava14a.html
    """

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_rate_field(self, allow_one=False)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        return _apply_stochastic(
            self,
            _stochastic.gaussian_dropout,
            inputs,
            self.rate,
            deterministic,
            rng,
            zero_at_one=False,
        )


class GaussianNoise(nn.Module):
    """Additive zero-mean Gaussian noise: ``inputs + stddev * eps`` when training.

    See :func:`jaxreg.gaussian_noise`. The key comes from the ``"dropout"``
    collection by default, so the usual ``rngs={"dropout": key}`` serves it.

    Attributes:
      stddev: noise standard deviation, ``>= 0``.
      deterministic: if True return the inputs (constructor or call, once).
      rng_collection: the rng collection the key is drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> y = jl.GaussianNoise(0.1).apply({}, jnp.zeros(3), deterministic=False,
      ...                                 rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (3,)

    References:
      Bishop. "Training with Noise is Equivalent to Tikhonov Regularization."
      Neural Computation 7(1), 1995. https://doi.org/10.1162/neco.1995.7.1.108
    """

    stddev: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _validated(self, check_nonnegative, self.stddev, "stddev")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        return _apply_stochastic(
            self,
            _stochastic.gaussian_noise,
            inputs,
            self.stddev,
            deterministic,
            rng,
            zero_at_one=False,
        )


class AlphaDropout(nn.Module):
    """Alpha dropout for self-normalizing (SELU) networks.

    Dropped units are set to the SELU saturation value and an affine correction
    keeps zero mean and unit variance; see :func:`jaxreg.alpha_dropout`.

    Attributes:
      rate: drop probability in ``[0, 1]``.
      deterministic: if True return the inputs (constructor or call, once).
      rng_collection: the rng collection the key is drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = jl.AlphaDropout(0.1, deterministic=False).apply(
      ...     {}, x, rngs={"dropout": jax.random.key(1)})
      >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
      True

    References:
      Klambauer et al. "Self-Normalizing Neural Networks." NeurIPS 2017.
      https://arxiv.org/abs/1706.02515
    """

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_rate_field(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        return _apply_stochastic(
            self, _stochastic.alpha_dropout, inputs, self.rate, deterministic, rng
        )


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per example (or per batch).

    Apply it to the branch before adding the shortcut:
    ``x + DropPath(rate)(branch(x), deterministic=not train)``. See
    :func:`jaxreg.drop_path`.

    Attributes:
      rate: probability of dropping the branch, in ``[0, 1]``.
      mode: ``"row"`` (per example, as in timm) or ``"batch"`` (the whole batch,
        as in Huang et al. 2016).
      deterministic: if True return the inputs (constructor or call, once).
      rng_collection: the rng collection the key is drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> y = jl.DropPath(0.5).apply({}, jnp.ones((4, 3)), deterministic=False,
      ...                            rngs={"dropout": jax.random.key(0)})
      >>> bool(jnp.all((y == 0).all(1) | (y == 2).all(1)))  # whole rows
      True

    References:
      Huang et al. "Deep Networks with Stochastic Depth." ECCV 2016.
      https://arxiv.org/abs/1603.09382
    """

    rate: float
    mode: str = "row"
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_rate_field(self)
        if self.mode not in ("row", "batch"):
            raise ValueError(
                f"{_owner(self)}: `mode` must be 'row' or 'batch'; got "
                f"mode={self.mode!r}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        return _apply_stochastic(
            self,
            _stochastic.drop_path,
            inputs,
            self.rate,
            deterministic,
            rng,
            mode=self.mode,
        )


class DropBlock(nn.Module):
    """DropBlock: drop contiguous ``block_size x block_size`` regions (NHWC).

    Each position is dropped with probability ``rate``; kept units are rescaled so
    ``E[output] == inputs``. See :func:`jaxreg.dropblock`.

    Attributes:
      rate: per-position drop probability, in ``[0, 1]``.
      block_size: side of the square blocks (``>= 1``).
      deterministic: if True return the inputs (constructor or call, once).
      rng_collection: the rng collection the key is drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.DropBlock(0.1, block_size=3, deterministic=False)
      >>> y = layer.apply({}, jnp.ones((2, 8, 8, 4)),
      ...                 rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (2, 8, 8, 4)

    References:
      Ghiasi, Lin, Le. "DropBlock: A regularization method for convolutional
      networks." NeurIPS 2018. https://arxiv.org/abs/1810.12890
    """

    rate: float
    block_size: int = 7
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_rate_field(self)
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(
                f"{_owner(self)}: `block_size` must be an int >= 1; got "
                f"block_size={bs!r}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        return _apply_stochastic(
            self,
            _stochastic.dropblock,
            inputs,
            self.rate,
            deterministic,
            rng,
            block_size=self.block_size,
        )


# --------------------------------------------------------------------------------
# DropConnect.
# --------------------------------------------------------------------------------


def _matmul_precision(module):
    """A context applying ``module.precision`` to the matmuls of the pure functions."""
    precision = module.precision
    if precision is None:
        return contextlib.nullcontext()
    if isinstance(precision, jax.lax.Precision):
        return jax.default_matmul_precision(precision.name.lower())
    if isinstance(precision, str):
        return jax.default_matmul_precision(precision)
    raise ValueError(
        f"{_owner(module)}: `precision` must be None, a `jax.lax.Precision` or a "
        f"string such as 'highest'; got precision={precision!r} (per-operand "
        "precision pairs are not supported)."
    )


def _check_dropconnect_fields(module):
    _check_rate_field(module)
    if module.inference not in _INFERENCE_MODES:
        raise ValueError(
            f"{_owner(module)}: `inference` must be one of {_INFERENCE_MODES}; got "
            f"inference={module.inference!r}."
        )
    if not isinstance(module.per_example, bool):
        raise TypeError(
            f"{_owner(module)}: `per_example` must be a bool; got "
            f"{module.per_example!r}."
        )
    ns = module.num_samples
    if isinstance(ns, bool) or not isinstance(ns, int) or ns < 1:
        raise ValueError(
            f"{_owner(module)}: `num_samples` must be an int >= 1; got "
            f"num_samples={ns!r}."
        )
    if module.activation is not None and not callable(module.activation):
        raise TypeError(
            f"{_owner(module)}: `activation` must be None or a callable such as "
            f"`jax.nn.relu`; got {module.activation!r}."
        )


def _dropconnect_apply(module, key_fn, x, kernel, bias, deterministic: bool):
    """The DropConnect forward pass shared by the linen and NNX modules.

    ``key_fn()`` returns the key; it is called only when one is needed.
    """
    act = module.activation if module.activation is not None else _identity
    rate = module.rate
    with _matmul_precision(module):
        if not deterministic or module.inference == "mc":
            key = key_fn() if _needs_key(rate) else None
            u = _weight_dropout.dropconnect_dense(
                key, x, kernel, rate, bias=bias, per_example=module.per_example
            )
            return act(u)
        if module.inference == "mean" or not _needs_key(rate):
            # At rate 0 or 1 the pre-activation has zero variance: exact.
            u = _weight_dropout.dropconnect_dense(
                None, x, kernel, rate, bias=bias, deterministic=True
            )
            return act(u)
        return _weight_dropout.dropconnect_inference(
            key_fn(), x, kernel, rate, act, bias=bias, num_samples=module.num_samples
        )


def _identity(u):
    return u


class DropConnectDense(nn.Module):
    """A dense layer with DropConnect: a drop-in for :class:`flax.linen.Dense`.

    Same fields and parameters as ``nn.Dense`` (``kernel`` of shape
    ``(in, features)``, ``bias``), so checkpoints are interchangeable; while
    training each *weight* is dropped with probability ``rate`` and the kept ones
    are scaled by ``1 / (1 - rate)`` (:func:`jaxreg.dropconnect_dense`), so
    ``E[output] == inputs @ kernel + bias``. ``activation`` (default: none, like
    ``nn.Dense``) is applied after the layer; it matters for the paper's inference
    rule.

    Inference (``deterministic=True``) follows ``inference``:

    * ``"mean"``: ``activation(inputs @ kernel + bias)`` (mean-field; no key);
    * ``"moments"``: the rule of Wan et al. 2013: each pre-activation is
      approximated by ``N(mean, var)`` (:func:`jaxreg.dropconnect_moments`),
      ``num_samples`` samples are pushed through ``activation`` and averaged
      (:func:`jaxreg.dropconnect_inference`); needs a key at inference too;
    * ``"mc"``: one sampled mask, as in training (Monte-Carlo DropConnect; average
      several calls, e.g. with :func:`jaxreg.mc_dropout_predict`); needs a key.

    Attributes:
      features: number of output features.
      use_bias: whether to add a bias.
      dtype: computation dtype (inferred from inputs and params if None).
      param_dtype: dtype of the parameters.
      precision: matmul precision (None, a ``jax.lax.Precision`` or a string).
      kernel_init: kernel initializer.
      bias_init: bias initializer.
      rate: probability of dropping a weight, in ``[0, 1]``.
      per_example: an independent weight mask per example (as in the paper) or
        one mask for the batch.
      inference: ``"mean"``, ``"moments"`` or ``"mc"``, see above.
      activation: elementwise activation applied to the output, or None.
      num_samples: Gaussian samples per unit for ``inference="moments"``.
      deterministic: inference path if True (constructor or call, once).
      rng_collection: the rng collection keys are drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.DropConnectDense(3, rate=0.5, activation=jax.nn.relu)
      >>> x = jnp.ones((2, 4))
      >>> variables = layer.init(jax.random.key(0), x, deterministic=True)
      >>> jax.tree.map(jnp.shape, variables["params"])
      {'bias': (3,), 'kernel': (4, 3)}
      >>> y = layer.apply(variables, x, deterministic=False,
      ...                 rngs={"dropout": jax.random.key(1)})
      >>> y.shape
      (2, 3)

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013. https://proceedings.mlr.press/v28/wan13.html
    """

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    rate: float = 0.5
    per_example: bool = False
    inference: str = "mean"
    activation: Callable[[jax.Array], jax.Array] | None = None
    num_samples: int = 1000
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_dropconnect_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``."""
        det = _merge_deterministic(self, deterministic)
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (jnp.shape(inputs)[-1], self.features),
            self.param_dtype,
        )
        bias = _dense_bias(self)
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return _dropconnect_apply(
            self, lambda: _key(self, rng), inputs, kernel, bias, det
        )


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------


def _check_rate_tree(module, rate, *, where: str = "rate"):
    """Validate a scalar rate or a pytree of rates (one per carry leaf)."""
    leaves = jax.tree_util.tree_leaves(rate)
    if not leaves:
        raise ValueError(
            f"{_owner(module)}: `{where}` must be a rate or a pytree of rates; got "
            f"{rate!r}."
        )
    for leaf in leaves:
        _validated(module, check_rate, leaf, where)


def _zoneout_carry(module, key, carry, new_carry, deterministic: bool):
    """Apply :func:`jaxreg.zoneout` to every leaf of the carry.

    ``module.rate`` is a scalar (used for every leaf) or a pytree with the carry's
    structure. Leaf ``i`` (in ``jax.tree_util`` order) uses ``split(key, n)[i]``.
    Returns the new carry and a map ``id(new leaf) -> zoned leaf``.
    """
    new_leaves, treedef = jax.tree_util.tree_flatten(new_carry)
    old_leaves = treedef.flatten_up_to(carry)
    rate = module.rate
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(rate)):
        rates = [rate] * len(new_leaves)
    else:
        try:
            rates = treedef.flatten_up_to(rate)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{_owner(module)}: `rate` must be one rate or a pytree with the "
                f"structure of the cell's carry {treedef}; got rate={rate!r}."
            ) from err
    keys = (
        [None] * len(new_leaves)
        if key is None
        else jax.random.split(key, len(new_leaves))
    )
    zoned = [
        _stochastic.zoneout(k, h_prev, h_new, r, deterministic=deterministic)
        for k, h_prev, h_new, r in zip(keys, old_leaves, new_leaves, rates, strict=True)
    ]
    swap = {id(a): b for a, b in zip(new_leaves, zoned, strict=True)}
    return jax.tree_util.tree_unflatten(treedef, zoned), swap


def _zoneout_outputs(outputs, swap):
    """Replace outputs that *are* new carry leaves by their zoned-out values."""
    return jax.tree_util.tree_map(lambda y: swap.get(id(y), y), outputs)


class ZoneoutCell(nn.RNNCellBase):
    """Zoneout around any Flax RNN cell: units keep their previous value at random.

    ``ZoneoutCell(cell, rate)`` has the wrapped cell's interface (``(carry,
    inputs) -> (carry, outputs)``, ``initialize_carry``, ``num_feature_axes``), so
    it works with :class:`flax.linen.RNN`. Every leaf of the new carry goes through
    :func:`jaxreg.zoneout`: when training each unit keeps its previous value with
    probability ``rate``; at inference the carry is the expectation
    ``(1 - rate) * h_new + rate * h_prev``. Outputs that are the new hidden state
    itself (as in every Flax cell: ``LSTMCell`` returns ``h``, ``GRUCell`` the
    carry) are replaced by the zoned-out state; other outputs pass through.

    Keys: one key per call (``rng`` or ``make_rng(rng_collection)``), split into
    one key per carry leaf. Inside :class:`flax.linen.RNN` (an ``nn.scan``) the
    masks vary per time step when the scan splits the ``rng_collection``
    (``split_rngs={"params": False, "dropout": True}``) and are shared across
    steps otherwise.

    Attributes:
      cell: the wrapped cell (an :class:`flax.linen.RNNCellBase`).
      rate: probability of keeping the previous value: one rate, or a pytree with
        the carry's structure (e.g. ``(0.5, 0.05)`` for ``LSTMCell``'s ``(c, h)``,
        the values of Krueger et al.).
      deterministic: if True use the expectation (constructor or call, once).
      rng_collection: the rng collection the key is drawn from.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxreg.linen as jl
      >>> rnn = nn.RNN(jl.ZoneoutCell(nn.LSTMCell(8), (0.5, 0.05),
      ...                             deterministic=False),
      ...              split_rngs={"params": False, "dropout": True})
      >>> x = jnp.ones((2, 5, 3))
      >>> variables = rnn.init(jax.random.key(0), x)
      >>> rnn.apply(variables, x, rngs={"dropout": jax.random.key(1)}).shape
      (2, 5, 8)

    References:
      Krueger et al. "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
      Activations." ICLR 2017. https://arxiv.org/abs/1606.01305
    """

    cell: nn.RNNCellBase
    rate: Any
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_rate_tree(self, self.rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, carry, inputs, deterministic: bool | None = None, rng=None):
        det = _merge_deterministic(self, deterministic)
        new_carry, outputs = self.cell(carry, inputs)
        needs = any(_needs_key(r) for r in jax.tree_util.tree_leaves(self.rate))
        key = None if det or not needs else _key(self, rng)
        new_carry, swap = _zoneout_carry(self, key, carry, new_carry, det)
        return new_carry, _zoneout_outputs(outputs, swap)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        """The wrapped cell's initial carry."""
        return self.cell.initialize_carry(rng, input_shape)

    @property
    def num_feature_axes(self) -> int:
        """The wrapped cell's number of feature axes."""
        return self.cell.num_feature_axes


# --------------------------------------------------------------------------------
# Activity regularization.
# --------------------------------------------------------------------------------


def _check_activity_fields(module):
    _validated(module, check_nonnegative, module.l1, "l1")
    _validated(module, check_nonnegative, module.l2, "l2")


def _activity_penalty(module, inputs) -> jax.Array:
    """Keras' activity penalty ``l1 * sum|x| + l2 * sum(x**2)`` (float32 or wider).

    Built on :func:`jaxreg.l1` (``sum|x|``) and :func:`jaxreg.l2`
    (``0.5 * sum(x**2)``, hence the factor 2).
    """
    terms = []
    if static_value(module.l1) != 0.0:
        terms.append(module.l1 * _penalties.l1(inputs))
    if static_value(module.l2) != 0.0:
        terms.append(2.0 * module.l2 * _penalties.l2(inputs))
    if not terms:
        dtype = jnp.promote_types(jnp.result_type(inputs), jnp.float32)
        return jnp.zeros((), dtype)
    return sum(terms[1:], terms[0])


class ActivityRegularization(nn.Module):
    """Penalize activations (Keras semantics); returns the inputs unchanged.

    The penalty ``l1 * sum(|x|) + l2 * sum(x**2)`` over the whole input (as
    ``keras.layers.ActivityRegularization`` in Keras 3; tf.keras 2 divided it by
    the batch size) is *sown* into the ``collection`` (``"losses"`` by default)
    under the name ``"activity_penalty"``. Make that collection mutable in the
    training step and add what was sown to the loss::

        logits, state = model.apply(variables, x, mutable=["losses"])
        loss = data_loss(logits, y) + sum(jax.tree.leaves(state["losses"]))

    Gradients flow through the penalty into the activations. When the collection
    is not mutable (e.g. at evaluation), nothing is recorded: this is Flax's
    ``sow`` behaviour, so forgetting ``mutable=["losses"]`` while training silently
    drops the penalty.

    Attributes:
      l1: factor of the L1 activity penalty, ``>= 0``.
      l2: factor of the squared-L2 activity penalty, ``>= 0``.
      collection: the variable collection the penalty is sown into.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.ActivityRegularization(l1=0.1, l2=0.5)
      >>> x = jnp.array([[1.0, -2.0]])
      >>> y, state = layer.apply({}, x, mutable=["losses"])
      >>> bool(jnp.all(y == x))
      True
      >>> sum(jax.tree.leaves(state["losses"]))  # 0.1 * 3 + 0.5 * 5
      Array(2.8, dtype=float32)

    References:
      Keras API, ``ActivityRegularization`` layer.
      https://keras.io/api/layers/regularization_layers/activity_regularization/
    """

    l1: float = 0.0
    l2: float = 0.0
    collection: str = "losses"

    def __post_init__(self):
        _check_activity_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs):
        self.sow(self.collection, "activity_penalty", _activity_penalty(self, inputs))
        return inputs


# --------------------------------------------------------------------------------
# Learned-rate and Bayesian dropout: concrete dropout, sparse variational dropout.
# --------------------------------------------------------------------------------

import jaxreg.bayesian as _bayesian  # noqa: E402
from jaxreg._checks import check_positive  # noqa: E402

__all__ += ["ConcreteDropout", "SparseVariationalDense"]


def _check_concrete_fields(module):
    """Shared field checks of the linen and NNX ``ConcreteDropout``."""
    _validated(module, check_rate, module.init_rate, "init_rate")
    if not 0.0 < float(module.init_rate) < 1.0:
        raise ValueError(
            f"{_owner(module)}: `init_rate` is the initial drop probability and must "
            f"lie strictly between 0 and 1 (its logit is learned); got "
            f"init_rate={module.init_rate!r}."
        )
    _validated(module, check_positive, module.temperature, "temperature")
    _validated(
        module, check_nonnegative, module.weight_regularizer, "weight_regularizer"
    )
    _validated(
        module, check_nonnegative, module.dropout_regularizer, "dropout_regularizer"
    )


def _concrete_logit(init_rate: float) -> float:
    return float(jnp.log(init_rate) - jnp.log1p(-init_rate))


def _concrete_penalty(module, weights, logit_p, input_dim: int) -> jax.Array:
    """:func:`jaxreg.concrete_dropout_regularizer` of one wrapped layer."""
    leaves = jax.tree.leaves(weights)
    return _bayesian.concrete_dropout_regularizer(
        leaves if leaves else jnp.zeros(()),
        logit_p,
        input_dim=int(input_dim),
        weight_regularizer=module.weight_regularizer,
        dropout_regularizer=module.dropout_regularizer,
    )


def _check_vd_fields(module):
    _validated(module, check_nonnegative, module.kl_weight, "kl_weight")
    try:
        _bayesian._check_threshold(module.threshold)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{_owner(module)}: {err}") from None


class ConcreteDropout(nn.Module):
    """Concrete dropout with a learned rate, optionally wrapping the next layer.

    The drop probability is the trainable parameter ``logit_p`` (``p =
    sigmoid(logit_p)``, initialised at ``init_rate``); the relaxed mask comes from
    :func:`jaxreg.concrete_dropout`. If ``layer`` is given (as in Gal et al.'s
    implementation, ``ConcreteDropout(nn.Dense(64), ...)``) the module returns
    ``layer(dropped inputs)`` and the full regularizer of
    :func:`jaxreg.concrete_dropout_regularizer` (weight term on the layer's
    parameters plus the entropy term with ``input_dim = inputs.shape[-1]``) is
    *sown* into ``collection`` (``"losses"``) as ``"concrete_dropout"``; without
    ``layer`` it returns the dropped inputs and sows the entropy term only. Add
    the sown terms to the loss::

        logits, state = model.apply(variables, x, rngs={"dropout": key},
                                    mutable=["losses"])
        loss = data_loss(logits, y) + sum(jax.tree.leaves(state["losses"]))

    With ``N`` training points and prior length-scale ``l``, the paper uses
    ``weight_regularizer = l**2 / N`` and ``dropout_regularizer = 2 / N``.
    ``deterministic`` and the key follow :class:`Dropout`.

    Attributes:
      layer: the layer the dropped inputs feed (its parameters get the weight
        term), or None.
      weight_regularizer: ``>= 0``.
      dropout_regularizer: ``>= 0``.
      init_rate: initial drop probability, in ``(0, 1)``.
      temperature: relaxation temperature, ``> 0`` (paper: 0.1).
      deterministic: inference path (returns ``layer(inputs)``) if True.
      rng_collection: the rng collection keys are drawn from.
      collection: the variable collection the regularizer is sown into.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxreg.linen as jl
      >>> model = jl.ConcreteDropout(nn.Dense(3), weight_regularizer=1e-6,
      ...                            dropout_regularizer=1e-3)
      >>> x = jnp.ones((2, 4))
      >>> variables = model.init(jax.random.key(0), x, deterministic=True)
      >>> float(jax.nn.sigmoid(variables["params"]["logit_p"]))
      0.1...
      >>> params = {"params": variables["params"]}  # init also sows: drop it
      >>> y, state = model.apply(params, x, deterministic=False,
      ...                        rngs={"dropout": jax.random.key(1)},
      ...                        mutable=["losses"])
      >>> y.shape, len(jax.tree.leaves(state["losses"]))
      ((2, 3), 1)

    References:
      Gal, Hron, Kendall. "Concrete Dropout." NeurIPS 2017.
      https://arxiv.org/abs/1705.07832
    """

    layer: nn.Module | None = None
    weight_regularizer: float = 0.0
    dropout_regularizer: float = 0.0
    init_rate: float = 0.1
    temperature: float = 0.1
    deterministic: bool | None = None
    rng_collection: str = "dropout"
    collection: str = "losses"

    def __post_init__(self):
        _check_concrete_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Drop ``inputs`` with the learned rate, then apply ``layer`` (if any)."""
        det = _merge_deterministic(self, deterministic)
        logit0 = _concrete_logit(self.init_rate)
        logit_p = self.param("logit_p", lambda _: jnp.asarray(logit0, jnp.float32))
        key = None if det else _key(self, rng)
        y = _bayesian.concrete_dropout(
            key, inputs, logit_p, temperature=self.temperature, deterministic=det
        )
        weights = {}
        if self.layer is not None:
            y = self.layer(y)
            weights = self.layer.variables.get("params", {})
        penalty = _concrete_penalty(self, weights, logit_p, jnp.shape(inputs)[-1])
        self.sow(self.collection, "concrete_dropout", penalty)
        return y


class SparseVariationalDense(nn.Module):
    """A dense layer with sparse variational dropout (Molchanov et al. 2017).

    Parameters: ``kernel`` (the weight means ``theta``, shape
    ``(in, features)``), ``log_sigma2`` (per-weight log variance, initialised at
    ``log_sigma2_init``) and ``bias``. Training uses the local reparameterisation
    trick (:func:`jaxreg.sparse_vd_dense`); inference (``deterministic=True``)
    uses the weight means with every weight of ``log alpha > threshold`` pruned.
    The KL term ``kl_weight * sparse_vd_kl(log_alpha)`` is sown into
    ``collection`` (``"losses"``) as ``"sparse_vd_kl"``: set ``kl_weight = 1 /
    N`` for ``N`` training points (the ELBO per example), possibly warmed up from
    0. Report sparsity with :func:`jaxreg.sparse_vd_pruned_fraction` on
    ``jaxreg.sparse_vd_log_alpha(params["kernel"], params["log_sigma2"])``.

    Attributes:
      features: number of output features.
      use_bias: whether to add a bias.
      dtype: computation dtype (inferred if None).
      param_dtype: dtype of the parameters.
      kernel_init: initializer of the weight means.
      bias_init: bias initializer.
      log_sigma2_init: initial log variance of every weight.
      threshold: log-alpha pruning threshold at inference (paper: 3).
      kl_weight: factor of the sown KL term, ``>= 0`` (``1 / N``).
      deterministic: inference path if True (constructor or call, once).
      rng_collection: the rng collection keys are drawn from.
      collection: the variable collection the KL term is sown into.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.SparseVariationalDense(3, kl_weight=1 / 1000)
      >>> x = jnp.ones((2, 4))
      >>> variables = layer.init(jax.random.key(0), x, deterministic=True)
      >>> sorted(variables["params"])
      ['bias', 'kernel', 'log_sigma2']
      >>> params = {"params": variables["params"]}  # init also sows: drop it
      >>> y, state = layer.apply(params, x, deterministic=False,
      ...                        rngs={"dropout": jax.random.key(1)},
      ...                        mutable=["losses"])
      >>> y.shape, len(state["losses"]["sparse_vd_kl"])
      ((2, 3), 1)

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017. https://arxiv.org/abs/1701.05369
    """

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    log_sigma2_init: float = -10.0
    threshold: float = 3.0
    kl_weight: float = 1.0
    deterministic: bool | None = None
    rng_collection: str = "dropout"
    collection: str = "losses"

    def __post_init__(self):
        _check_vd_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``."""
        det = _merge_deterministic(self, deterministic)
        shape = (jnp.shape(inputs)[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        log_sigma2 = self.param(
            "log_sigma2",
            nn.initializers.constant(self.log_sigma2_init),
            shape,
            self.param_dtype,
        )
        bias = _dense_bias(self)
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        key = None if det else _key(self, rng)
        kl = _bayesian.sparse_vd_kl(_bayesian.sparse_vd_log_alpha(kernel, log_sigma2))
        self.sow(self.collection, "sparse_vd_kl", self.kl_weight * kl)
        return _bayesian.sparse_vd_dense(
            key,
            inputs,
            kernel,
            log_sigma2,
            bias=bias,
            threshold=self.threshold,
            deterministic=det,
        )
