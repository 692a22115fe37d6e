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

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import check_nonnegative

__all__ = ["EarlyStopping", "EarlyStoppingState", "early_stopping"]

PyTree = Any


class EarlyStoppingState(NamedTuple):
    """State of :func:`early_stopping` (a pytree of arrays).

    Fields: ``step``, the number of ``update`` calls so far (int32; the next call
    is epoch ``step``, 0-based); ``best``, the best metric among monitored epochs
    (float32; ``+inf`` in mode ``"min"`` and ``-inf`` in mode ``"max"`` before
    any); ``best_step``, the epoch of the best metric (int32; before any
    improvement, the first monitored epoch, as Keras' ``best_epoch`` with
    ``restore_best_weights``); ``wait``, epochs since the counter was last reset
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


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a Python int >= 0; got {type(value).__name__} {value!r}."
        )
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0; got {name}={value}.")
    return int(value)


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
    2. otherwise ``wait`` grows by one; at the first monitored epoch the best step
       (and best params) are set to this epoch;
    3. if :math:`m` improves on ``best``: ``best`` :math:`\leftarrow m`, the best
       step/params are this epoch's, and ``wait`` is reset to 0 only if there is no
       ``baseline`` or :math:`m` also improves on ``baseline``; ``stop`` is False;
    4. otherwise ``stop`` is True when ``wait >= patience`` and :math:`e > 0`.

    This is exactly the rule of ``keras.callbacks.EarlyStopping(min_delta,
    patience, mode, baseline, start_from_epoch)`` in Keras 3, so the same metric
    sequence stops at the same epoch. A NaN metric never improves. ``stop`` is not
    sticky: it reports this epoch's decision (end your loop on the first True).
    Comparisons are done in float32.

    Args:
      patience: number of epochs without improvement before stopping (int >= 0).
      min_delta: smallest change that counts as an improvement (>= 0).
      mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"`` (e.g. accuracy).
      baseline: if not None, ``wait`` is only reset by values that also improve on
        it; training stops after ``patience`` epochs unless the metric beats it.
      start_from: number of warm-up epochs that are not monitored (int >= 0).
      keep_best: keep a copy of the params at the best epoch in the state (to
        restore them after training).

    Returns:
      An :class:`EarlyStopping` ``(init, update)`` of pure functions:
      ``init(params=None) -> EarlyStoppingState`` and
      ``update(state, metric, params=None) -> (state, stop)`` with ``stop`` a
      boolean scalar array. ``params`` is required when ``keep_best=True``.

    Raises:
      ValueError: negative ``patience``/``start_from``/``min_delta``; unknown
        ``mode``; NaN ``baseline``; missing params with ``keep_best=True``.
      TypeError: non-int ``patience``/``start_from``; non-bool ``keep_best``;
        non-number ``baseline``.

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
    patience = _check_count(patience, "patience")
    start_from = _check_count(start_from, "start_from")
    min_delta = check_nonnegative(min_delta, "min_delta")
    if mode not in ("min", "max"):
        raise ValueError(
            f'`mode` must be "min" (lower is better) or "max" (higher is better); '
            f"got mode={mode!r}."
        )
    if baseline is not None:
        if isinstance(baseline, bool) or not isinstance(
            baseline, (int, float, np.number)
        ):
            raise TypeError(
                f"`baseline` must be a Python float or None; got "
                f"{type(baseline).__name__} {baseline!r}."
            )
        baseline = float(baseline)
        if math.isnan(baseline):
            raise ValueError("`baseline` must not be NaN; got baseline=nan.")
    if not isinstance(keep_best, bool):
        raise TypeError(
            f"`keep_best` must be a Python bool; got {type(keep_best).__name__} "
            f"{keep_best!r}."
        )
    sign = 1.0 if mode == "min" else -1.0

    def improves(value, reference):
        delta = jnp.float32(min_delta)
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
        if keep_best and params is None:
            raise ValueError(
                "`early_stopping(..., keep_best=True).update` needs the current "
                "params: call `update(state, metric, params)`."
            )
        epoch = state.step
        value = jnp.asarray(metric, jnp.float32)
        if value.shape != ():
            raise ValueError(
                f"`metric` must be a scalar; got an array of shape {value.shape}."
            )
        monitored = epoch >= start_from
        improved = monitored & improves(value, state.best)
        resets = improved
        if baseline is not None:
            resets = improved & improves(value, jnp.float32(baseline))
        wait = jnp.where(monitored, state.wait + 1, state.wait)
        wait = jnp.where(resets, 0, wait)
        take = improved | (epoch == start_from)
        best_params = state.best_params
        if keep_best:
            best_params = jax.tree_util.tree_map(
                lambda new, old: jnp.where(take, new, old), params, state.best_params
            )
        new_state = EarlyStoppingState(
            step=epoch + 1,
            best=jnp.where(improved, value, state.best),
            best_step=jnp.where(take, epoch, state.best_step),
            wait=wait,
            best_params=best_params,
        )
        stop = monitored & ~improved & (wait >= patience) & (epoch > 0)
        return new_state, stop

    return EarlyStopping(init=init_fn, update=update_fn)
