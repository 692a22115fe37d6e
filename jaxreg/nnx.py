"""Flax NNX modules for every jaxreg technique.

The modules are thin: each one checks its arguments at construction, resolves its
``deterministic`` flag and its PRNG key the way :class:`flax.nnx.Dropout` does, and
hands the rest to the framework-free module core (``jaxreg._layers``) and the pure
functions, so the maths lives in one place. ``import jaxreg`` does not import this
module; ``import jaxreg.nnx`` brings in ``flax.nnx`` (and not ``flax.linen`` or
Equinox).

Conventions shared by all stochastic modules (the same as ``flax.nnx.Dropout``):

* ``rate`` is the probability of *dropping* a unit (the rate is not the keep
  rate!), validated at construction, as is every other argument.
* ``deterministic`` (default False) is an attribute: :meth:`flax.nnx.Module.train`
  sets it to False, :meth:`flax.nnx.Module.eval` to True, and
  :func:`flax.nnx.view` (``nnx.view(model, deterministic=True)``) makes a
  switched view; a ``deterministic`` passed to ``__call__`` takes precedence.
  Python and NumPy bools, 0 / 1 and 0-d boolean arrays are accepted, as in Flax;
  beyond Flax, a *traced* flag (``train`` passed into an ``nnx.jit`` step) selects
  the path at run time with ``jax.lax.cond``.
* ``rngs`` may be an :class:`flax.nnx.Rngs` (the stream ``rngs[rng_collection]``
  is forked, as Flax does), an :class:`flax.nnx.RngStream` (forked) or a raw key
  (``jax.random.key`` or ``jax.random.PRNGKey``; it seeds a new stream), at
  construction; at call time the same types are accepted and take precedence
  (a key passed at call time is used as is). The stream is stored in the ``rngs``
  attribute, so ``nnx.state`` has the same paths as for ``flax.nnx.Dropout``
  (``.../rngs/key``, ``.../rngs/count``) and checkpoints stay interchangeable.
* Loss terms (e.g. :class:`ActivityRegularization`'s penalty) are sown as
  :class:`Loss` variables; collect them in the loss function with
  ``output, losses = nnx.capture(model, Loss)(x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype
from flax.typing import Dtype, Initializer, PrecisionLike

from jaxreg import _layers
from jaxreg._checks import check_bool, check_flag, short_repr

__all__ = [*_layers.MODULES, "Loss"]

_Rngs = nnx.Rngs | nnx.RngStream | jax.Array


# --------------------------------------------------------------------------------
# Arguments, the deterministic flag, keys and loss terms, as Flax NNX handles them.
# --------------------------------------------------------------------------------


def _checked(module, checks, **values) -> dict[str, Any]:
    """``values`` checked and normalized, errors prefixed with the module."""
    return _layers.check_fields(_layers.owner(module), checks, values)


def _is_key_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def _wrong_rngs(module, rngs, *, at_construction: bool, optional: bool) -> TypeError:
    """Flax's sentence for ``rngs`` of another type, then ours."""
    if at_construction:
        flax_types = "Rngs, RngStream or None"
    else:
        flax_types = "Rngs, RngStream or jax.Array"
    return TypeError(
        f"rngs must be a {flax_types}, but got {type(rngs)}. "
        f"{_layers.owner(module)}: `rngs` must be an `nnx.Rngs`, an "
        f"`nnx.RngStream` or a PRNG key (`jax.random.key(seed)`)"
        f"{' (or None)' if optional else ''}; got {type(rngs).__name__} "
        f"{short_repr(rngs)}. For an integer seed use `rngs=nnx.Rngs(seed)`."
    )


def _stream(module, rngs, collection: str, *, at: str):
    """The ``RngStream`` named ``collection`` of an ``nnx.Rngs`` (ValueError if none)."""
    try:
        return rngs[collection]
    except (KeyError, AttributeError) as err:
        raise ValueError(
            f"{_layers.owner(module)}: the `rngs` passed {at} has no '{collection}' "
            f"stream and no 'default' stream. Create it with "
            f"`nnx.Rngs({collection}=seed)` (or `nnx.Rngs(seed)`), or set "
            "`rng_collection` to one of its streams."
        ) from err


