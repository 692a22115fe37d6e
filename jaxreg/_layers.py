"""The module logic of jaxreg's layers, written once and free of any framework.

:mod:`jaxreg.linen`, :mod:`jaxreg.nnx` and :mod:`jaxreg.equinox` are adapters: each
holds the fields the way its framework does (dataclass fields, NNX attributes,
Equinox pytree fields), finds the PRNG key (``make_rng``, an ``nnx.RngStream``, a
``key`` argument) and reports loss terms (``sow``, ``nnx.capture``, a returned
value). Everything else about a module lives here, as plain functions of explicit
values:

* the fields of every module and their checks (run at construction):
  :data:`DROPOUT` and the other :class:`Layer` specs of the dropout family,
  :data:`DROPCONNECT`, :data:`CONCRETE`, :data:`SPARSE_VD`, :data:`ACTIVITY`,
  applied by :func:`check_fields`;
* resolving ``deterministic``: :func:`jaxreg._checks.check_flag` accepts what Flax
  accepts plus traced flags, and :func:`run` takes the Python path for a concrete
  flag and ``jax.lax.cond`` between both paths for a traced one;
* when a call draws a key (:func:`needs_key`), DropConnect's inference modes,
  zoneout's carry and output mapping, and the loss terms modules report.

Adding a module to the dropout family is one :class:`Layer` here plus one small
class in each adapter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg.bayesian as _bayesian
import jaxreg.penalties as _penalties
import jaxreg.stochastic as _stochastic
import jaxreg.weight_dropout as _weight_dropout
from jaxreg._checks import (
    check_bool,
    check_callable,
    check_choice,
    check_flag,
    check_int,
    check_nonnegative,
    check_positive,
    check_rate,
    check_str,
    check_threshold,
    float32_or_wider,
    short_repr,
    static_value,
)
from jaxreg._keys import as_key
from jaxreg._sampler import activation_name

Check = Callable[[Any, str], Any]

#: The modules every adapter (linen, nnx, equinox) defines, by class name.
MODULES = (
    "ActivityRegularization",
    "AlphaDropout",
    "ConcreteDropout",
    "DropBlock",
    "DropConnectDense",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "GaussianNoise",
    "SparseVariationalDense",
    "SpatialDropout",
    "ZoneoutCell",
)


def owner(module) -> str:
    """The qualified class name errors are prefixed with (``jaxreg.nnx.Dropout``)."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_fields(
    where: str, checks: Mapping[str, Check], values: Mapping[str, Any]
) -> dict[str, Any]:
    """``{name: checks[name](values[name], name)}``: every field checked, normalized.

    Errors keep their type and are prefixed with ``where`` (the module's name).
    """
    return {
        name: check_field(where, check, values[name], name)
        for name, check in checks.items()
    }


def check_field(where: str, check: Check, value, name: str):
    """``check(value, name)``, errors prefixed with ``where`` (types kept)."""
    try:
        return check(value, name)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None


def check_key(where: str, key, name: str):
    """A call's PRNG key as :func:`jaxreg._keys.as_key` checks it, errors prefixed."""
    return check_field(where, lambda k, n: as_key(k, name=n), key, name)


# --------------------------------------------------------------------------------
# Field checks (each ``check(value, name) -> normalized value``).
# --------------------------------------------------------------------------------


def rate_below_one_field(value, name):
    """A drop probability in ``[0, 1)`` (Gaussian dropout's variance is finite)."""
    return check_rate(value, name, allow_one=False)


def open_rate_field(value, name):
    """A drop probability strictly inside ``(0, 1)`` (its logit is learned)."""
    value = check_rate(value, name)
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"`{name}` is the initial drop probability and must lie strictly between "
            f"0 and 1 (its logit is learned); got {name}={value!r}."
        )
    return value


