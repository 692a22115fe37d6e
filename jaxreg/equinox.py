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


def _call(module, inference, key) -> _layers.Call:
    """The call: its flag (:func:`_inference`) and its key (:func:`_key`)."""
    det = _inference(module, inference)
    return _layers.Call(_layers.owner(module), det, lambda: _key(module, key, det))


def _trainable(layer):
    """A layer's inexact-array leaves (its trainable parameters)."""
    return eqx.filter(layer, eqx.is_inexact_array)


def _option(default):
    """A static keyword-only field (a hyperparameter: never a leaf)."""
    return eqx.field(default=default, static=True, kw_only=True)


_FLAG = {"inference": check_flag}

#: The Equinox descriptions of the flag and of an initialization key.
_FLAG_DOC = {"inference": "if True, {inference} (``eqx.nn.inference_mode`` sets it)."}
_INIT_KEY = "PRNG key for the initialization."
_DTYPE = "dtype of the parameters (Equinox's default if None)."


# A module's docstring below holds what only Equinox says (summary, notes,
# examples); `_DOCS` composes it with the text every adapter shares (the
# module's `_layers.Doc`: what it does, its fields, the paper) and the words
# above for Equinox's flags, so `help()` and the API pages show it whole.
_DOCS = _layers.Docs("Attributes", _FLAG_DOC, mark_keyword_only=True)


# --------------------------------------------------------------------------------
# The dropout family on activations.
# --------------------------------------------------------------------------------