def _params(layer):
    """A layer's ``nnx.Param`` state."""
    return nnx.state(layer, nnx.Param)


def _check_variable_type(module, variable_type) -> None:
    if not (
        isinstance(variable_type, type) and issubclass(variable_type, nnx.Variable)
    ):
        raise TypeError(
            f"{_layers.owner(module)}: `variable_type` must be an `nnx.Variable` "
            f"subclass such as `jaxreg.nnx.Loss`; got {variable_type!r}."
        )


def _sow_loss(module, variable_type, name: str, value) -> None:
    """Sow ``value`` when an ``nnx.capture`` of ``variable_type`` is running.

    Inside ``nnx.capture(model, variable_type)`` every module holds a variable of
    the captured type, which ``nnx.state`` shows; outside it nothing is recorded
    (as linen's ``sow`` into an immutable collection), so the module's state never
    changes structure. Flax versions without ``nnx.capture`` use the legacy
    ``sow`` (retrieve the terms with ``nnx.pop``).
    """
    if not hasattr(nnx, "capture") or nnx.state(module, variable_type):
        module.sow(variable_type, name, value)


#: The NNX descriptions of the flags and keys.
_FLAGS_DOC = {
    "deterministic": "if True, {inference}; ``model.train()`` / ``model.eval()`` "
    "set it.",
    "rng_collection": "the stream taken from an ``nnx.Rngs``.",
    "rngs": "``nnx.Rngs``, ``nnx.RngStream``, a key, or None (then pass ``rngs`` "
    "at call time).",
}
_DENSE_RNGS = (
    "``nnx.Rngs`` (parameters from its ``params`` stream, noise from "
    "``rng_collection``), an ``nnx.RngStream`` or a key (used for both)."
)
_SOWN_AS = "the ``nnx.Variable`` subclass the loss term is sown as."


# A module's docstring below holds what only NNX says (summary, notes,
# examples); `_DOCS` composes it with the text every adapter shares (the
# module's `_layers.Doc`: what it does, its fields, the paper) and the words
# above for NNX's flags, so `help()` and the API pages show it whole.
_DOCS = _layers.Docs("Args", _FLAGS_DOC)


