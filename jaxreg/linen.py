"""Flax linen modules for every jaxreg technique.

The modules are thin: each one checks its fields at construction, resolves its
``deterministic`` flag and its PRNG key the way :class:`flax.linen.Dropout` does,
and hands the rest to the framework-free module core (``jaxreg._layers``) and the
pure functions, so the maths lives in one place. ``import jaxreg`` does not import
this module; ``import jaxreg.linen`` brings in ``flax.linen`` (and not ``flax.nnx``
or Equinox).

Conventions shared by all stochastic modules (the same as ``flax.linen.Dropout``):

* ``rate`` is the probability of *dropping* a unit (the rate is not the keep
  rate!). A Python number is validated when the module is constructed; a traced
  value (a schedule under ``jit``) passes through unchecked.
* ``deterministic`` may be given to the constructor *or* to ``__call__``, exactly
  once (:func:`flax.linen.merge_param` semantics). ``True`` selects the inference
  path, which needs no key. Python and NumPy bools, 0 / 1 and 0-d boolean arrays
  are accepted, as in Flax; beyond Flax, a *traced* flag (``train`` passed into a
  jitted step) selects the path at run time with ``jax.lax.cond``.
* On the stochastic path the key is ``rng`` if passed to ``__call__``, otherwise
  ``self.make_rng(self.rng_collection)`` (``"dropout"`` by default): pass it as
  ``model.apply(variables, x, rngs={"dropout": key})``. At ``rate`` 0 (and 1 where
  the output is zeros) no key is drawn, as in Flax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.typing import Dtype, Initializer, PrecisionLike

from jaxreg import _layers
from jaxreg._checks import check_bool, check_flag, check_str

__all__ = [*_layers.MODULES]


# --------------------------------------------------------------------------------
# Fields, the deterministic flag and keys, as Flax linen handles them.
# --------------------------------------------------------------------------------


def _fields(module, checks) -> dict[str, Any]:
    """The module's fields named in ``checks``, checked and normalized."""
    values = {name: getattr(module, name) for name in checks}
    return _layers.check_fields(_layers.owner(module), checks, values)


def _deterministic(module, deterministic):
    """``merge_param`` for ``deterministic``: a Python bool, or a traced flag.

    Errors start with Flax's own sentence, then say how to fix it.
    """
    where = _layers.owner(module)
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
        raise ValueError(f"{err} {where}: {hint}") from None
    return _layers.check_field(where, check_flag, value, "deterministic")


def _call(module, deterministic, rng) -> _layers.Call:
    """The call: its flag (:func:`_deterministic`) and its key (:func:`_key`)."""
    det = _deterministic(module, deterministic)
    return _layers.Call(_layers.owner(module), det, lambda: _key(module, rng))


def _key(module, rng):
    """The key for one stochastic call: ``rng`` if given, else ``make_rng``.

    A missing collection raises :class:`flax.errors.InvalidRngError` (as Flax
    does) with Flax's message first, then how to provide the key.
    """
    where = _layers.owner(module)
    if rng is not None:
        return _layers.check_key(where, rng, "rng")
    collection = module.rng_collection
    try:
        return module.make_rng(collection)
    except flax.errors.InvalidRngError as err:
        raise flax.errors.InvalidRngError(
            f"{err} {where} (at {'/'.join(module.scope.path) or 'top level'}) "
            f'needs a PRNG key from the "{collection}" rng collection, and none was '
            f"given. Pass it to apply: `model.apply(variables, x, "
            f"rngs={{'{collection}': jax.random.key(seed)}})` (use a fresh key for "
            "every step); inside a lifted transform (nn.scan, nn.RNN, nn.vmap) "
            f"also list it in `split_rngs`, e.g. `split_rngs={{'params': False, "
            f"'{collection}': True}}`. Or pass `rng=key` when calling the module, or "
            "use the inference path with `deterministic=True`."
        ) from None


#: The linen descriptions of the flags; ``parent`` and ``name`` are Flax's own.
_FLAGS_DOC = {
    "deterministic": "if True, {inference}; give it to the constructor or to the "
    "call, exactly once.",
    "rng_collection": "the rng collection the key is drawn from.",
    "parent": None,
    "name": None,
}
_SOWN_INTO = "the variable collection the loss term is sown into."


# A module's docstring below holds what only linen says (summary, notes,
# examples); `_DOCS` composes it with the text every adapter shares (the
# module's `_layers.Doc`: what it does, its fields, the paper) and the words
# above for linen's flags, so `help()` and the API pages show it whole.
_DOCS = _layers.Docs("Attributes", _FLAGS_DOC)


