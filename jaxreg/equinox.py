"""Equinox modules for every jaxreg technique.

The modules are thin: each one checks its fields at construction, resolves its
``inference`` flag and its key the way :class:`equinox.nn.Dropout` does, and hands
the rest to the framework-free module core (``jaxreg._layers``) and the pure
functions, so the maths lives in one place. ``import jaxreg`` does not import this
module; ``import jaxreg.equinox`` brings in Equinox (and no Flax). Equinox is an
optional dependency: ``pip install "jaxreg[equinox]"``.

Conventions (Equinox's own):

* Modules are pytrees, made for ``eqx.filter_jit``, ``eqx.filter_grad``,
  ``eqx.nn.inference_mode`` and ``eqx.tree_at``. ``inference`` is a field (True:
  the inference path, no key needed) that ``eqx.nn.inference_mode(model)`` sets
  and an ``inference=`` call argument overrides. Python and NumPy bools, 0 / 1 and
  0-d boolean arrays are accepted; a *traced* flag selects the path at run time
  with ``jax.lax.cond``.
* The key is the keyword-only ``key`` call argument (one key per call; split it
  for every layer and step). A stochastic call without one raises
  ``RuntimeError``, as ``equinox.nn.Dropout`` does.
* Rates and the other hyperparameters are *static* fields holding Python numbers,
  checked at construction: they are not leaves of the pytree, so no optimizer
  ever sees them (``eqx.filter(model, eqx.is_inexact_array)`` and
  ``eqx.is_array_like`` filters leave them out; compare equinox issues #681 and
  #772, where a float ``p`` in the tree was updated or broke gradient
  accumulation). To change one, rebuild the module:
  ``dataclasses.replace(layer, p=0.2)`` (checked again), or
  ``eqx.tree_at(lambda m: m.dropout, model, replacement)`` for a submodule.
  For a rate that changes under ``jit`` (a schedule), call the pure function
  (e.g. :func:`jaxreg.dropout`), which takes a traced rate.
  Learned quantities (``ConcreteDropout.logit_p``, the weights of the dense
  layers) are ordinary array leaves.
* Inputs follow Equinox's single-example convention (``jax.vmap`` over a batch,
  with one key per example for independent masks).
* Modules that report a loss term return ``(output, loss)``, as
  ``equinox.nn.BatchNorm`` returns ``(output, state)``: add the loss to the
  training objective (under ``jax.vmap`` it comes back once per example, with
  the same value; take one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxreg import _layers
from jaxreg._checks import check_bool, check_flag

__all__ = [*_layers.MODULES]


# --------------------------------------------------------------------------------
# Fields, the inference flag and keys, as Equinox handles them.
# --------------------------------------------------------------------------------


def _fields(module, checks) -> dict[str, Any]:
    """The module's fields named in ``checks``, checked and normalized."""
    values = {name: getattr(module, name) for name in checks}
    return _layers.check_fields(_layers.owner(module), checks, values)


def _set_fields(module, checks) -> None:
    """Check and normalize fields in ``__post_init__`` / ``__init__``."""
    for name, value in _fields(module, checks).items():
        setattr(module, name, value)


def _inference(module, inference):
    """The call's ``inference``, else the field: a Python bool or a traced flag."""
    value = module.inference if inference is None else inference
    return _layers.check_field(_layers.owner(module), check_flag, value, "inference")


def _key(module, key, inference):
    """The call's key, checked; RuntimeError (as ``eqx.nn.Dropout``) if missing."""
    if key is None:
        name = type(module).__name__
        mode = (
            "non-deterministic mode"
            if isinstance(inference, bool)
            else "a traced `inference` flag (it may be False at run time)"
        )
        raise RuntimeError(
            f"{name} requires a key when running in {mode}. "
            f"{_layers.owner(module)}: pass one with `layer(x, "
            "key=jax.random.key(seed))` (a fresh key for every call: split it), or "
            "use the inference path with `inference=True` or "
            "`eqx.nn.inference_mode(model)`."
        )
    return _layers.check_key(_layers.owner(module), key, "key")


def _option(default):
    """A static keyword-only field (a hyperparameter: never a leaf)."""
    return eqx.field(default=default, static=True, kw_only=True)