def rate_tree_field(value, name):
    """One rate, or a pytree of rates (one per leaf of a recurrent carry)."""
    leaves = jax.tree_util.tree_leaves(value)
    if not leaves:
        raise ValueError(
            f"`{name}` must be a rate or a pytree of rates; got {short_repr(value)}."
        )
    for leaf in leaves:
        check_rate(leaf, name)
    return value


def broadcast_dims_field(value, name) -> tuple[int, ...]:
    """Axes sharing one mask value: an int or a sequence of ints, as a tuple.

    Their range depends on the input's rank, checked at call time.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(
            f"`{name}` must be a sequence of ints; got {type(value).__name__} "
            f"{short_repr(value)}."
        )
    dims = tuple(value)
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise TypeError(
                f"`{name}` must contain ints; got {short_repr(d)} in {short_repr(dims)}."
            )
    return tuple(int(d) for d in dims)


def channel_axis_field(value, name) -> int:
    """A channel axis of a rank 3 to 5 input that is not the batch axis 0."""
    axis = check_int(value, name)
    if axis == 0 or not -4 <= axis <= 4:
        raise ValueError(
            f"`{name}` must name a channel axis of a rank 3, 4 or 5 input other than "
            f"the batch axis 0 (e.g. -1 or 1); got {name}={axis}."
        )
    return axis


def activation_field(value, name):
    """A fusable dropout activation (None, a name or the matching function)."""
    activation_name(value)
    return value


def positive_int_field(value, name) -> int:
    """A size, a block side or a number of samples: a Python or NumPy int ``>= 1``."""
    return check_int(value, name, minimum=1)


def drop_path_mode_field(value, name) -> str:
    """``"row"`` (per example) or ``"batch"`` (the whole batch)."""
    return check_choice(value, name, ("row", "batch"))


def finite_field(value, name) -> float:
    """A finite real Python or NumPy number (e.g. an initial log variance)."""
    value = check_threshold(value, name)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {name}={value!r}.")
    return value


def flag_field(value, name):
    """None (decided at call time) or a flag :func:`check_flag` accepts."""
    return None if value is None else check_flag(value, name)


def precision_field(value, name):
    """None, a ``jax.lax.Precision`` or its name (per-operand pairs unsupported)."""
    if value is None or isinstance(value, jax.lax.Precision):
        return value
    if isinstance(value, str):
        try:
            jax.lax.Precision(value)
        except ValueError:
            pass
        else:
            return value
    raise ValueError(
        f"`{name}` must be None, a `jax.lax.Precision` or its name such as "
        f"'highest'; got {name}={short_repr(value)} (per-operand precision pairs "
        "are not supported)."
    )


def matmul_precision(precision):
    """A context applying ``precision`` to the matmuls of the pure functions."""
    if precision is None:
        return contextlib.nullcontext()
    if isinstance(precision, jax.lax.Precision):
        precision = precision.name.lower()
    return jax.default_matmul_precision(precision)


#: The fields every stochastic module of the Flax adapters shares.
STOCHASTIC = {"deterministic": flag_field, "rng_collection": check_str}


# --------------------------------------------------------------------------------
# Choosing the path: the key a call needs, and concrete or traced flags.
# --------------------------------------------------------------------------------


def needs_key(rate, *, key_free_at_one: bool = True) -> bool:
    """False when a concrete ``rate`` makes the output key-independent.

    A rate of 0 returns the input; a rate of 1 returns zeros when
    ``key_free_at_one`` (not for Gaussian noise, whose rate 1 is a real draw).
    """
    value = static_value(rate)
    if value is None:
        return True
    return not (value == 0.0 or (key_free_at_one and value == 1.0))


def run(deterministic, key_needed: Callable[[bool], bool], draw_key, forward):
    """``forward(det, key)`` for the flag ``deterministic``.

    Args:
      deterministic: a Python bool, or a traced boolean (from
        :func:`jaxreg._checks.check_flag`).
      key_needed: ``key_needed(det)`` says whether the path ``det`` uses a key.
      draw_key: returns the key; called at most once, only when a path that may
        run needs it (so no key is drawn at inference or at rate 0).
      forward: ``forward(det, key)`` with a Python bool ``det``; pure (no module
        state is touched inside it, so it may run inside ``jax.lax.cond``).

    Returns:
      ``forward``'s output; for a traced flag, ``jax.lax.cond`` selects between
      ``forward(True, ...)`` and ``forward(False, ...)`` at run time (both are
      traced, the key is drawn once before).
    """
    if isinstance(deterministic, bool):
        return forward(deterministic, draw_key() if key_needed(deterministic) else None)
    infer, train = key_needed(True), key_needed(False)
    key = draw_key() if infer or train else None
    return jax.lax.cond(
        deterministic,
        lambda: forward(True, key if infer else None),
        lambda: forward(False, key if train else None),
    )


# --------------------------------------------------------------------------------
# The dropout family on activations.
# --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
    """One module of the dropout family: its pure function and its fields.

    Attributes:
      fn: the pure function, ``fn(key, inputs, rate, *, deterministic, **options)``.
      fields: every field the function takes, the rate first, with its check;
        the others are passed to ``fn`` by keyword.
      key_free_at_one: a concrete rate of 1 needs no key (the output is zeros).
    """

    fn: Callable
    fields: Mapping[str, Check]
    key_free_at_one: bool = True

    @property
    def rate(self) -> str:
        """The name of the rate field (``rate``, ``p`` or ``stddev``)."""
        return next(iter(self.fields))

    def renamed(self, rate: str) -> Layer:
        """The same layer with its rate field called ``rate`` (Equinox's ``p``)."""
        first, *rest = self.fields.items()
        return dataclasses.replace(self, fields={rate: first[1], **dict(rest)})

    def apply(self, values: Mapping[str, Any], inputs, deterministic, draw_key):
        """The module's output for checked field ``values`` and a resolved flag."""
        rate = values[self.rate]
        options = {name: values[name] for name in self.fields if name != self.rate}
        free = not needs_key(rate, key_free_at_one=self.key_free_at_one)

        def forward(det, key):
            return self.fn(key, inputs, rate, deterministic=det, **options)

        return run(deterministic, lambda det: not (det or free), draw_key, forward)


DROPOUT = Layer(
    _stochastic.dropout,
    {
        "rate": check_rate,
        "broadcast_dims": broadcast_dims_field,
        "inverted": check_bool,
        "activation": activation_field,
    },
)
SPATIAL_DROPOUT = Layer(
    _stochastic.spatial_dropout,
    {"rate": check_rate, "channel_axis": channel_axis_field},
)
GAUSSIAN_DROPOUT = Layer(
    _stochastic.gaussian_dropout, {"rate": rate_below_one_field}, False
)
GAUSSIAN_NOISE = Layer(_stochastic.gaussian_noise, {"stddev": check_nonnegative}, False)
ALPHA_DROPOUT = Layer(
    _stochastic.alpha_dropout,
    {"rate": check_rate, "broadcast_dims": broadcast_dims_field},
)
DROP_PATH = Layer(
    _stochastic.drop_path, {"rate": check_rate, "mode": drop_path_mode_field}
)
DROPBLOCK = Layer(
    _stochastic.dropblock,
    {
        "rate": check_rate,
        "block_size": positive_int_field,
        "couple_channels": check_bool,
        "gamma_scale": check_nonnegative,
    },
)


# --------------------------------------------------------------------------------
# DropConnect.
# --------------------------------------------------------------------------------

INFERENCE_MODES = ("mean", "moments", "mc")

#: DropConnectDense's fields besides the dense layer's sizes and initializers.
DROPCONNECT = {
    "rate": check_rate,
    "per_example": check_bool,
    "inference": lambda value, name: check_choice(value, name, INFERENCE_MODES),
    "activation": check_callable,
    "num_samples": positive_int_field,
    "precision": precision_field,
}


def _identity(u):
    return u


def dropconnect(
    x,
    kernel,
    bias,
    deterministic,
    draw_key,
    *,
    rate,
    per_example: bool,
    inference: str,
    activation,
    num_samples: int,
    precision,
):
    """DropConnectDense's output, for the checked :data:`DROPCONNECT` fields.

    Training, and inference with ``inference="mc"``, apply one sampled weight mask
    (:func:`jaxreg.dropconnect_dense`); ``"mean"`` inference is the dense layer
    and ``"moments"`` the Gaussian rule of :func:`jaxreg.dropconnect_inference`.
    ``activation`` follows the layer. At a concrete rate of 0 or 1 every path is
    exact without a key.
    """
    act = activation if activation is not None else _identity
    free = not needs_key(rate)

    def forward(det, key):
        with matmul_precision(precision):
            if not det or inference == "mc":
                u = _weight_dropout.dropconnect_dense(
                    key, x, kernel, rate, bias=bias, per_example=per_example
                )
                return act(u)
            if inference == "mean" or free:
                u = _weight_dropout.dropconnect_dense(
                    None, x, kernel, rate, bias=bias, deterministic=True
                )
                return act(u)
            return _weight_dropout.dropconnect_inference(
                key, x, kernel, rate, act, bias=bias, num_samples=num_samples
            )

    def key_needed(det):
        return not free and (not det or inference != "mean")

    return run(deterministic, key_needed, draw_key, forward)


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------


def _is_leaf(tree) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(tree))


