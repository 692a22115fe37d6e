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


class _Stochastic(nnx.Module):
    """Shared machinery of the stochastic NNX modules (not public).

    Subclasses call :meth:`_init_stochastic` in ``__init__``; in ``__call__`` they
    resolve the flag with :meth:`_resolve_deterministic` and draw keys with
    :meth:`_call_key`, then call the module core.
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

    A subclass sets ``LAYER``, the :class:`jaxreg._layers.Layer` that checks its
    arguments and names the pure function, and calls :meth:`_init_family`.
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
        det = self._resolve_deterministic(deterministic)
        values = self._current(self.LAYER.fields)
        return self.LAYER.apply(values, inputs, det, lambda: self._call_key(rngs, det))


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


class Dropout(_Family):
    """Dropout: a drop-in replacement for :class:`flax.nnx.Dropout`.

    Same constructor, ``__call__(inputs, *, deterministic=None, rngs=None)``,
    attributes and state paths as ``nnx.Dropout``, and the same edge cases
    (``rate == 0`` or deterministic returns the input, ``rate == 1`` returns zeros
    with finite gradients; neither draws a key). The mask comes from
    :func:`jaxreg.dropout`, whose scaling uses the keep probability the sampler
    realises, so ``E[output] == inputs`` exactly. Training output:
    ``inputs * mask / (1 - rate)``. With ``activation`` set, ``f(inputs)`` takes
    the place of ``inputs`` throughout, computed fused with the mask. Unlike
    ``nnx.Dropout``, ``rngs`` may also be a raw key at construction.

    Args:
      rate: the dropout probability (not the keep rate!), in ``[0, 1]``.
      broadcast_dims: dimensions that share one mask value.
      deterministic: if True return the inputs; ``model.train()`` /
        ``model.eval()`` set it.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None (then pass ``rngs``
        at call time).
      inverted: if False use classic dropout (see :func:`jaxreg.dropout`).
      activation: None, or an elementwise activation (``"tanh"``, ``"sigmoid"``,
        ``"relu"``, ``"elu"``, ``"softplus"`` or the matching function such as
        ``nnx.tanh``) applied to the inputs before dropping them, fused with the
        dropout: the output of the unfused ``Dropout(...)(f(inputs))``, but the
        backward pass keeps only the layer's output, not ``f``'s as well (see
        the ``activation`` argument of :func:`jaxreg.dropout`).

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

    References:
      Srivastava et al. "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting." JMLR 15, 2014. https://jmlr.org/papers/v15/srivastava14a.html
    """

    LAYER = _layers.DROPOUT

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


class SpatialDropout(_Family):
    """Spatial dropout: drop whole channels of 1-D/2-D/3-D feature maps.

    One keep decision per (example, channel), shared over all spatial positions;
    see :func:`jaxreg.spatial_dropout`. Axis 0 is the batch.

    Args:
      rate: probability of dropping a channel, in ``[0, 1]``.
      channel_axis: the channel axis (``-1`` channels-last, ``1`` channels-first).
      deterministic: if True return the inputs.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.SpatialDropout(0.5, rngs=nnx.Rngs(0))
      >>> y = layer(jnp.ones((2, 4, 4, 3)))
      >>> bool(jnp.all(y == y[:, :1, :1, :]))  # constant over space
      True

    References:
      Tompson et al. "Efficient Object Localization Using Convolutional
      Networks." CVPR 2015. https://arxiv.org/abs/1411.4280
    """

    LAYER = _layers.SPATIAL_DROPOUT

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


class GaussianDropout(_RateOnly):
    """Multiplicative Gaussian noise with mean 1 and variance ``rate / (1 - rate)``.

    See :func:`jaxreg.gaussian_dropout`.

    Args:
      rate: drop-equivalent rate in ``[0, 1)``.
      deterministic: if True return the inputs.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxreg.nnx as jn
      >>> layer = jn.GaussianDropout(0.2, rngs=jax.random.key(0))
      >>> layer(jnp.ones(3), deterministic=True)
      Array([1., 1., 1.], dtype=float32)

    References:
      Srivastava et al. 2014, section 10 ("Multiplicative Gaussian Noise").
      https://jmlr.org/papers/v15/srivastava14a.html
    """

    LAYER = _layers.GAUSSIAN_DROPOUT


class GaussianNoise(_Family):
    """Additive zero-mean Gaussian noise: ``inputs + stddev * eps`` when training.

    See :func:`jaxreg.gaussian_noise`. The stream is ``"dropout"`` by default.

    Args:
      stddev: noise standard deviation, ``>= 0``.
      deterministic: if True return the inputs.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.GaussianNoise(0.1, rngs=nnx.Rngs(dropout=0))
      >>> layer(jnp.zeros(3)).shape
      (3,)

    References:
      Bishop. "Training with Noise is Equivalent to Tikhonov Regularization."
      Neural Computation 7(1), 1995. https://doi.org/10.1162/neco.1995.7.1.108
    """

    LAYER = _layers.GAUSSIAN_NOISE

    def __init__(
        self,
        stddev: float,
        *,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: _Rngs | None = None,
    ):
        self._init_family(deterministic, rng_collection, rngs, stddev=stddev)


class AlphaDropout(_Family):
    """Alpha dropout for self-normalizing (SELU) networks.

    See :func:`jaxreg.alpha_dropout`.

    Args:
      rate: drop probability in ``[0, 1]``.
      broadcast_dims: axes sharing one keep decision; ``(1, 2)`` on an NHWC
        batch is feature alpha dropout (PyTorch's ``FeatureAlphaDropout``).
      deterministic: if True return the inputs.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = jn.AlphaDropout(0.1, rngs=nnx.Rngs(1))(x)
      >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
      True

    References:
      Klambauer et al. "Self-Normalizing Neural Networks." NeurIPS 2017.
      https://arxiv.org/abs/1706.02515
    """

    LAYER = _layers.ALPHA_DROPOUT

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


class DropPath(_Family):
    """Stochastic depth: drop a whole residual branch per example (or per batch).

    Use ``x + drop_path(branch(x))``; see :func:`jaxreg.drop_path`.

    Args:
      rate: probability of dropping the branch, in ``[0, 1]``.
      mode: ``"row"`` (per example) or ``"batch"`` (the whole batch).
      deterministic: if True return the inputs.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> y = jn.DropPath(0.5, rngs=nnx.Rngs(0))(jnp.ones((4, 3)))
      >>> bool(jnp.all((y == 0).all(1) | (y == 2).all(1)))  # whole rows
      True

    References:
      Huang et al. "Deep Networks with Stochastic Depth." ECCV 2016.
      https://arxiv.org/abs/1603.09382
    """

    LAYER = _layers.DROP_PATH

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


class DropBlock(_Family):
    """DropBlock: drop contiguous ``block_size x block_size`` regions (NHWC).

    See :func:`jaxreg.dropblock`.

    Args:
      rate: per-position drop probability, in ``[0, 1]``.
      block_size: side of the square blocks (``>= 1``).
      couple_channels: one block mask shared by all channels of an example
        (default: one per channel, as timm and the TensorFlow reference code).
      gamma_scale: factor ``>= 0`` on the seed rate (timm's ``gamma_scale``).
      deterministic: if True return the inputs.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.DropBlock(0.1, block_size=3, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 8, 8, 4))).shape
      (2, 8, 8, 4)

    References:
      Ghiasi, Lin, Le. "DropBlock: A regularization method for convolutional
      networks." NeurIPS 2018. https://arxiv.org/abs/1810.12890
    """

    LAYER = _layers.DROPBLOCK

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


class DropConnectDense(_Stochastic):
    """A linear layer with DropConnect: a drop-in for :class:`flax.nnx.Linear`.

    Same constructor arguments and parameters as ``nnx.Linear`` (``kernel`` of
    shape ``(in_features, out_features)``, ``bias``), so the ``nnx.state`` paths
    of the parameters match; the dropout stream is stored in ``rngs``. While
    training each *weight* is dropped with probability ``rate`` and the kept ones
    are scaled by ``1 / (1 - rate)`` (:func:`jaxreg.dropconnect_dense`).
    ``activation`` (default none) is applied after the layer. At inference
    (``deterministic=True``), ``inference`` selects ``"mean"``
    (``activation(x @ kernel + bias)``), ``"moments"`` (Wan et al.'s Gaussian
    moment-matching rule with ``num_samples`` samples,
    :func:`jaxreg.dropconnect_inference`; needs a key) or ``"mc"`` (one sampled
    mask; needs a key). See :class:`jaxreg.linen.DropConnectDense`.

    Args:
      in_features: number of input features.
      out_features: number of output features.
      use_bias: whether to add a bias.
      dtype: computation dtype (inferred if None).
      param_dtype: dtype of the parameters.
      precision: matmul precision (None, a ``jax.lax.Precision`` or a string).
      kernel_init: kernel initializer.
      bias_init: bias initializer.
      rate: probability of dropping a weight, in ``[0, 1]``.
      per_example: an independent weight mask per example, or one per batch.
      inference: ``"mean"``, ``"moments"`` or ``"mc"``.
      activation: elementwise activation applied to the output, or None.
      num_samples: Gaussian samples for ``inference="moments"``.
      deterministic: inference path if True; ``model.train()``/``eval()`` set it.
      rng_collection: the dropout stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs`` (parameters from its ``params`` stream, masks from
        ``rng_collection``), an ``nnx.RngStream`` or a key (used for both).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> layer = jn.DropConnectDense(4, 3, rate=0.5, rngs=nnx.Rngs(0))
      >>> sorted(path for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param)))
      [('bias',), ('kernel',)]
      >>> layer(jnp.ones((2, 4))).shape
      (2, 3)

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013. https://proceedings.mlr.press/v28/wan13.html
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
        det = self._resolve_deterministic(deterministic)
        x, kernel, bias = self._promoted(inputs)
        values = self._current(_layers.DROPCONNECT)
        return _layers.dropconnect(
            x, kernel, bias, det, lambda: self._call_key(rngs, det), **values
        )


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------