_FLAG = {"inference": check_flag}


# --------------------------------------------------------------------------------
# The dropout family on activations.
# --------------------------------------------------------------------------------


class _Family(eqx.Module):
    """The shared body of the dropout-family modules (not public).

    A subclass declares its fields and ``LAYER``, the :class:`jaxreg._layers.Layer`
    that checks them and names the pure function it calls.
    """

    LAYER: ClassVar[_layers.Layer]

    def __post_init__(self):
        _set_fields(self, {**self.LAYER.fields, **_FLAG})

    def __call__(
        self, x: jax.Array, *, key=None, inference: bool | None = None
    ) -> jax.Array:
        """Apply the module to ``x``.

        Args:
          x: floating array.
          key: PRNG key (keyword only); needed on the stochastic path.
          inference: overrides the ``inference`` field if not None.

        Returns:
          An array with the shape and dtype of ``x``.
        """
        det = _inference(self, inference)
        values = _fields(self, self.LAYER.fields)
        return self.LAYER.apply(values, x, det, lambda: _key(self, key, det))


class Dropout(_Family):
    """Dropout: a drop-in replacement for :class:`equinox.nn.Dropout`.

    The same fields ``p`` and ``inference`` (positional, in that order), the same
    call ``layer(x, *, key=None, inference=None)`` and edge cases (``inference``
    or ``p == 0`` returns ``x`` and needs no key; a stochastic call without a key
    raises ``RuntimeError``); ``p == 1`` returns zeros with finite gradients. The
    mask comes from :func:`jaxreg.dropout`, whose scaling uses the keep
    probability the sampler realises, so ``E[output] == x`` exactly. Unlike
    ``equinox.nn.Dropout``, ``p`` is a static field (checked at construction, out
    of every optimizer's reach) and the deprecated ``deterministic`` argument is
    not accepted.

    Attributes:
      p: the dropout probability (not the keep rate!), in ``[0, 1]``.
      inference: if True return the input unchanged (``eqx.nn.inference_mode``
        sets it).
      broadcast_dims: axes that share one mask value (keyword only).
      inverted: if False use classic dropout (``x * mask`` when training,
        ``x * (1 - p)`` at inference), see :func:`jaxreg.dropout` (keyword only).
      activation: None, or an elementwise activation applied to ``x`` before
        dropping, fused with it (``"tanh"``, ``"sigmoid"``, ``"relu"``, ``"elu"``,
        ``"softplus"`` or the matching function), see :func:`jaxreg.dropout`
        (keyword only).

    Raises:
      ValueError: at construction, ``p`` outside ``[0, 1]`` or NaN, or an
        ``activation`` that cannot be fused.
      TypeError: at construction, a non-numeric ``p``, non-int
        ``broadcast_dims``, a non-bool ``inverted`` or ``inference``.
      RuntimeError: a stochastic call without ``key``.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, jaxreg.equinox as je
      >>> layer = je.Dropout(0.5)
      >>> y = layer(jnp.ones(4), key=jax.random.key(0))
      >>> bool(jnp.all((y == 0) | (y == 2)))
      True
      >>> eqx.nn.inference_mode(layer)(jnp.ones(2))  # no key needed
      Array([1., 1.], dtype=float32)

    References:
      Srivastava et al. "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting." JMLR 15, 2014. https://jmlr.org/papers/v15/srivastava14a.html
    """

    LAYER = _layers.DROPOUT.renamed("p")
    p: float = eqx.field(default=0.5, static=True)
    inference: bool = False
    broadcast_dims: Sequence[int] = _option(())
    inverted: bool = _option(True)
    activation: str | Callable | None = _option(None)


class SpatialDropout(_Family):
    """Spatial dropout: drop whole channels of 1-D/2-D/3-D feature maps.

    One keep decision per (example, channel), shared over all spatial positions;
    see :func:`jaxreg.spatial_dropout`. Axis 0 of the input is the batch (vmap
    over examples with one key each, or call it on a batch).

    Attributes:
      rate: probability of dropping a channel, in ``[0, 1]``.
      inference: if True return the input.
      channel_axis: the channel axis, not 0 (keyword only).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> y = je.SpatialDropout(0.5)(jnp.ones((2, 4, 4, 3)), key=jax.random.key(0))
      >>> bool(jnp.all(y == y[:, :1, :1, :]))  # constant over space
      True

    References:
      Tompson et al. "Efficient Object Localization Using Convolutional
      Networks." CVPR 2015. https://arxiv.org/abs/1411.4280
    """

    LAYER = _layers.SPATIAL_DROPOUT
    rate: float = eqx.field(static=True)
    inference: bool = False
    channel_axis: int = _option(-1)