class _Stochastic(nnx.Module):
    """Shared machinery of the stochastic NNX modules (not public).

    Subclasses call :meth:`_init_stochastic` in ``__init__``; in ``__call__`` they
    resolve the flag and the key source with :meth:`_call`, then call the module
    core.
    """

    def _init_stochastic(self, deterministic, rng_collection: str, rngs) -> None:
        values = _checked(
            self,
            _layers.STOCHASTIC,
            deterministic=deterministic,
            rng_collection=rng_collection,
        )
        self.deterministic = values["deterministic"]
        self.rng_collection = values["rng_collection"]
        if rngs is None:
            self.rngs = nnx.data(None)
        elif isinstance(rngs, nnx.Rngs):
            self.rngs = _stream(
                self, rngs, rng_collection, at="to the constructor"
            ).fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        elif _is_key_array(rngs):
            key = _layers.check_key(_layers.owner(self), rngs, "rngs")
            self.rngs = nnx.RngStream(key, tag=rng_collection)
        else:
            raise _wrong_rngs(self, rngs, at_construction=True, optional=True)

    def _current(self, checks) -> dict[str, Any]:
        """The module's present values of the fields in ``checks``, checked again
        (an NNX module's attributes may be reassigned after construction)."""
        return _checked(self, checks, **{name: getattr(self, name) for name in checks})

    def _resolve_deterministic(self, deterministic):
        """The call's flag, else the attribute (Flax's ``first_from``)."""
        value = self.deterministic if deterministic is None else deterministic
        if value is None:
            name = type(self).__name__
            raise ValueError(
                f"No `deterministic` argument was provided to {name}. "
                f"{_layers.owner(self)}: `deterministic` is None both on the module "
                "and in the call. Choose one of:\n"
                f"  1. the constructor: `{name}(..., deterministic=False)`;\n"
                "  2. the call: `layer(x, deterministic=True)`;\n"
                "  3. the model's mode: `model.train()` / `model.eval()`, or a view "
                "`nnx.view(model, deterministic=True)`."
            )
        return _layers.check_field(
            _layers.owner(self), check_flag, value, "deterministic"
        )

    def _call(self, deterministic, rngs) -> _layers.Call:
        """The call: its flag (:meth:`_resolve_deterministic`) and its key
        (:meth:`_call_key`)."""
        det = self._resolve_deterministic(deterministic)
        return _layers.Call(_layers.owner(self), det, lambda: self._call_key(rngs, det))

    def _call_key(self, rngs, deterministic):
        """The key for one stochastic call (``rngs`` at call time wins)."""
        source = self.rngs if rngs is None else rngs
        if source is None:
            state = (
                "is False"
                if isinstance(deterministic, bool)
                else "is traced (it may be False when the step runs)"
            )
            raise ValueError(
                f"`deterministic` {state}, but no `rngs` argument was provided to "
                f"{type(self).__name__} as either a __call__ argument or class "
                f"attribute. {_layers.owner(self)}: pass "
                f"`rngs=nnx.Rngs({self.rng_collection}=seed)` (or a key) when "
                "constructing the module, or `rngs=` when calling it; or use the "
                "inference path with `deterministic=True` / `model.eval()`."
            )
        if isinstance(source, nnx.Rngs):
            return _stream(self, source, self.rng_collection, at="to the call")()
        if isinstance(source, nnx.RngStream):
            return source()
        if _is_key_array(source):
            return _layers.check_key(_layers.owner(self), source, "rngs")
        raise _wrong_rngs(self, source, at_construction=False, optional=False)

    def _params_stream(self, rngs):
        """``(rngs, params stream)`` for a layer that initializes parameters.

        A key becomes an ``nnx.Rngs``; parameters come from its ``params`` stream
        (or from the ``nnx.RngStream`` given). Raises TypeError for a missing
        ``rngs`` or one of another type.
        """
        if rngs is None:
            raise TypeError(
                f"{_layers.owner(self)}: `rngs` is required to initialize the "
                "parameters; pass `rngs=nnx.Rngs(seed)` (or a key)."
            )
        if _is_key_array(rngs):
            rngs = nnx.Rngs(_layers.check_key(_layers.owner(self), rngs, "rngs"))
        if isinstance(rngs, nnx.Rngs):
            return rngs, rngs.params
        if isinstance(rngs, nnx.RngStream):
            return rngs, rngs
        raise _wrong_rngs(self, rngs, at_construction=True, optional=False)

    def _init_dense(self, checks, values, kernel_init, rngs):
        """Checked dense fields as attributes, then ``kernel`` and ``bias`` drawn
        exactly as ``nnx.Linear`` draws them (same values for the same ``rngs``).

        Returns the ``rngs`` the dropout stream is forked from.
        """
        for name, value in _checked(self, checks, **values).items():
            setattr(self, name, value)
        rngs, params_key = self._params_stream(rngs)
        shape, dtype = (self.in_features, self.out_features), self.param_dtype
        self.kernel = nnx.Param(kernel_init(params_key(), shape, dtype))
        if self.use_bias:
            bias = self.bias_init(params_key(), (self.out_features,), dtype)
            self.bias = nnx.Param(bias)
        else:
            self.bias = nnx.data(None)
        return rngs

    def _promoted(self, inputs):
        """``(inputs, kernel, bias)`` promoted to ``self.dtype`` as in ``nnx.Linear``."""
        bias = None if self.bias is None else self.bias[...]
        return promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)

    def set_view(self, deterministic: bool | None = None):
        """Class method used by ``nnx.view``.

        Args:
          deterministic: if True, use the inference path (no randomness).
        """
        if deterministic is not None:
            self.deterministic = deterministic


# --------------------------------------------------------------------------------
# The dropout family on activations.
# --------------------------------------------------------------------------------