class _Family(eqx.Module):
    """The shared body of the dropout-family modules (not public).

    A subclass declares its fields; ``_DOCS.family`` sets its ``LAYER``, the
    :class:`jaxreg._layers.Layer` that checks them and names the pure function.
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
        call = _call(self, inference, key)
        values = _fields(self, self.LAYER.fields)
        return self.LAYER.apply(values, x, call)


class _RateFamily(_Family):
    """A dropout-family module whose fields start with ``rate`` and ``inference``,
    the others keyword only (not public)."""

    rate: float = eqx.field(static=True)
    inference: bool = False


@_DOCS.family(_layers.DROPOUT.renamed("p"))
class Dropout(_Family):
    """Dropout: a drop-in replacement for :class:`equinox.nn.Dropout`.

    The same fields ``p`` and ``inference`` (positional, in that order), the same
    call ``layer(x, *, key=None, inference=None)`` and edge cases (``inference``
    or ``p == 0`` returns ``x`` and needs no key; a stochastic call without a key
    raises ``RuntimeError``); ``p == 1`` returns zeros with finite gradients. Unlike
    ``equinox.nn.Dropout``, ``p`` is a static field (checked at construction, out
    of every optimizer's reach) and the deprecated ``deterministic`` argument is
    not accepted.

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
    """

    p: float = eqx.field(default=0.5, static=True)
    inference: bool = False
    broadcast_dims: Sequence[int] = _option(())
    inverted: bool = _option(True)
    activation: str | Callable | None = _option(None)


@_DOCS.family(_layers.SPATIAL_DROPOUT)
class SpatialDropout(_RateFamily):
    """Spatial dropout: drop whole channels of 1-D/2-D/3-D feature maps.

    Vmap over examples with one key each, or call it on a batch.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> y = je.SpatialDropout(0.5)(jnp.ones((2, 4, 4, 3)), key=jax.random.key(0))
      >>> bool(jnp.all(y == y[:, :1, :1, :]))  # constant over space
      True
    """

    channel_axis: int = _option(-1)


@_DOCS.family(_layers.GAUSSIAN_DROPOUT)
class GaussianDropout(_RateFamily):
    """Multiplicative Gaussian noise with mean 1 and variance ``rate / (1 - rate)``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg.equinox as je
      >>> je.GaussianDropout(0.2, inference=True)(jnp.ones(3))
      Array([1., 1., 1.], dtype=float32)
    """


@_DOCS.family(_layers.GAUSSIAN_NOISE)
class GaussianNoise(_Family):
    """Additive zero-mean Gaussian noise: ``x + stddev * eps`` when training.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> je.GaussianNoise(0.1)(jnp.zeros(3), key=jax.random.key(0)).shape
      (3,)
    """

    stddev: float = eqx.field(static=True)
    inference: bool = False


@_DOCS.family(_layers.ALPHA_DROPOUT)
class AlphaDropout(_RateFamily):
    """Alpha dropout for self-normalizing (SELU) networks.

    Feature alpha dropout on one HWC example is ``broadcast_dims=(0, 1)``.

    Examples:
      >>> import jax, jaxreg.equinox as je
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = je.AlphaDropout(0.1)(x, key=jax.random.key(1))
      >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
      True
    """

    broadcast_dims: Sequence[int] = _option(())


@_DOCS.family(_layers.DROP_PATH)
class DropPath(_RateFamily):
    """Stochastic depth: drop a whole residual branch.

    In Equinox: ``x + drop_path(branch(x), key=key)``. On a single example
    (Equinox's convention) use ``mode="batch"`` (the default here), which drops
    the whole input: under ``jax.vmap`` with one key per example that is
    per-example stochastic depth. ``mode="row"`` drops rows of a batched input.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> layer = je.DropPath(0.5)
      >>> keys = jax.random.split(jax.random.key(0), 4)
      >>> y = jax.vmap(lambda x, k: layer(x, key=k))(jnp.ones((4, 3)), keys)
      >>> bool(jnp.all((y == 0).all(1) | (y == 2).all(1)))  # whole examples
      True
    """

    mode: str = _option("batch")


@_DOCS.family(_layers.DROPBLOCK)
class DropBlock(_RateFamily):
    """DropBlock: drop contiguous ``block_size x block_size`` regions (NHWC).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.equinox as je
      >>> layer = je.DropBlock(0.1, block_size=3)
      >>> layer(jnp.ones((2, 8, 8, 4)), key=jax.random.key(0)).shape
      (2, 8, 8, 4)
    """

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
_DROPCONNECT_DOC = _layers.DROPCONNECT_DOC.renamed("inference", "inference_rule")


class _Linear(eqx.Module):
    """The sizes of ``eqx.nn.Linear`` and its parameters' initialization, shared by
    the dense layers (not public)."""

    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)

    def _init_linear(self, in_features, out_features, use_bias, dtype, key, checks):
        """Set the sizes, check them and the fields in ``checks``, then set
        ``weight`` and ``bias`` exactly as ``eqx.nn.Linear`` draws them."""
        self.in_features, self.out_features = in_features, out_features
        self.use_bias = use_bias
        _set_fields(self, {**_LINEAR, **checks})
        linear = eqx.nn.Linear(in_features, out_features, use_bias, dtype, key=key)
        self.weight, self.bias = linear.weight, linear.bias


@_DOCS.module(_DROPCONNECT_DOC, dtype=_DTYPE, key=_INIT_KEY)
class DropConnectDense(_Linear):
    """A linear layer with DropConnect: a drop-in for :class:`equinox.nn.Linear`.

    Same constructor arguments, fields (``weight`` of shape ``(out_features,
    in_features)``, ``bias``) and initial values as ``eqx.nn.Linear`` for the same
    key, and the same call on one example ``x`` of shape ``(in_features,)``: the
    training output is ``activation(jaxreg.dropconnect_dense(key, x, weight.T,
    rate, bias=bias))``. The inference path (``inference=True``) follows the rule
    ``inference_rule``. See :class:`jaxreg.linen.DropConnectDense`.

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
    """

    weight: jax.Array
    bias: jax.Array | None
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
        self.rate, self.per_example = rate, per_example
        self.inference_rule, self.activation = inference_rule, activation
        self.num_samples, self.precision = num_samples, precision
        self.inference = inference
        checks = {**_DROPCONNECT, **_FLAG}
        self._init_linear(in_features, out_features, use_bias, dtype, key, checks)

    def __call__(
        self, x: jax.Array, *, key=None, inference: bool | None = None
    ) -> jax.Array:
        """Apply the layer to ``x`` of shape ``(in_features,)``."""
        call = _call(self, inference, key)
        values = _fields(self, _DROPCONNECT)
        values["inference"] = values.pop("inference_rule")
        return _layers.dropconnect(x, self.weight.T, self.bias, call, **values)


@_DOCS.module(_layers.SPARSE_VD_DOC, dtype=_DTYPE, key=_INIT_KEY)
class SparseVariationalDense(_Linear):
    """A linear layer with sparse variational dropout (Molchanov et al. 2017).

    The Equinox version of :class:`jaxreg.linen.SparseVariationalDense`: fields
    ``weight`` (the weight means, ``(out_features, in_features)`` and initial
    values as ``eqx.nn.Linear``), ``log_sigma2`` and ``bias``. The call returns
    ``(output, kl)``: add ``kl`` to the loss.

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
    """

    weight: jax.Array
    log_sigma2: jax.Array
    bias: jax.Array | None
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
        self.log_sigma2_init = log_sigma2_init
        self.threshold, self.kl_weight = threshold, kl_weight
        self.inference = inference
        checks = {
            **_layers.SPARSE_VD,
            "log_sigma2_init": _layers.finite_field,
            **_FLAG,
        }
        self._init_linear(in_features, out_features, use_bias, dtype, key, checks)
        self.log_sigma2 = jnp.full_like(self.weight, self.log_sigma2_init)

    def __call__(
        self, x: jax.Array, *, key=None, inference: bool | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``(output, kl)`` for ``x`` of shape ``(in_features,)``."""
        call = _call(self, inference, key)
        values = _fields(self, _layers.SPARSE_VD)
        kernel, log_sigma2 = self.weight.T, self.log_sigma2.T
        kl = _layers.sparse_vd_kl(values, kernel, log_sigma2)
        y = _layers.sparse_vd_dense(values, x, kernel, log_sigma2, self.bias, call)
        return y, kl


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------


@_DOCS.module(_layers.ZONEOUT_DOC, cell="the wrapped cell (an Equinox module).")
class ZoneoutCell(eqx.Module):
    """Zoneout around an Equinox RNN cell: units keep their previous value at random.

    ``ZoneoutCell(cell, rate)`` is called like the wrapped cell (``cell(input,
    hidden) -> hidden``, e.g. :class:`equinox.nn.GRUCell` or
    :class:`equinox.nn.LSTMCell`); the hidden state is the carry. ``LSTMCell``'s is
    ``(h, c)``, so Krueger et al.'s rates are ``rate=(0.05, 0.5)``. In a
    ``jax.lax.scan`` over time pass a fresh key per step (or the same key every
    step to share the mask).

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, jaxreg.equinox as je
      >>> cell = je.ZoneoutCell(eqx.nn.LSTMCell(3, 8, key=jax.random.key(0)),
      ...                       (0.05, 0.5))
      >>> hidden = (jnp.zeros(8), jnp.zeros(8))
      >>> h, c = cell(jnp.ones(3), hidden, key=jax.random.key(1))
      >>> h.shape, c.shape
      ((8,), (8,))
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
        call = _call(self, inference, key)
        new_hidden = self.cell(input, hidden)
        zoned, _ = _layers.zoneout(self.rate, hidden, new_hidden, None, call)
        return zoned


# --------------------------------------------------------------------------------
# Loss terms, returned: activity regularization, concrete dropout.
# --------------------------------------------------------------------------------


@_DOCS.module(_layers.ACTIVITY_DOC)
class ActivityRegularization(eqx.Module):
    """Penalize activations (Keras semantics): returns ``(x, penalty)``.

    Add the penalty to the loss.

    Examples:
      >>> import jax.numpy as jnp, jaxreg.equinox as je
      >>> y, penalty = je.ActivityRegularization(l1=0.1, l2=0.5)(jnp.array([1.0, -2.0]))
      >>> penalty  # 0.1 * 3 + 0.5 * 5
      Array(2.8, dtype=float32)
    """

    l1: float = eqx.field(default=0.0, static=True)
    l2: float = eqx.field(default=0.0, static=True)

    def __post_init__(self):
        _set_fields(self, _layers.ACTIVITY)

    def __call__(self, x: jax.Array, *, key=None) -> tuple[jax.Array, jax.Array]:
        """``(x, penalty)``; ``key`` is ignored (Equinox's calling convention)."""
        return x, _layers.activity_penalty(_fields(self, _layers.ACTIVITY), x)


@_DOCS.module(_layers.CONCRETE_DOC)
class ConcreteDropout(eqx.Module):
    """Concrete dropout with a learned rate, optionally wrapping the next layer.

    The Equinox version of :class:`jaxreg.linen.ConcreteDropout`: ``logit_p`` is a
    trainable array leaf, the weight term is taken on the layer's inexact-array
    leaves, and the call returns ``(output, regularizer)``: add the regularizer
    to the loss.

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
        call = _call(self, inference, key)
        values = _fields(self, _layers.CONCRETE)
        return _layers.concrete_layer(
            values, x, self.logit_p, call, self.layer, _trainable
        )