class ZoneoutCell(_Stochastic, nnx.RNNCellBase):
    """Zoneout around any NNX RNN cell: units keep their previous value at random.

    ``ZoneoutCell(cell, rate, rngs=...)`` has the wrapped cell's interface
    (``(carry, inputs) -> (carry, outputs)``, ``initialize_carry``,
    ``num_feature_axes``), so it works with :class:`flax.nnx.RNN`. Every leaf of
    the new carry goes through :func:`jaxreg.zoneout` (training: keep the previous
    value with probability ``rate``; inference: the expectation). Outputs that are
    the new hidden state itself are replaced by the zoned-out state. See
    :class:`jaxreg.linen.ZoneoutCell`.

    Inside ``nnx.RNN`` the stream is part of the scanned carry, so masks vary per
    time step; ``nnx.RNN(cell, broadcast_rngs="dropout")`` shares one mask over the
    sequence (variational). That filter matches the stream's *tag*: the
    collection name when the ``nnx.Rngs`` has such a stream (``nnx.Rngs(dropout=0)``),
    ``"default"`` when it fell back to the default stream; ``broadcast_rngs=True``
    broadcasts every stream.

    Args:
      cell: the wrapped cell (an :class:`flax.nnx.RNNCellBase`).
      rate: one rate, or a pytree with the carry's structure (e.g. ``(0.5,
        0.05)`` for ``LSTMCell``'s ``(c, h)``).
      deterministic: if True use the expectation.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      rngs: ``nnx.Rngs``, ``nnx.RngStream``, a key, or None.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxreg.nnx as jn
      >>> rngs = nnx.Rngs(0)
      >>> cell = jn.ZoneoutCell(nnx.LSTMCell(3, 8, rngs=rngs), (0.5, 0.05),
      ...                       rngs=rngs)
      >>> nnx.RNN(cell)(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)

    References:
      Krueger et al. "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
      Activations." ICLR 2017. https://arxiv.org/abs/1606.01305
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
        det = self._resolve_deterministic(deterministic)
        new_carry, outputs = self.cell(carry, inputs)
        return _layers.zoneout(
            _layers.owner(self),
            self.rate,
            carry,
            new_carry,
            outputs,
            det,
            lambda: self._call_key(rngs, det),
        )

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


class ActivityRegularization(nnx.Module):
    """Penalize activations (Keras semantics); returns the inputs unchanged.

    The penalty ``l1 * sum(|x|) + l2 * sum(x**2)`` (as Keras 3's
    ``ActivityRegularization``) is *sown* as ``variable_type`` (:class:`Loss` by
    default) under the name ``"activity_penalty"``, one entry per call. Collect it
    with :func:`flax.nnx.capture` in the loss function and add it to the loss::

        def loss_fn(model):
            logits, losses = nnx.capture(model, jaxreg.nnx.Loss)(x)
            return data_loss(logits, y) + sum(jax.tree.leaves(losses))

    Gradients flow through the penalty into the activations. Outside
    ``nnx.capture`` (or when another variable type is captured) nothing is
    recorded, as with linen's ``sow`` into an immutable collection, so the model's
    ``nnx.state`` never changes structure. (On Flax versions without
    ``nnx.capture`` the legacy ``sow`` is used: retrieve the terms with
    ``nnx.pop(model, Loss)``.)

    Args:
      l1: factor of the L1 activity penalty, ``>= 0``.
      l2: factor of the squared-L2 activity penalty, ``>= 0``.
      variable_type: the ``nnx.Variable`` subclass the penalty is sown as.

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

    References:
      Keras API, ``ActivityRegularization`` layer.
      https://keras.io/api/layers/regularization_layers/activity_regularization/
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