def _dense_bias(module):
    """A dense module's ``bias`` parameter as ``nn.Dense`` creates it, or None."""
    if not module.use_bias:
        return None
    shape = (module.features,)
    return module.param("bias", module.bias_init, shape, module.param_dtype)


def _params(layer):
    """A bound layer's ``params`` collection."""
    return layer.variables.get("params", {})


def _check_module(module, value, name: str, *, optional: bool):
    """A wrapped layer or cell must be a linen module."""
    if (value is None and optional) or isinstance(value, nn.Module):
        return
    raise TypeError(
        f"{_layers.owner(module)}: `{name}` must be a flax.linen module"
        f"{' or None' if optional else ''}; got {type(value).__name__}."
    )


# --------------------------------------------------------------------------------
# The dropout family on activations.
# --------------------------------------------------------------------------------


class _Family(nn.Module):
    """The shared body of the dropout-family modules (not public).

    A subclass declares its fields; ``_DOCS.family`` sets ``LAYER``, the
    :class:`jaxreg._layers.Layer` that checks them and names the pure function.
    """

    LAYER: ClassVar[_layers.Layer]

    def __post_init__(self):
        _fields(self, {**self.LAYER.fields, **_layers.STOCHASTIC})
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Apply the module to ``inputs``.

        Args:
          inputs: floating array.
          deterministic: give it here only if the constructor did not (True: the
            inference path; a traced flag selects the path at run time).
          rng: optional key; by default ``self.make_rng(self.rng_collection)``.

        Returns:
          An array with the shape and dtype of ``inputs``.
        """
        call = _call(self, deterministic, rng)
        values = _fields(self, self.LAYER.fields)
        return self.LAYER.apply(values, inputs, call)


class _RateFamily(_Family):
    """A dropout-family module whose first field is ``rate`` (not public)."""

    rate: float


@_DOCS.family(_layers.DROPOUT)
class Dropout(_RateFamily):
    """Dropout: a drop-in replacement for :class:`flax.linen.Dropout`.

    Same fields, same ``__call__(inputs, deterministic=None, rng=None)`` contract
    and the same edge cases as ``flax.linen.Dropout``.

    Raises:
      ValueError: at construction, ``rate`` outside ``[0, 1]`` or NaN, or an
        ``activation`` that cannot be fused; at call, ``deterministic`` given
        nowhere or twice (Flax's message first).
      TypeError: at construction, a non-numeric ``rate``, ``broadcast_dims`` that
        are not ints, a non-bool ``inverted`` or ``deterministic``.
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
    """

    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"
    inverted: bool = True
    activation: str | Callable | None = None


@_DOCS.family(_layers.SPATIAL_DROPOUT)
class SpatialDropout(_RateFamily):
    """Spatial dropout: drop whole channels of 1-D/2-D/3-D feature maps.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> x = jnp.ones((2, 4, 4, 3))
      >>> y = jl.SpatialDropout(0.5).apply({}, x, deterministic=False,
      ...                                  rngs={"dropout": jax.random.key(0)})
      >>> bool(jnp.all(y == y[:, :1, :1, :]))  # constant over space
      True
    """

    channel_axis: int = -1
    deterministic: bool | None = None
    rng_collection: str = "dropout"


@_DOCS.family(_layers.GAUSSIAN_DROPOUT)
class GaussianDropout(_RateFamily):
    """Multiplicative Gaussian noise with mean 1 and variance ``rate / (1 - rate)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.GaussianDropout(0.2, deterministic=True)
      >>> layer.apply({}, jnp.ones(3))
      Array([1., 1., 1.], dtype=float32)
    """

    deterministic: bool | None = None
    rng_collection: str = "dropout"


@_DOCS.family(_layers.GAUSSIAN_NOISE)
class GaussianNoise(_Family):
    """Additive zero-mean Gaussian noise: ``inputs + stddev * eps`` when training.

    The key comes from the ``"dropout"`` collection by default, so the usual
    ``rngs={"dropout": key}`` serves it.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> y = jl.GaussianNoise(0.1).apply({}, jnp.zeros(3), deterministic=False,
      ...                                 rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (3,)
    """

    stddev: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"


@_DOCS.family(_layers.ALPHA_DROPOUT)
class AlphaDropout(_RateFamily):
    """Alpha dropout for self-normalizing (SELU) networks.

    Feature alpha dropout on an NHWC batch is ``broadcast_dims=(1, 2)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = jl.AlphaDropout(0.1, deterministic=False).apply(
      ...     {}, x, rngs={"dropout": jax.random.key(1)})
      >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
      True
    """

    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"


@_DOCS.family(_layers.DROP_PATH)
class DropPath(_RateFamily):
    """Stochastic depth: drop a whole residual branch per example (or per batch).

    In a linen model: ``x + DropPath(rate)(branch(x), deterministic=not train)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> y = jl.DropPath(0.5).apply({}, jnp.ones((4, 3)), deterministic=False,
      ...                            rngs={"dropout": jax.random.key(0)})
      >>> bool(jnp.all((y == 0).all(1) | (y == 2).all(1)))  # whole rows
      True
    """

    mode: str = "row"
    deterministic: bool | None = None
    rng_collection: str = "dropout"


@_DOCS.family(_layers.DROPBLOCK)
class DropBlock(_RateFamily):
    """DropBlock: drop contiguous ``block_size x block_size`` regions (NHWC).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.DropBlock(0.1, block_size=3, deterministic=False)
      >>> y = layer.apply({}, jnp.ones((2, 8, 8, 4)),
      ...                 rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (2, 8, 8, 4)
    """

    block_size: int = 7
    couple_channels: bool = False
    gamma_scale: float = 1.0
    deterministic: bool | None = None
    rng_collection: str = "dropout"


# --------------------------------------------------------------------------------
# DropConnect.
# --------------------------------------------------------------------------------

_DENSE = {"features": _layers.positive_int_field, "use_bias": check_bool}


@_DOCS.module(_layers.DROPCONNECT_DOC)
class DropConnectDense(nn.Module):
    """A dense layer with DropConnect: a drop-in for :class:`flax.linen.Dense`.

    The same fields and parameters as ``nn.Dense`` (``kernel`` of shape ``(in,
    features)``, ``bias``), so checkpoints are interchangeable. The inference path
    (``deterministic=True``) follows the rule ``inference``.

    Raises:
      ValueError: at construction, a bad ``rate``, ``inference`` or
        ``precision``, or ``features`` / ``num_samples`` below 1.
      TypeError: at construction, non-int ``features`` / ``num_samples``, a
        non-bool ``per_example`` / ``use_bias``, a non-callable ``activation``.

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
        _fields(self, {**_DENSE, **_layers.DROPCONNECT, **_layers.STOCHASTIC})
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``."""
        call = _call(self, deterministic, rng)
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (jnp.shape(inputs)[-1], self.features),
            self.param_dtype,
        )
        bias = _dense_bias(self)
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        values = _fields(self, _layers.DROPCONNECT)
        return _layers.dropconnect(inputs, kernel, bias, call, **values)


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------


@_DOCS.module(
    _layers.ZONEOUT_DOC, cell="the wrapped cell (an :class:`flax.linen.RNNCellBase`)."
)
class ZoneoutCell(nn.RNNCellBase):
    """Zoneout around any Flax RNN cell: units keep their previous value at random.

    ``ZoneoutCell(cell, rate)`` has the wrapped cell's interface (``(carry,
    inputs) -> (carry, outputs)``, ``initialize_carry``, ``num_feature_axes``), so
    it works with :class:`flax.linen.RNN`. Outputs that are the new hidden state
    itself (as in every Flax cell: ``LSTMCell`` returns ``h``, ``GRUCell`` the
    carry) are replaced by the zoned-out state; other outputs pass through. For
    ``LSTMCell``, whose carry is ``(c, h)``, Krueger et al.'s rates are ``rate=(0.5,
    0.05)``.

    The call's key is ``rng`` or ``make_rng(rng_collection)``. Inside
    :class:`flax.linen.RNN` (an ``nn.scan``) the masks vary per time step when the
    scan splits the ``rng_collection`` (``split_rngs={"params": False, "dropout":
    True}``) and are shared across steps otherwise.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxreg.linen as jl
      >>> rnn = nn.RNN(jl.ZoneoutCell(nn.LSTMCell(8), (0.5, 0.05),
      ...                             deterministic=False),
      ...              split_rngs={"params": False, "dropout": True})
      >>> x = jnp.ones((2, 5, 3))
      >>> variables = rnn.init(jax.random.key(0), x)
      >>> rnn.apply(variables, x, rngs={"dropout": jax.random.key(1)}).shape
      (2, 5, 8)
    """

    cell: nn.RNNCellBase
    rate: Any
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self):
        _check_module(self, self.cell, "cell", optional=False)
        _fields(self, {"rate": _layers.rate_tree_field, **_layers.STOCHASTIC})
        super().__post_init__()

    @nn.compact
    def __call__(self, carry, inputs, deterministic: bool | None = None, rng=None):
        """One step: the wrapped cell's, with zoneout on the new carry."""
        call = _call(self, deterministic, rng)
        new_carry, outputs = self.cell(carry, inputs)
        return _layers.zoneout(self.rate, carry, new_carry, outputs, call)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        """The wrapped cell's initial carry."""
        return self.cell.initialize_carry(rng, input_shape)

    @property
    def num_feature_axes(self) -> int:
        """The wrapped cell's number of feature axes."""
        return self.cell.num_feature_axes