class GaussianDropout(_Family):
    """Multiplicative Gaussian noise with mean 1 and variance ``rate / (1 - rate)``.

    See :func:`jaxreg.gaussian_dropout`.

    Attributes:
      rate: drop-equivalent rate in ``[0, 1)``.
      inference: if True return the input.

    Examples:
      >>> import jax.numpy as jnp, jaxreg.equinox as je
      >>> je.GaussianDropout(0.2, inference=True)(jnp.ones(3))
      Array([1., 1., 1.], dtype=float32)

    References:
      Srivastava et al. 2014, section 10 ("Multiplicative Gaussian Noise").
      https://jmlr.org/papers/v15/srivastava14a.html
    """

    LAYER = _layers.GAUSSIAN_DROPOUT
    rate: float = eqx.field(static=True)
    inference: bool = False


class GaussianNoise(_Family):
    """Additive zero-mean Gaussian noise: ``x + stddev * eps`` when training.

    See :func:`jaxreg.gaussian_noise`.

    Attributes:
      stddev: noise standard deviation, ``>= 0``.
      inference: if True return the input.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> je.GaussianNoise(0.1)(jnp.zeros(3), key=jax.random.key(0)).shape
      (3,)

    References:
      Bishop. "Training with Noise is Equivalent to Tikhonov Regularization."
      Neural Computation 7(1), 1995. https://doi.org/10.1162/neco.1995.7.1.108
    """

    LAYER = _layers.GAUSSIAN_NOISE
    stddev: float = eqx.field(static=True)
    inference: bool = False


class AlphaDropout(_Family):
    """Alpha dropout for self-normalizing (SELU) networks.

    See :func:`jaxreg.alpha_dropout`.

    Attributes:
      rate: drop probability in ``[0, 1]``.
      inference: if True return the input.
      broadcast_dims: axes sharing one keep decision (keyword only); ``(0, 1)``
        on one HWC example is feature alpha dropout (PyTorch's
        ``FeatureAlphaDropout``).

    Examples:
      >>> import jax, jaxreg.equinox as je
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = je.AlphaDropout(0.1)(x, key=jax.random.key(1))
      >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
      True

    References:
      Klambauer et al. "Self-Normalizing Neural Networks." NeurIPS 2017.
      https://arxiv.org/abs/1706.02515
    """

    LAYER = _layers.ALPHA_DROPOUT
    rate: float = eqx.field(static=True)
    inference: bool = False
    broadcast_dims: Sequence[int] = _option(())


class DropPath(_Family):
    """Stochastic depth: drop a whole residual branch.

    ``x + drop_path(branch(x), key=key)``; see :func:`jaxreg.drop_path`. On a
    single example (Equinox's convention) use ``mode="batch"``, which drops the
    whole input: under ``jax.vmap`` with one key per example that is per-example
    stochastic depth. ``mode="row"`` drops rows of a batched input.

    Attributes:
      rate: probability of dropping the branch, in ``[0, 1]``.
      inference: if True return the input.
      mode: ``"batch"`` (the whole input) or ``"row"`` (each row of axis 0);
        keyword only.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> layer = je.DropPath(0.5)
      >>> keys = jax.random.split(jax.random.key(0), 4)
      >>> y = jax.vmap(lambda x, k: layer(x, key=k))(jnp.ones((4, 3)), keys)
      >>> bool(jnp.all((y == 0).all(1) | (y == 2).all(1)))  # whole examples
      True

    References:
      Huang et al. "Deep Networks with Stochastic Depth." ECCV 2016.
      https://arxiv.org/abs/1603.09382
    """

    LAYER = _layers.DROP_PATH
    rate: float = eqx.field(static=True)
    inference: bool = False
    mode: str = _option("batch")