class _Family(_Stochastic):
    """The shared body of the dropout-family modules (not public).

    ``_DOCS.family`` sets a subclass's ``LAYER``, the :class:`jaxreg._layers.Layer`
    that checks its arguments and names the pure function; its ``__init__`` calls
    :meth:`_init_family`.
    """

    LAYER: ClassVar[_layers.Layer]

    def _init_family(self, deterministic, rng_collection, rngs, **fields) -> None:
        for name, value in _checked(self, self.LAYER.fields, **fields).items():
            setattr(self, name, value)
        self._init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self, inputs, *, deterministic: bool | None = None, rngs: _Rngs | None = None
    ) -> jax.Array:
        """Apply the module to ``inputs``.

        ``deterministic`` and ``rngs`` given here take precedence over the
        attributes (a traced ``deterministic`` selects the path at run time).
        """
        call = self._call(deterministic, rngs)
        values = self._current(self.LAYER.fields)
        return self.LAYER.apply(values, inputs, call)


class _RateOnly(_Family):
    """A dropout-family module whose one field is ``rate`` (not public)."""

    def __init__(
        self,
        rate: float,
        *,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        self._init_family(deterministic, rng_collection, rngs, rate=rate)


@_DOCS.family(_layers.DROPOUT)
class Dropout(_Family):
    """Dropout: a drop-in replacement for :class:`flax.nnx.Dropout`.

    Same constructor, ``__call__(inputs, *, deterministic=None, rngs=None)``,
    attributes and state paths as ``nnx.Dropout``, and the same edge cases. Unlike
    ``nnx.Dropout``, ``rngs`` may also be a raw key at construction.

    Raises:
      ValueError: ``rate`` outside ``[0, 1]`` or NaN, or an ``activation`` that
        cannot be fused; at call time, no ``deterministic`` anywhere, or no key
        on the stochastic path.
      TypeError: ``rngs`` of another type.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> class MLP(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(3, 4, rngs=rngs)
      ...     self.dropout = jn.Dropout(0.5, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.dropout(self.linear(x))
      >>> model = MLP(nnx.Rngs(0))
      >>> x = jnp.ones((1, 3))
      >>> model.eval()  # no dropout
      >>> bool(jnp.all(model(x) == model.linear(x)))
      True
      >>> model.train()  # dropout: each unit is 0 or doubled
      >>> y, z = model(x), 2 * model.linear(x)
      >>> bool(jnp.all((y == 0) | (y == z)))
      True

      The fused activation (``Linear -> tanh -> Dropout`` in one layer):

      >>> layer = jn.Dropout(0.5, activation="tanh", rngs=nnx.Rngs(0))
      >>> pre = jnp.array([-1.0, 0.0, 2.0])
      >>> bool(jnp.all(layer(pre, deterministic=True) == jnp.tanh(pre)))
      True
      >>> y = layer(pre)
      >>> bool(jnp.all((y == 0) | (y == 2 * jnp.tanh(pre))))
      True
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
        inverted: bool = True,
        activation: str | Callable | None = None,
    ):
        self._init_family(
            deterministic,
            rng_collection,
            rngs,
            rate=rate,
            broadcast_dims=broadcast_dims,
            inverted=inverted,
            activation=activation,
        )


@_DOCS.family(_layers.SPATIAL_DROPOUT)
class SpatialDropout(_Family):
    """Spatial dropout: drop whole channels of 1-D/2-D/3-D feature maps.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.SpatialDropout(0.5, rngs=nnx.Rngs(0))
      >>> y = layer(jnp.ones((2, 4, 4, 3)))
      >>> bool(jnp.all(y == y[:, :1, :1, :]))  # constant over space
      True
    """

    def __init__(
        self,
        rate: float,
        *,
        channel_axis: int = -1,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        self._init_family(
            deterministic, rng_collection, rngs, rate=rate, channel_axis=channel_axis
        )


@_DOCS.family(_layers.GAUSSIAN_DROPOUT)
class GaussianDropout(_RateOnly):
    """Multiplicative Gaussian noise with mean 1 and variance ``rate / (1 - rate)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxreg.nnx as jn
      >>> layer = jn.GaussianDropout(0.2, rngs=jax.random.key(0))
      >>> layer(jnp.ones(3), deterministic=True)
      Array([1., 1., 1.], dtype=float32)
    """


@_DOCS.family(_layers.GAUSSIAN_NOISE)
class GaussianNoise(_Family):
    """Additive zero-mean Gaussian noise: ``inputs + stddev * eps`` when training.

    The stream is ``"dropout"`` by default.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.GaussianNoise(0.1, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.zeros(3)).shape
      (3,)
    """

    def __init__(
        self,
        stddev: float,
        *,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        self._init_family(deterministic, rng_collection, rngs, stddev=stddev)


@_DOCS.family(_layers.ALPHA_DROPOUT)
class AlphaDropout(_Family):
    """Alpha dropout for self-normalizing (SELU) networks.

    Feature alpha dropout on an NHWC batch is ``broadcast_dims=(1, 2)``.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = jn.AlphaDropout(0.1, rngs=nnx.Rngs(1))(x)
      >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
      True
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        fields = {"rate": rate, "broadcast_dims": broadcast_dims}
        self._init_family(deterministic, rng_collection, rngs, **fields)


@_DOCS.family(_layers.DROP_PATH)
class DropPath(_Family):
    """Stochastic depth: drop a whole residual branch per example (or per batch).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> y = jn.DropPath(0.5, rngs=nnx.Rngs(0))(jnp.ones((4, 3)))
      >>> bool(jnp.all((y == 0).all(1) | (y == 2).all(1)))  # whole rows
      True
    """

    def __init__(
        self,
        rate: float,
        *,
        mode: str = "row",
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        self._init_family(deterministic, rng_collection, rngs, rate=rate, mode=mode)


@_DOCS.family(_layers.DROPBLOCK)
class DropBlock(_Family):
    """DropBlock: drop contiguous ``block_size x block_size`` regions (NHWC).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.DropBlock(0.1, block_size=3, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 8, 8, 4))).shape
      (2, 8, 8, 4)
    """

    def __init__(
        self,
        rate: float,
        *,
        block_size: int = 7,
        couple_channels: bool = False,
        gamma_scale: float = 1.0,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        self._init_family(
            deterministic,
            rng_collection,
            rngs,
            rate=rate,
            block_size=block_size,
            couple_channels=couple_channels,
            gamma_scale=gamma_scale,
        )


# --------------------------------------------------------------------------------
# DropConnect.
# --------------------------------------------------------------------------------

_DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()
_DEFAULT_BIAS_INIT = nnx.initializers.zeros_init()
_LINEAR = {
    "in_features": _layers.positive_int_field,
    "out_features": _layers.positive_int_field,
    "use_bias": check_bool,
}


@_DOCS.module(_layers.DROPCONNECT_DOC, rngs=_DENSE_RNGS)
class DropConnectDense(_Stochastic):
    """A linear layer with DropConnect: a drop-in for :class:`flax.nnx.Linear`.

    Same constructor arguments and parameters as ``nnx.Linear`` (``kernel`` of
    shape ``(in_features, out_features)``, ``bias``), so the ``nnx.state`` paths
    of the parameters match; the dropout stream is stored in ``rngs``. The
    inference path (``deterministic=True``) follows the rule ``inference``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.DropConnectDense(4, 3, rate=0.5, rngs=nnx.Rngs(0))
      >>> sorted(path for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param)))
      [('bias',), ('kernel',)]
      >>> layer(jnp.ones((2, 4))).shape
      (2, 3)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = _DEFAULT_KERNEL_INIT,
        bias_init: Initializer = _DEFAULT_BIAS_INIT,
        rate: float = 0.5,
        per_example: bool = False,
        inference: str = "mean",
        activation: Callable[[jax.Array], jax.Array] | None = None,
        num_samples: int = 1000,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs,
    ):
        self.dtype, self.param_dtype = dtype, param_dtype
        self.kernel_init, self.bias_init = kernel_init, bias_init
        values = dict(in_features=in_features, out_features=out_features)
        values.update(use_bias=use_bias, rate=rate, per_example=per_example)
        values.update(inference=inference, activation=activation)
        values.update(num_samples=num_samples, precision=precision)
        checks = {**_LINEAR, **_layers.DROPCONNECT}
        rngs = self._init_dense(checks, values, kernel_init, rngs)
        self._init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self, inputs, *, deterministic: bool | None = None, rngs: _Rngs | None = None
    ) -> jax.Array:
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``."""
        call = self._call(deterministic, rngs)
        x, kernel, bias = self._promoted(inputs)
        values = self._current(_layers.DROPCONNECT)
        return _layers.dropconnect(x, kernel, bias, call, **values)


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------


@_DOCS.module(
    _layers.ZONEOUT_DOC, cell="the wrapped cell (an :class:`flax.nnx.RNNCellBase`)."
)
class ZoneoutCell(_Stochastic, nnx.RNNCellBase):
    """Zoneout around any NNX RNN cell: units keep their previous value at random.

    ``ZoneoutCell(cell, rate, rngs=...)`` has the wrapped cell's interface
    (``(carry, inputs) -> (carry, outputs)``, ``initialize_carry``,
    ``num_feature_axes``), so it works with :class:`flax.nnx.RNN`. Outputs that
    are the new hidden state itself are replaced by the zoned-out state. For
    ``LSTMCell``, whose carry is ``(c, h)``, Krueger et al.'s rates are
    ``rate=(0.5, 0.05)``. See :class:`jaxreg.linen.ZoneoutCell`.

    Inside ``nnx.RNN`` the stream is part of the scanned carry, so masks vary per
    time step; ``nnx.RNN(cell, broadcast_rngs="dropout")`` shares one mask over the
    sequence (variational). That filter matches the stream's *tag*: the
    collection name when the ``nnx.Rngs`` has such a stream (``nnx.Rngs(dropout=0)``),
    ``"default"`` when it fell back to the default stream; ``broadcast_rngs=True``
    broadcasts every stream.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> rngs = nnx.Rngs(0)
      >>> cell = jn.ZoneoutCell(nnx.LSTMCell(3, 8, rngs=rngs), (0.5, 0.05),
      ...                       rngs=rngs)
      >>> nnx.RNN(cell)(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        cell: nnx.RNNCellBase,
        rate: Any,
        *,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        if not isinstance(cell, nnx.Module):
            raise TypeError(
                f"{_layers.owner(self)}: `cell` must be an NNX RNN cell such as "
                f"`nnx.LSTMCell(...)`; got {type(cell).__name__}."
            )
        self.cell = cell
        self.rate = _checked(self, {"rate": _layers.rate_tree_field}, rate=rate)["rate"]
        self._init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self,
        carry,
        inputs,
        *,
        deterministic: bool | None = None,
        rngs: _Rngs | None = None,
    ):
        """One step: the wrapped cell's, with zoneout on the new carry."""
        call = self._call(deterministic, rngs)
        new_carry, outputs = self.cell(carry, inputs)
        return _layers.zoneout(self.rate, carry, new_carry, outputs, call)

    def initialize_carry(self, *args, **kwargs):
        """The wrapped cell's initial carry (same arguments)."""
        return self.cell.initialize_carry(*args, **kwargs)

    @property
    def num_feature_axes(self) -> int:
        """The wrapped cell's number of feature axes."""
        return self.cell.num_feature_axes


# --------------------------------------------------------------------------------
# Loss terms, sown as `Loss`: activity regularization, concrete dropout, sparse
# variational dropout.
# --------------------------------------------------------------------------------


class Loss(nnx.Intermediate):
    """Variable type for loss terms sown by jaxreg modules (e.g. activity penalties).

    Collect them in the loss function with ``nnx.capture(model, Loss)(x)``, which
    returns ``(output, losses)``; add ``sum(jax.tree.leaves(losses))`` to the loss.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> model = nnx.Sequential(jn.ActivityRegularization(l1=1.0),
      ...                        jn.ActivityRegularization(l1=2.0))
      >>> y, losses = nnx.capture(model, jn.Loss)(jnp.array([1.0, -1.0]))
      >>> sum(jax.tree.leaves(losses))  # 1 * 2 + 2 * 2
      Array(6., dtype=float32)
    """


@_DOCS.module(_layers.ACTIVITY_DOC, variable_type=_SOWN_AS)
class ActivityRegularization(nnx.Module):
    """Penalize activations (Keras semantics); returns the inputs unchanged.

    The penalty is *sown* as ``variable_type`` (:class:`Loss` by default) under
    the name ``"activity_penalty"``, one entry per call. Collect it with
    :func:`flax.nnx.capture` in the loss function and add it to the loss::

        def loss_fn(model):
            logits, losses = nnx.capture(model, jaxreg.nnx.Loss)(x)
            return data_loss(logits, y) + sum(jax.tree.leaves(losses))

    Outside ``nnx.capture`` (or when another variable type is captured) nothing is
    recorded, as with linen's ``sow`` into an immutable collection, so the model's
    ``nnx.state`` never changes structure. (On Flax versions without
    ``nnx.capture`` the legacy ``sow`` is used: retrieve the terms with
    ``nnx.pop(model, Loss)``.)

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.ActivityRegularization(l1=0.1, l2=0.5)
      >>> x = jnp.array([[1.0, -2.0]])
      >>> y, losses = nnx.capture(layer, jn.Loss)(x)
      >>> bool(jnp.all(y == x))
      True
      >>> sum(jax.tree.leaves(losses))  # 0.1 * 3 + 0.5 * 5
      Array(2.8, dtype=float32)
    """

    def __init__(
        self,
        l1: float = 0.0,
        l2: float = 0.0,
        *,
        variable_type: type[nnx.Variable] = Loss,
    ):
        values = _checked(self, _layers.ACTIVITY, l1=l1, l2=l2)
        self.l1, self.l2 = values["l1"], values["l2"]
        _check_variable_type(self, variable_type)
        self.variable_type = variable_type

    def __call__(self, inputs):
        """Return ``inputs``; sow the penalty when captured."""
        values = _checked(self, _layers.ACTIVITY, l1=self.l1, l2=self.l2)
        penalty = _layers.activity_penalty(values, inputs)
        _sow_loss(self, self.variable_type, "activity_penalty", penalty)
        return inputs


@_DOCS.module(_layers.CONCRETE_DOC, variable_type=_SOWN_AS)
class ConcreteDropout(_Stochastic):
    """Concrete dropout with a learned rate, optionally wrapping the next layer.

    The NNX version of :class:`jaxreg.linen.ConcreteDropout`: ``logit_p`` is an
    ``nnx.Param``, the weight term is taken on the layer's ``nnx.Param`` leaves,
    and the regularizer is sown as ``variable_type`` (:class:`Loss`) under
    ``"concrete_dropout"``. Collect it with :func:`flax.nnx.capture` as for
    :class:`ActivityRegularization`::

        logits, losses = nnx.capture(model, jaxreg.nnx.Loss)(x)
        loss = data_loss(logits, y) + sum(jax.tree.leaves(losses))

    ``deterministic`` and ``rngs`` follow :class:`Dropout`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> rngs = nnx.Rngs(0)
      >>> model = jn.ConcreteDropout(nnx.Linear(4, 3, rngs=rngs),
      ...                            weight_regularizer=1e-6,
      ...                            dropout_regularizer=1e-3, rngs=rngs)
      >>> y, losses = nnx.capture(model, jn.Loss)(jnp.ones((2, 4)))
      >>> y.shape, len(jax.tree.leaves(losses))
      ((2, 3), 1)
    """

    def __init__(
        self,
        layer: nnx.Module | None = None,
        *,
        weight_regularizer: float = 0.0,
        dropout_regularizer: float = 0.0,
        init_rate: float = 0.1,
        temperature: float = 0.1,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        variable_type: type[nnx.Variable] = Loss,
        rngs: _Rngs | None = None,
    ):
        values = _checked(
            self,
            _layers.CONCRETE,
            weight_regularizer=weight_regularizer,
            dropout_regularizer=dropout_regularizer,
            init_rate=init_rate,
            temperature=temperature,
        )
        for name, value in values.items():
            setattr(self, name, value)
        if layer is not None and not isinstance(layer, nnx.Module):
            raise TypeError(
                f"{_layers.owner(self)}: `layer` must be an NNX module such as "
                f"`nnx.Linear(...)` or None; got {type(layer).__name__}."
            )
        _check_variable_type(self, variable_type)
        self.layer = layer if layer is not None else nnx.data(None)
        self.variable_type = variable_type
        logit = _layers.concrete_logit(values["init_rate"])
        self.logit_p = nnx.Param(jnp.asarray(logit, jnp.float32))
        self._init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self, inputs, *, deterministic: bool | None = None, rngs: _Rngs | None = None
    ) -> jax.Array:
        """Drop ``inputs`` with the learned rate, then apply ``layer`` (if any)."""
        call = self._call(deterministic, rngs)
        values = self._current(_layers.CONCRETE)
        logit_p = self.logit_p[...]
        y, penalty = _layers.concrete_layer(
            values, inputs, logit_p, call, self.layer, _params
        )
        _sow_loss(self, self.variable_type, "concrete_dropout", penalty)
        return y


@_DOCS.module(_layers.SPARSE_VD_DOC, rngs=_DENSE_RNGS, variable_type=_SOWN_AS)
class SparseVariationalDense(_Stochastic):
    """A linear layer with sparse variational dropout (Molchanov et al. 2017).

    The NNX version of :class:`jaxreg.linen.SparseVariationalDense`: parameters
    ``kernel`` (the weight means, ``(in_features, out_features)``),
    ``log_sigma2`` and ``bias``. The KL term is sown as ``variable_type``
    (:class:`Loss`) under ``"sparse_vd_kl"``; collect it with
    :func:`flax.nnx.capture`.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.SparseVariationalDense(4, 3, kl_weight=1e-3, rngs=nnx.Rngs(0))
      >>> y, losses = nnx.capture(layer, jn.Loss)(jnp.ones((2, 4)))
      >>> y.shape, len(jax.tree.leaves(losses))
      ((2, 3), 1)
      >>> la = jaxreg.sparse_vd_log_alpha(layer.kernel[...], layer.log_sigma2[...])
      >>> float(jaxreg.sparse_vd_pruned_fraction(la))
      0.0
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        kernel_init: Initializer = _DEFAULT_KERNEL_INIT,
        bias_init: Initializer = _DEFAULT_BIAS_INIT,
        log_sigma2_init: float = -10.0,
        threshold: float = 3.0,
        kl_weight: float = 1.0,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        variable_type: type[nnx.Variable] = Loss,
        rngs: _Rngs,
    ):
        self.dtype, self.param_dtype = dtype, param_dtype
        self.kernel_init, self.bias_init = kernel_init, bias_init
        values = dict(in_features=in_features, out_features=out_features)
        values.update(use_bias=use_bias, threshold=threshold, kl_weight=kl_weight)
        values.update(log_sigma2_init=log_sigma2_init)
        _check_variable_type(self, variable_type)
        self.variable_type = variable_type
        checks = {
            **_LINEAR,
            **_layers.SPARSE_VD,
            "log_sigma2_init": _layers.finite_field,
        }
        rngs = self._init_dense(checks, values, kernel_init, rngs)
        shape = (in_features, out_features)
        self.log_sigma2 = nnx.Param(jnp.full(shape, log_sigma2_init, param_dtype))
        self._init_stochastic(deterministic, rng_collection, rngs)

    def __call__(
        self, inputs, *, deterministic: bool | None = None, rngs: _Rngs | None = None
    ) -> jax.Array:
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``."""
        call = self._call(deterministic, rngs)
        x, kernel, bias = self._promoted(inputs)
        values = self._current(_layers.SPARSE_VD)
        log_sigma2 = self.log_sigma2[...]
        kl = _layers.sparse_vd_kl(values, kernel, log_sigma2)
        _sow_loss(self, self.variable_type, "sparse_vd_kl", kl)
        return _layers.sparse_vd_dense(values, x, kernel, log_sigma2, bias, call)