class ConcreteDropout(_Stochastic):
    """Concrete dropout with a learned rate, optionally wrapping the next layer.

    The NNX version of :class:`jaxreg.linen.ConcreteDropout`. The drop probability
    is the parameter ``logit_p`` (``nnx.Param``, ``p = sigmoid(logit_p)``,
    initialised at ``init_rate``); the relaxed mask comes from
    :func:`jaxreg.concrete_dropout`. If ``layer`` is given the module returns
    ``layer(dropped inputs)``, and the regularizer of
    :func:`jaxreg.concrete_dropout_regularizer` (weight term on the layer's
    ``nnx.Param`` leaves plus the entropy term with ``input_dim =
    inputs.shape[-1]``) is sown as ``variable_type`` (:class:`Loss`) under
    ``"concrete_dropout"``; without ``layer`` only the entropy term is sown.
    Collect it with :func:`flax.nnx.capture` as for
    :class:`ActivityRegularization`::

        logits, losses = nnx.capture(model, jaxreg.nnx.Loss)(x)
        loss = data_loss(logits, y) + sum(jax.tree.leaves(losses))

    ``deterministic`` and ``rngs`` follow :class:`Dropout`.

    Args:
      layer: the NNX layer the dropped inputs feed, or None.
      weight_regularizer: ``>= 0`` (paper: ``l**2 / N``).
      dropout_regularizer: ``>= 0`` (paper: ``2 / N``).
      init_rate: initial drop probability, in ``(0, 1)``.
      temperature: relaxation temperature, ``> 0`` (paper: 0.1).
      deterministic: inference path if True; ``model.train()``/``eval()`` set it.
      rng_collection: the stream taken from an ``nnx.Rngs``.
      variable_type: the ``nnx.Variable`` subclass the regularizer is sown as.
      rngs: ``nnx.Rngs``, an ``nnx.RngStream`` or a key (see :class:`Dropout`).

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

    References:
      Gal, Hron, Kendall. "Concrete Dropout." NeurIPS 2017.
      https://arxiv.org/abs/1705.07832
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
        det = self._resolve_deterministic(deterministic)
        values = self._current(_layers.CONCRETE)
        logit_p = self.logit_p[...]
        layer = self.layer
        y, penalty = _layers.concrete_layer(
            values,
            inputs,
            logit_p,
            det,
            lambda: self._call_key(rngs, det),
            layer=layer,
            weights=lambda: nnx.state(layer, nnx.Param),
        )
        _sow_loss(self, self.variable_type, "concrete_dropout", penalty)
        return y


class SparseVariationalDense(_Stochastic):
    """A linear layer with sparse variational dropout (Molchanov et al. 2017).

    The NNX version of :class:`jaxreg.linen.SparseVariationalDense`: parameters
    ``kernel`` (weight means, ``(in_features, out_features)``), ``log_sigma2``
    (per-weight log variance) and ``bias``; training uses the local
    reparameterisation trick, inference (``deterministic=True``) the pruned
    weight means (``log alpha > threshold`` set to zero), see
    :func:`jaxreg.sparse_vd_dense`. ``kl_weight * sparse_vd_kl(log_alpha)`` is
    sown as ``variable_type`` (:class:`Loss`) under ``"sparse_vd_kl"`` (collect it
    with :func:`flax.nnx.capture`); use ``kl_weight = 1 / N``.

    Args:
      in_features: number of input features.
      out_features: number of output features.
      use_bias: whether to add a bias.
      dtype: computation dtype (inferred if None).
      param_dtype: dtype of the parameters.
      kernel_init: initializer of the weight means.
      bias_init: bias initializer.
      log_sigma2_init: initial log variance of every weight.
      threshold: log-alpha pruning threshold at inference (paper: 3).
      kl_weight: factor of the sown KL term, ``>= 0``.
      deterministic: inference path if True; ``model.train()``/``eval()`` set it.
      rng_collection: the noise stream taken from an ``nnx.Rngs``.
      variable_type: the ``nnx.Variable`` subclass the KL term is sown as.
      rngs: ``nnx.Rngs`` (parameters from its ``params`` stream, noise from
        ``rng_collection``), an ``nnx.RngStream`` or a key.

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

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017. https://arxiv.org/abs/1701.05369
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
        det = self._resolve_deterministic(deterministic)
        x, kernel, bias = self._promoted(inputs)
        values = self._current(_layers.SPARSE_VD)
        log_sigma2 = self.log_sigma2[...]
        kl = _layers.sparse_vd_kl(values, kernel, log_sigma2)
        _sow_loss(self, self.variable_type, "sparse_vd_kl", kl)
        return _layers.sparse_vd_dense(
            values, x, kernel, log_sigma2, bias, det, lambda: self._call_key(rngs, det)
        )