class DropBlock(_Family):
    """DropBlock: drop contiguous ``block_size x block_size`` regions (NHWC).

    See :func:`jaxreg.dropblock`; the input is a batch ``(N, H, W, C)``.

    Attributes:
      rate: per-position drop probability, in ``[0, 1]``.
      inference: if True return the input.
      block_size: side of the square blocks, an int ``>= 1`` (keyword only).
      couple_channels: one block mask shared by all channels of an example
        (keyword only; default: one per channel, as timm and the TensorFlow
        reference code).
      gamma_scale: factor ``>= 0`` on the seed rate (keyword only; timm's
        ``gamma_scale``).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> layer = je.DropBlock(0.1, block_size=3)
      >>> layer(jnp.ones((2, 8, 8, 4)), key=jax.random.key(0)).shape
      (2, 8, 8, 4)

    References:
      Ghiasi, Lin, Le. "DropBlock: A regularization method for convolutional
      networks." NeurIPS 2018. https://arxiv.org/abs/1810.12890
    """

    LAYER = _layers.DROPBLOCK
    rate: float = eqx.field(static=True)
    inference: bool = False
    block_size: int = _option(7)
    couple_channels: bool = _option(False)
    gamma_scale: float = _option(1.0)


# --------------------------------------------------------------------------------
# Dense layers with parameters: DropConnect and sparse variational dropout.
# --------------------------------------------------------------------------------

_LINEAR = {
    "in_features": _layers.positive_int_field,
    "out_features": _layers.positive_int_field,
    "use_bias": check_bool,
}
# DropConnect's inference *rule*; `inference` is Equinox's boolean mode here.
_DROPCONNECT = {
    ("inference_rule" if name == "inference" else name): check
    for name, check in _layers.DROPCONNECT.items()
}


def _linear_params(module, in_features, out_features, use_bias, dtype, key):
    """``(weight, bias)`` exactly as ``eqx.nn.Linear`` draws them from ``key``."""
    linear = eqx.nn.Linear(in_features, out_features, use_bias, dtype, key=key)
    return linear.weight, linear.bias


class DropConnectDense(eqx.Module):
    """A linear layer with DropConnect: a drop-in for :class:`equinox.nn.Linear`.

    Same constructor arguments, fields (``weight`` of shape ``(out_features,
    in_features)``, ``bias``) and initial values as ``eqx.nn.Linear`` for the same
    key, and the same call on one example ``x`` of shape ``(in_features,)``. While
    training each *weight* is dropped with probability ``rate`` and the kept ones
    are scaled by ``1 / (1 - rate)``: the output is
    ``activation(jaxreg.dropconnect_dense(key, x, weight.T, rate, bias=bias))``.
    At inference (``inference=True``) ``inference_rule`` selects ``"mean"``
    (``activation(weight @ x + bias)``, no key), ``"moments"`` (Wan et al.'s
    Gaussian moment matching with ``num_samples`` samples,
    :func:`jaxreg.dropconnect_inference`; needs a key) or ``"mc"`` (one sampled
    mask; needs a key). See :class:`jaxreg.linen.DropConnectDense`.

    Args:
      in_features: input size, an int ``>= 1``.
      out_features: output size, an int ``>= 1``.
      use_bias: whether to add a bias.
      dtype: dtype of the weight and bias (Equinox's default if None).
      rate: probability of dropping a weight, in ``[0, 1]``.
      per_example: for a batched ``x`` of shape ``(..., in_features)``, one mask
        per example; under ``jax.vmap`` one key per example does the same.
      inference_rule: ``"mean"``, ``"moments"`` or ``"mc"``.
      activation: elementwise activation applied to the output, or None.
      num_samples: Gaussian samples for ``inference_rule="moments"``.
      precision: matmul precision (None, a ``jax.lax.Precision`` or its name).
      inference: the inference path if True (``eqx.nn.inference_mode`` sets it).
      key: PRNG key for the initialization (keyword only).

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, jaxreg.equinox as je
      >>> layer = je.DropConnectDense(4, 3, rate=0.5, key=jax.random.key(0))
      >>> linear = eqx.nn.Linear(4, 3, key=jax.random.key(0))
      >>> bool(jnp.all(layer.weight == linear.weight))
      True
      >>> layer(jnp.ones(4), key=jax.random.key(1)).shape
      (3,)
      >>> x = jnp.ones(4)
      >>> bool(jnp.allclose(eqx.nn.inference_mode(layer)(x), linear(x)))
      True

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013. https://proceedings.mlr.press/v28/wan13.html
    """

    weight: jax.Array
    bias: jax.Array | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    rate: float = eqx.field(static=True)
    per_example: bool = eqx.field(static=True)
    inference_rule: str = eqx.field(static=True)
    activation: Callable[[jax.Array], jax.Array] | None = eqx.field(static=True)
    num_samples: int = eqx.field(static=True)
    precision: Any = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        in_features: int,
        out_features: int,
        use_bias: bool = True,
        dtype=None,
        *,
        rate: float = 0.5,
        per_example: bool = False,
        inference_rule: str = "mean",
        activation: Callable[[jax.Array], jax.Array] | None = None,
        num_samples: int = 1000,
        precision=None,
        inference: bool = False,
        key,
    ):
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.rate, self.per_example = use_bias, rate, per_example
        self.inference_rule, self.activation = inference_rule, activation
        self.num_samples, self.precision = num_samples, precision
        self.inference = inference
        _set_fields(self, {**_LINEAR, **_DROPCONNECT, **_FLAG})
        self.weight, self.bias = _linear_params(
            self, in_features, out_features, use_bias, dtype, key
        )

    def __call__(
        self, x: jax.Array, *, key=None, inference: bool | None = None
    ) -> jax.Array:
        """Apply the layer to ``x`` of shape ``(in_features,)``."""
        det = _inference(self, inference)
        values = _fields(self, _DROPCONNECT)
        values["inference"] = values.pop("inference_rule")
        return _layers.dropconnect(
            x, self.weight.T, self.bias, det, lambda: _key(self, key, det), **values
        )