def zoneout(
    where: str, rate, carry, new_carry, outputs, deterministic, draw_key
) -> tuple[Any, Any]:
    """Zoneout on every leaf of a cell's new carry, and the outputs that show it.

    Args:
      where: the module's name, for errors.
      rate: one rate (for every leaf) or a pytree with the carry's structure.
      carry: the previous carry.
      new_carry: the cell's new carry.
      outputs: the cell's outputs (None for cells that return only the carry).
      deterministic: a flag from :func:`jaxreg._checks.check_flag`.
      draw_key: returns the call's key; leaf ``i`` (in ``jax.tree_util`` order)
        uses ``jax.random.split(key, n)[i]``.

    Returns:
      ``(zoned carry, outputs)``. The output mapping is explicit: an output leaf
      that *is* a new-carry leaf (every Flax cell returns its hidden state ``h``
      both as a carry leaf and as the output) is replaced by that leaf after
      zoneout; other outputs pass through unchanged.
    """
    new_leaves, treedef = jax.tree_util.tree_flatten(new_carry)
    old_leaves = treedef.flatten_up_to(carry)
    if _is_leaf(rate):
        rates = [rate] * len(new_leaves)
    else:
        try:
            rates = treedef.flatten_up_to(rate)
        except (ValueError, TypeError):
            rates = None
        # A carry that is one array takes one rate, not a tuple of them.
        if rates is None or not all(_is_leaf(r) for r in rates):
            raise ValueError(
                f"{where}: `rate` must be one rate or a pytree with the structure of "
                f"the cell's carry {treedef}; got rate={short_repr(rate)}."
            )
    out_leaves, out_def = jax.tree_util.tree_flatten(outputs)
    # Output leaf i shows new-carry leaf carry_index[i] (None: not a carry leaf).
    carry_index = [
        next((j for j, leaf in enumerate(new_leaves) if out is leaf), None)
        for out in out_leaves
    ]
    free = not any(needs_key(r) for r in rates)

    def forward(det, key):
        keys = [None] * len(rates) if key is None else jax.random.split(key, len(rates))
        return [
            _stochastic.zoneout(k, h_prev, h_new, r, deterministic=det)
            for k, h_prev, h_new, r in zip(
                keys, old_leaves, new_leaves, rates, strict=True
            )
        ]

    zoned = run(deterministic, lambda det: not (det or free), draw_key, forward)
    shown = [
        y if j is None else zoned[j]
        for y, j in zip(out_leaves, carry_index, strict=True)
    ]
    return (
        jax.tree_util.tree_unflatten(treedef, zoned),
        jax.tree_util.tree_unflatten(out_def, shown),
    )