# --------------------------------------------------------------------------------
# Loss terms, sown into a collection: activity regularization, concrete dropout,
# sparse variational dropout.
# --------------------------------------------------------------------------------


@_DOCS.module(_layers.ACTIVITY_DOC, collection=_SOWN_INTO)
class ActivityRegularization(nn.Module):
    """Penalize activations (Keras semantics); returns the inputs unchanged.

    The penalty is *sown* the penalty into the ``collection``
    (``"losses"`` by default) under the name ``"activity_penalty"``. Make that
    collection mutable in the training step and add what was sown to the loss::

        logits, state = model.apply(variables, x, mutable=["losses"])
        loss = data_loss(logits, y) + sum(jax.tree.leaves(state["losses"]))

    When the collection is not mutable (e.g. at evaluation), nothing is recorded:
    this is Flax's ``sow`` behaviour, so forgetting ``mutable=["losses"]`` while
    training silently drops the penalty.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg.linen as jl
      >>> layer = jl.ActivityRegularization(l1=0.1, l2=0.5)
      >>> x = jnp.array([[1.0, -2.0]])
      >>> y, state = layer.apply({}, x, mutable=["losses"])
      >>> bool(jnp.all(y == x))
      True
      >>> sum(jax.tree.leaves(state["losses"]))  # 0.1 * 3 + 0.5 * 5
      Array(2.8, dtype=float32)
    """

    l1: float = 0.0
    l2: float = 0.0
    collection: str = "losses"

    def __post_init__(self):
        _fields(self, {**_layers.ACTIVITY, "collection": check_str})
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs):
        """Return ``inputs``; sow the penalty when the collection is mutable."""
        penalty = _layers.activity_penalty(_fields(self, _layers.ACTIVITY), inputs)
        self.sow(self.collection, "activity_penalty", penalty)
        return inputs


