r"""Early stopping as a pure, jit-able state machine.

:func:`early_stopping` returns an :class:`EarlyStopping` pair of pure functions
``init(params) -> state`` and ``update(state, metric, params) -> (state, stop)``,
in the style of an optax ``GradientTransformation``. The state is a
``NamedTuple`` of arrays (a pytree): it can live in a ``jax.lax.while_loop`` or
``scan`` carry, be checkpointed with ``flax.serialization`` or Orbax, and the
decision itself is traced, so ``update`` runs under ``jax.jit``. (Flax's
``flax.training.early_stopping.EarlyStopping`` branches in Python on the metric
and therefore cannot run inside ``jit``.)

The stop decision reproduces Keras' ``keras.callbacks.EarlyStopping`` (Keras 3,
``restore_best_weights=True`` for the best step/params) step for step; see
:func:`early_stopping` for the exact rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import (
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_nonnegative,
    check_real_scalar,
    short_repr,
)
from jaxreg._trees import path_string

__all__ = ["EarlyStopping", "EarlyStoppingState", "early_stopping"]

PyTree = Any


class EarlyStoppingState(NamedTuple):
    """State of :func:`early_stopping` (a pytree of arrays).

    Fields: ``step``, the number of ``update`` calls so far (int32; the next call
    is epoch ``step``, 0-based); ``best``, the best metric among monitored epochs
    (float32; ``+inf`` in mode ``"min"`` and ``-inf`` in mode ``"max"`` before
    the first monitored epoch, which always sets it, as Keras' ``best=None``);
    ``best_step``, the epoch of the best metric (int32; Keras' ``best_epoch``);
    ``wait``, epochs since the counter was last reset
    (int32); ``best_params``, the parameters at ``best_step`` if
    ``keep_best=True``, else None.
    """

    step: jax.Array
    best: jax.Array
    best_step: jax.Array
    wait: jax.Array
    best_params: PyTree


class EarlyStopping(NamedTuple):
    """The pure functions returned by :func:`early_stopping`."""

    init: Callable[[PyTree], EarlyStoppingState]
    update: Callable[..., tuple[EarlyStoppingState, jax.Array]]


def _check_state(state, metric) -> None:
    if isinstance(state, EarlyStoppingState):
        return
    swapped = isinstance(metric, EarlyStoppingState)
    hint = " (the arguments look swapped)" if swapped else ""
    raise TypeError(
        "`state` must be the EarlyStoppingState returned by `init` or by a "
        f"previous `update`; got {type(state).__name__} {short_repr(state)}{hint}. "
        "Call `state, stop = update(state, metric, params)`."
    )


def _check_metric(metric) -> jax.Array:
    if isinstance(metric, EarlyStoppingState):
        raise TypeError(
            "`metric` must be a real scalar; got an EarlyStoppingState (the "
            "arguments look swapped). Call `update(state, metric, params)`."
        )
    return jnp.asarray(check_real_scalar(metric, "metric"), jnp.float32)


def _check_best_params(params, kept) -> None:
    """``params`` must match the best params kept since ``init``, leaf for leaf."""
    new_def = jax.tree_util.tree_structure(params)
    old_def = jax.tree_util.tree_structure(kept)
    if new_def != old_def:
        raise ValueError(
            "`params` must have the tree structure of the params given to `init` "
            f"(keep_best=True keeps a copy of them); got\n  params: {new_def}\n"
            f"  init:   {old_def}"
        )
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, new), old in zip(paths, jax.tree_util.tree_leaves(kept), strict=True):
        shape, dtype = np.shape(new), jnp.asarray(new).dtype
        if shape != old.shape or dtype != old.dtype:
            raise ValueError(
                f"`params` leaf {path_string(path) or '<root>'!r} has shape {shape} "
                f"and dtype {dtype}, but the best params kept since `init` have "
                f"shape {old.shape} and dtype {old.dtype}; pass params of the "
                "same structure, shapes and dtypes at every `update`."
            )


def early_stopping(
    patience: int,
    *,
    min_delta: float = 0.0,
    mode: str = "min",
    baseline: float | None = None,
    start_from: int = 0,
    keep_best: bool = False,
) -> EarlyStopping:
    r"""Stop when a monitored metric has stopped improving (Keras semantics).

    Call ``update`` once per epoch (or evaluation) with the metric. Epochs are
    numbered :math:`e = 0, 1, \dots` by the calls. With :math:`\delta` =
    ``min_delta``, a value :math:`m` *improves on* a reference :math:`r` when
    :math:`m + \delta < r` (mode ``"min"``) or :math:`m - \delta > r` (mode
    ``"max"``). At epoch :math:`e`:

    1. if :math:`e <` ``start_from`` (warm-up) nothing happens and ``stop`` is
       False;
    2. otherwise ``wait`` grows by one;
    3. if this is the first monitored epoch (:math:`e =` ``start_from``), or
       :math:`m` improves on ``best``: ``best`` :math:`\leftarrow m`, the best
       step/params are this epoch's, and ``wait`` is reset to 0 only if there is
       no ``baseline`` or :math:`m` also improves on ``baseline``; ``stop`` is
       False;
    4. otherwise ``stop`` is True when ``wait >= patience`` and :math:`e > 0`.

    This is the rule of ``keras.callbacks.EarlyStopping(min_delta, patience,
    mode, baseline, start_from_epoch)`` in Keras 3 (checked against Keras 3.15
    itself): Keras starts with no best value, so its first monitored value always
    counts as an improvement, even NaN or inf. A NaN never improves on anything
    and nothing improves on a NaN best, so a NaN at the first monitored epoch
    freezes ``best`` and training stops ``patience`` epochs later. ``stop`` is not
    sticky: it reports this epoch's decision (end your loop on the first True).
    Comparisons are done in float32: the metric, ``min_delta`` and ``baseline``
    are rounded to float32 and ``m + delta`` is rounded once (Keras subtracts
    Python floats, then rounds; the decisions agree whenever ``min_delta`` and
    ``baseline`` are float32 numbers, e.g. ``0``, ``0.125``, ``1.0``, and
    otherwise differ only for a metric within half a float32 ulp of a
    threshold).

    Args:
      patience: number of epochs without improvement before stopping (int >= 0).
      min_delta: smallest change that counts as an improvement (finite, >= 0).
      mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"`` (e.g. accuracy).
      baseline: if not None, ``wait`` is only reset by values that also improve on
        it; training stops after ``patience`` epochs unless the metric beats it.
        A finite number.
      start_from: number of warm-up epochs that are not monitored (int >= 0).
      keep_best: keep a copy of the params at the best epoch in the state (to
        restore them after training).

    Returns:
      An :class:`EarlyStopping` ``(init, update)`` of pure functions:
      ``init(params=None) -> EarlyStoppingState`` and
      ``update(state, metric, params=None) -> (state, stop)`` with ``stop`` a
      boolean scalar array. ``metric`` is a real scalar (a Python number or a 0-d
      array, concrete or traced; NaN and inf are allowed and follow Keras).
      ``params`` is required when ``keep_best=True`` and must have the structure,
      shapes and dtypes of the params given to ``init``.

    Raises:
      ValueError: negative ``patience``/``start_from``/``min_delta``; unknown
        ``mode``; NaN or infinite ``min_delta``/``baseline``; missing params
        with ``keep_best=True``; in ``update``, a non-scalar ``metric``, params
        of another structure, shape or dtype than at ``init``, or a state from
        an ``early_stopping`` with another ``keep_best``.
      TypeError: non-int ``patience``/``start_from``; non-bool ``keep_best``;
        non-number ``baseline``; in ``update``, a ``state`` that is not an
        :class:`EarlyStoppingState` (e.g. swapped arguments) or a ``metric``
        that is not a real number (None, complex, bool, a string, ...).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> es = jaxreg.early_stopping(patience=2)
      >>> state = es.init()
      >>> update = jax.jit(es.update)
      >>> for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.4]):
      ...     state, stop = update(state, loss)
      ...     if stop:
      ...         break
      >>> epoch, int(state.best_step), float(state.best)
      (3, 1, 0.5)

    References:
      Prechelt. "Early Stopping - But When?" In Neural Networks: Tricks of the
      Trade, LNCS 1524, 1998. https://doi.org/10.1007/3-540-49430-8_3 ;
      Keras ``EarlyStopping``, https://keras.io/api/callbacks/early_stopping/
    """
    patience = check_int(patience, "patience", minimum=0)
    start_from = check_int(start_from, "start_from", minimum=0)
    delta = jnp.float32(check_nonnegative(min_delta, "min_delta"))
    check_choice(mode, "mode", ("min", "max"))
    if baseline is not None:
        baseline = jnp.float32(check_finite(baseline, "baseline"))
    check_bool(keep_best, "keep_best")
    sign = 1.0 if mode == "min" else -1.0

    def improves(value, reference):
        if mode == "min":
            return value + delta < reference
        return value - delta > reference

    def init_fn(params: PyTree = None) -> EarlyStoppingState:
        if keep_best and params is None:
            raise ValueError(
                "`early_stopping(..., keep_best=True).init` needs the initial params "
                "(the best params start as a copy of them); got params=None."
            )
        zero = jnp.zeros([], jnp.int32)
        return EarlyStoppingState(
            step=zero,
            best=jnp.asarray(sign * jnp.inf, jnp.float32),
            best_step=zero,
            wait=zero,
            best_params=jax.tree_util.tree_map(jnp.asarray, params)
            if keep_best
            else None,
        )

    def update_fn(
        state: EarlyStoppingState, metric, params: PyTree = None
    ) -> tuple[EarlyStoppingState, jax.Array]:
        _check_state(state, metric)
        value = _check_metric(metric)
        if keep_best != (state.best_params is not None):
            raise ValueError(
                f"`state` comes from an early_stopping with keep_best="
                f"{not keep_best}, but this one has keep_best={keep_best}; pass the "
                "state that this object's `init` returned."
            )
        if keep_best:
            if params is None:
                raise ValueError(
                    "`early_stopping(..., keep_best=True).update` needs the current "
                    "params: call `update(state, metric, params)`."
                )
            _check_best_params(params, state.best_params)
        epoch = state.step
        monitored = epoch >= start_from
        # Keras starts with best=None: the first monitored value always improves.
        improved = monitored & ((epoch == start_from) | improves(value, state.best))
        resets = improved
        if baseline is not None:
            resets = improved & improves(value, baseline)
        wait = jnp.where(monitored, state.wait + 1, state.wait)
        wait = jnp.where(resets, 0, wait)
        best_params = state.best_params
        if keep_best:
            best_params = jax.tree_util.tree_map(
                lambda new, old: jnp.where(improved, new, old),
                params,
                state.best_params,
            )
        new_state = EarlyStoppingState(
            step=epoch + 1,
            best=jnp.where(improved, value, state.best),
            best_step=jnp.where(improved, epoch, state.best_step),
            wait=wait,
            best_params=best_params,
        )
        stop = monitored & ~improved & (wait >= patience) & (epoch > 0)
        return new_state, stop

    return EarlyStopping(init=init_fn, update=update_fn)