# --------------------------------------------------------------------------------
# Loss terms: activity regularization, concrete dropout, sparse variational dropout.
# --------------------------------------------------------------------------------

ACTIVITY = {"l1": check_nonnegative, "l2": check_nonnegative}


def activity_penalty(values: Mapping[str, Any], inputs) -> jax.Array:
    """Keras' activity penalty ``l1 * sum|x| + l2 * sum(x**2)`` (float32 or wider).

    Built on :func:`jaxreg.l1` (``sum|x|``) and :func:`jaxreg.l2`
    (``0.5 * sum(x**2)``, hence the factor 2).
    """
    l1, l2 = values["l1"], values["l2"]
    terms = []
    if static_value(l1) != 0.0:
        terms.append(l1 * _penalties.l1(inputs))
    if static_value(l2) != 0.0:
        terms.append(2.0 * l2 * _penalties.l2(inputs))
    if not terms:
        dtype = float32_or_wider(jnp.result_type(inputs))
        return jnp.zeros((), dtype)
    return sum(terms[1:], terms[0])


CONCRETE = {
    "weight_regularizer": check_nonnegative,
    "dropout_regularizer": check_nonnegative,
    "init_rate": open_rate_field,
    "temperature": check_positive,
}


def concrete_logit(init_rate: float) -> float:
    """The initial ``logit_p`` of a concrete dropout layer."""
    return math.log(init_rate) - math.log1p(-init_rate)