@_DOCS.module(_layers.CONCRETE_DOC, collection=_SOWN_INTO)
class ConcreteDropout(nn.Module):
    """Concrete dropout with a learned rate, optionally wrapping the next layer.

    As in Gal et al.'s implementation, ``ConcreteDropout(nn.Dense(64), ...)``
    wraps the next layer; its parameter is ``logit_p``. The regularizer is *sown*
    into ``collection`` (``"losses"``) as ``"concrete_dropout"``; add the sown
    terms to the loss::

        logits, state = model.apply(variables, x, rngs={"dropout": key},
                                    mutable=["losses"])
        loss = data_loss(logits, y) + sum(jax.tree.leaves(state["losses"]))

    ``deterministic`` and the key follow :class:`Dropout`.

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
        _check_module(self, self.layer, "layer", optional=True)
        checks = {**_layers.CONCRETE, **_layers.STOCHASTIC, "collection": check_str}
        _fields(self, checks)
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Drop ``inputs`` with the learned rate, then apply ``layer`` (if any)."""
        call = _call(self, deterministic, rng)
        values = _fields(self, _layers.CONCRETE)
        logit0 = _layers.concrete_logit(values["init_rate"])
        logit_p = self.param("logit_p", lambda _: jnp.asarray(logit0, jnp.float32))
        y, penalty = _layers.concrete_layer(
            values, inputs, logit_p, call, self.layer, _params
        )
        self.sow(self.collection, "concrete_dropout", penalty)
        return y


@_DOCS.module(_layers.SPARSE_VD_DOC, collection=_SOWN_INTO)
class SparseVariationalDense(nn.Module):
    """A dense layer with sparse variational dropout (Molchanov et al. 2017).

    Parameters ``kernel`` (the weight means, shape ``(in, features)``),
    ``log_sigma2`` and ``bias``. The KL term is sown into ``collection``
    (``"losses"``) as ``"sparse_vd_kl"``. Report sparsity on
    ``jaxreg.sparse_vd_log_alpha(params["kernel"], params["log_sigma2"])``.

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
        _fields(
            self,
            {
                **_DENSE,
                **_layers.SPARSE_VD,
                "log_sigma2_init": _layers.finite_field,
                **_layers.STOCHASTIC,
                "collection": check_str,
            },
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``."""
        call = _call(self, deterministic, rng)
        values = _fields(self, _layers.SPARSE_VD)
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
        kl = _layers.sparse_vd_kl(values, kernel, log_sigma2)
        self.sow(self.collection, "sparse_vd_kl", kl)
        return _layers.sparse_vd_dense(values, inputs, kernel, log_sigma2, bias, call)