class SparseVariationalDense(eqx.Module):
    """A linear layer with sparse variational dropout (Molchanov et al. 2017).

    The Equinox version of :class:`jaxreg.linen.SparseVariationalDense`: fields
    ``weight`` (the weight means, ``(out_features, in_features)`` and initial
    values as ``eqx.nn.Linear``), ``log_sigma2`` (per-weight log variance,
    initialised at ``log_sigma2_init``) and ``bias``. Training uses the local
    reparameterisation trick, inference (``inference=True``) the pruned weight
    means (``log alpha > threshold`` set to zero), see
    :func:`jaxreg.sparse_vd_dense`. Returns ``(output, kl)`` with ``kl =
    kl_weight * sparse_vd_kl(log_alpha)``: add it to the loss (``kl_weight = 1 /
    N`` for ``N`` training points).

    Args:
      in_features: input size, an int ``>= 1``.
      out_features: output size, an int ``>= 1``.
      use_bias: whether to add a bias.
      dtype: dtype of the parameters (Equinox's default if None).
      log_sigma2_init: initial log variance of every weight (finite).
      threshold: log-alpha pruning threshold at inference (paper: 3).
      kl_weight: factor of the returned KL term, ``>= 0``.
      inference: the inference path if True (``eqx.nn.inference_mode`` sets it).
      key: PRNG key for the initialization (keyword only).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg, jaxreg.equinox as je
      >>> layer = je.SparseVariationalDense(4, 3, kl_weight=1e-3,
      ...                                   key=jax.random.key(0))
      >>> y, kl = layer(jnp.ones(4), key=jax.random.key(1))
      >>> y.shape, kl.shape
      ((3,), ())
      >>> la = jaxreg.sparse_vd_log_alpha(layer.weight, layer.log_sigma2)
      >>> float(jaxreg.sparse_vd_pruned_fraction(la))
      0.0

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017. https://arxiv.org/abs/1701.05369
    """

    weight: jax.Array
    log_sigma2: jax.Array
    bias: jax.Array | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    log_sigma2_init: float = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    kl_weight: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        in_features: int,
        out_features: int,
        use_bias: bool = True,
        dtype=None,
        *,
        log_sigma2_init: float = -10.0,
        threshold: float = 3.0,
        kl_weight: float = 1.0,
        inference: bool = False,
        key,
    ):
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.log_sigma2_init = use_bias, log_sigma2_init
        self.threshold, self.kl_weight = threshold, kl_weight
        self.inference = inference
        _set_fields(
            self,
            {
                **_LINEAR,
                **_layers.SPARSE_VD,
                "log_sigma2_init": _layers.finite_field,
                **_FLAG,
            },
        )
        self.weight, self.bias = _linear_params(
            self, in_features, out_features, use_bias, dtype, key
        )
        self.log_sigma2 = jnp.full_like(self.weight, self.log_sigma2_init)

    def __call__(
        self, x: jax.Array, *, key=None, inference: bool | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``(output, kl)`` for ``x`` of shape ``(in_features,)``."""
        det = _inference(self, inference)
        values = _fields(self, _layers.SPARSE_VD)
        kernel, log_sigma2 = self.weight.T, self.log_sigma2.T
        kl = _layers.sparse_vd_kl(values, kernel, log_sigma2)
        y = _layers.sparse_vd_dense(
            values, x, kernel, log_sigma2, self.bias, det, lambda: _key(self, key, det)
        )
        return y, kl


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------


class ZoneoutCell(eqx.Module):
    """Zoneout around an Equinox RNN cell: units keep their previous value at random.

    ``ZoneoutCell(cell, rate)`` is called like the wrapped cell (``cell(input,
    hidden) -> hidden``, e.g. :class:`equinox.nn.GRUCell` or
    :class:`equinox.nn.LSTMCell`); every leaf of the new hidden state goes through
    :func:`jaxreg.zoneout`: when training each unit keeps its previous value with
    probability ``rate``, at inference the state is the expectation ``(1 - rate) *
    h_new + rate * h_prev``. One key per call, split into one key per leaf; in a
    ``jax.lax.scan`` over time pass a fresh key per step (or the same key every
    step to share the mask).

    Attributes:
      cell: the wrapped cell (an Equinox module).
      rate: probability of keeping the previous value: one rate, or a tuple with
        the hidden state's structure (``LSTMCell``'s is ``(h, c)``, so Krueger et
        al.'s rates are ``(0.05, 0.5)``).
      inference: if True use the expectation.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, jaxreg.equinox as je
      >>> cell = je.ZoneoutCell(eqx.nn.LSTMCell(3, 8, key=jax.random.key(0)),
      ...                       (0.05, 0.5))
      >>> hidden = (jnp.zeros(8), jnp.zeros(8))
      >>> h, c = cell(jnp.ones(3), hidden, key=jax.random.key(1))
      >>> h.shape, c.shape
      ((8,), (8,))

    References:
      Krueger et al. "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
      Activations." ICLR 2017. https://arxiv.org/abs/1606.01305
    """

    cell: eqx.Module
    rate: Any = eqx.field(static=True)
    inference: bool = False

    def __post_init__(self):
        if not isinstance(self.cell, eqx.Module):
            raise TypeError(
                f"{_layers.owner(self)}: `cell` must be an Equinox RNN cell such as "
                f"`eqx.nn.GRUCell(...)`; got {type(self.cell).__name__}."
            )
        _set_fields(self, {"rate": _layers.rate_tree_field, **_FLAG})

    def __call__(self, input, hidden, *, key=None, inference: bool | None = None):
        """One step: the wrapped cell's, with zoneout on the new hidden state."""
        det = _inference(self, inference)
        new_hidden = self.cell(input, hidden)
        zoned, _ = _layers.zoneout(
            _layers.owner(self),
            self.rate,
            hidden,
            new_hidden,
            None,
            det,
            lambda: _key(self, key, det),
        )
        return zoned


# --------------------------------------------------------------------------------
# Loss terms, returned: activity regularization, concrete dropout.
# --------------------------------------------------------------------------------


class ActivityRegularization(eqx.Module):
    """Penalize activations (Keras semantics): returns ``(x, penalty)``.

    ``penalty = l1 * sum(|x|) + l2 * sum(x**2)`` (as Keras 3's
    ``ActivityRegularization``); add it to the loss. Gradients flow through the
    penalty into the activations.

    Attributes:
      l1: factor of the L1 activity penalty, ``>= 0``.
      l2: factor of the squared-L2 activity penalty, ``>= 0``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg.equinox as je
      >>> y, penalty = je.ActivityRegularization(l1=0.1, l2=0.5)(jnp.array([1.0, -2.0]))
      >>> penalty  # 0.1 * 3 + 0.5 * 5
      Array(2.8, dtype=float32)

    References:
      Keras API, ``ActivityRegularization`` layer.
      https://keras.io/api/layers/regularization_layers/activity_regularization/
    """

    l1: float = eqx.field(default=0.0, static=True)
    l2: float = eqx.field(default=0.0, static=True)

    def __post_init__(self):
        _set_fields(self, _layers.ACTIVITY)

    def __call__(self, x: jax.Array, *, key=None) -> tuple[jax.Array, jax.Array]:
        """``(x, penalty)``; ``key`` is ignored (Equinox's calling convention)."""
        return x, _layers.activity_penalty(_fields(self, _layers.ACTIVITY), x)


class ConcreteDropout(eqx.Module):
    """Concrete dropout with a learned rate, optionally wrapping the next layer.

    The Equinox version of :class:`jaxreg.linen.ConcreteDropout`: the drop
    probability is the trainable array leaf ``logit_p`` (``p =
    sigmoid(logit_p)``, initialised at ``init_rate``); the relaxed mask comes from
    :func:`jaxreg.concrete_dropout`. Returns ``(layer(dropped x), regularizer)``
    (``(dropped x, regularizer)`` without ``layer``), the regularizer of
    :func:`jaxreg.concrete_dropout_regularizer` on the layer's inexact-array
    leaves with ``input_dim = x.shape[-1]`` (the entropy term only without
    ``layer``): add it to the loss.

    Args:
      layer: the Equinox layer the dropped inputs feed, or None.
      weight_regularizer: ``>= 0`` (paper: ``l**2 / N``).
      dropout_regularizer: ``>= 0`` (paper: ``2 / N``).
      init_rate: initial drop probability, in ``(0, 1)``.
      temperature: relaxation temperature, ``> 0`` (paper: 0.1).
      inference: the inference path if True (returns ``layer(x)``).

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, jaxreg.equinox as je
      >>> model = je.ConcreteDropout(eqx.nn.Linear(4, 3, key=jax.random.key(0)),
      ...                            weight_regularizer=1e-6,
      ...                            dropout_regularizer=1e-3)
      >>> y, reg = model(jnp.ones(4), key=jax.random.key(1))
      >>> y.shape, reg.shape
      ((3,), ())
      >>> float(jax.nn.sigmoid(model.logit_p))
      0.1...

    References:
      Gal, Hron, Kendall. "Concrete Dropout." NeurIPS 2017.
      https://arxiv.org/abs/1705.07832
    """

    layer: Any
    logit_p: jax.Array
    weight_regularizer: float = eqx.field(static=True)
    dropout_regularizer: float = eqx.field(static=True)
    init_rate: float = eqx.field(static=True)
    temperature: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        layer=None,
        *,
        weight_regularizer: float = 0.0,
        dropout_regularizer: float = 0.0,
        init_rate: float = 0.1,
        temperature: float = 0.1,
        inference: bool = False,
    ):
        if layer is not None and not isinstance(layer, eqx.Module):
            raise TypeError(
                f"{_layers.owner(self)}: `layer` must be an Equinox module such as "
                f"`eqx.nn.Linear(...)` or None; got {type(layer).__name__}."
            )
        self.layer = layer
        self.weight_regularizer = weight_regularizer
        self.dropout_regularizer = dropout_regularizer
        self.init_rate, self.temperature = init_rate, temperature
        self.inference = inference
        _set_fields(self, {**_layers.CONCRETE, **_FLAG})
        logit = _layers.concrete_logit(self.init_rate)
        self.logit_p = jnp.asarray(logit, jnp.float32)

    def __call__(
        self, x: jax.Array, *, key=None, inference: bool | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``(output, regularizer)``: drop ``x``, then apply ``layer`` (if any)."""
        det = _inference(self, inference)
        values = _fields(self, _layers.CONCRETE)
        layer = self.layer
        return _layers.concrete_layer(
            values,
            x,
            self.logit_p,
            det,
            lambda: _key(self, key, det),
            layer=layer,
            weights=lambda: eqx.filter(layer, eqx.is_inexact_array),
        )