def concrete_layer(
    values, inputs, logit_p, deterministic, draw_key, *, layer=None, weights=None
) -> tuple[jax.Array, jax.Array]:
    """Concrete dropout's ``(output, regularizer)`` for the :data:`CONCRETE` fields.

    The inputs are dropped with the learned rate (unchanged at inference), then
    fed to ``layer`` if it is given. The regularizer is
    :func:`jaxreg.concrete_dropout_regularizer` with ``input_dim =
    inputs.shape[-1]``, its weight term on the leaves of ``weights()`` (the
    layer's parameters, read after the call), the entropy term only without a
    layer.
    """

    def forward(det, key):
        return _bayesian.concrete_dropout(
            key, inputs, logit_p, temperature=values["temperature"], deterministic=det
        )

    y = run(deterministic, lambda det: not det, draw_key, forward)
    leaves = []
    if layer is not None:
        y = layer(y)
        leaves = jax.tree_util.tree_leaves(weights())
    penalty = _bayesian.concrete_dropout_regularizer(
        leaves if leaves else jnp.zeros(()),
        logit_p,
        input_dim=int(jnp.shape(inputs)[-1]),
        weight_regularizer=values["weight_regularizer"],
        dropout_regularizer=values["dropout_regularizer"],
    )
    return y, penalty


SPARSE_VD = {"kl_weight": check_nonnegative, "threshold": check_threshold}


def sparse_vd_kl(values, kernel, log_sigma2) -> jax.Array:
    """``kl_weight * sparse_vd_kl(log_alpha)``: the loss term the layer reports."""
    log_alpha = _bayesian.sparse_vd_log_alpha(kernel, log_sigma2)
    return values["kl_weight"] * _bayesian.sparse_vd_kl(log_alpha)


def sparse_vd_dense(
    values, x, kernel, log_sigma2, bias, deterministic, draw_key
) -> jax.Array:
    """The layer's output: local reparameterisation, or the pruned mean at inference."""

    def forward(det, key):
        return _bayesian.sparse_vd_dense(
            key,
            x,
            kernel,
            log_sigma2,
            bias=bias,
            threshold=values["threshold"],
            deterministic=det,
        )

    return run(deterministic, lambda det: not det, draw_key, forward)
