"""Tests for jaxreg.stopping: early stopping, stop for stop with Keras' EarlyStopping.

The reference is the installed Keras itself (``keras.callbacks.EarlyStopping``,
Keras 3, JAX backend), driven epoch by epoch with the same metric sequences; not
a transcription of its rule.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxreg

os.environ.setdefault("KERAS_BACKEND", "jax")  # must precede the import of keras


@functools.cache
def _keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras was imported with backend {keras.backend.backend()!r}")
    return keras


class _Model:
    """The part of a keras.Model that EarlyStopping touches."""

    stop_training = False
    epoch = None

    def get_weights(self):
        return self.epoch  # a marker of the epoch the weights are from


def _keras_run(metrics, patience, min_delta, mode, baseline, start_from):
    """Per epoch: (stop, wait, best, best_epoch, epoch of the best weights).

    ``best`` is NaN while Keras has none (None), as is the weights' epoch.
    """
    callback = _keras().callbacks.EarlyStopping(
        monitor="metric",
        min_delta=min_delta,
        patience=patience,
        mode=mode,
        baseline=baseline,
        start_from_epoch=start_from,
        restore_best_weights=True,
    )
    model = _Model()
    callback.set_model(model)
    callback.on_train_begin()
    rows = []
    for epoch, m in enumerate(metrics):
        model.epoch = epoch
        model.stop_training = False  # record each epoch's own decision
        callback.on_epoch_end(epoch, {"metric": float(m)})
        best = np.nan if callback.best is None else callback.best
        weights = np.nan if callback.best_weights is None else callback.best_weights
        rows.append(
            (model.stop_training, callback.wait, best, callback.best_epoch, weights)
        )
    return [np.asarray(col) for col in zip(*rows, strict=True)]


def _jaxreg_run(metrics, patience, min_delta, mode, baseline, start_from):
    """The same columns for a batch of sequences ``(runs, epochs)``, vmapped."""
    es = jaxreg.early_stopping(
        patience,
        min_delta=min_delta,
        mode=mode,
        baseline=baseline,
        start_from=start_from,
        keep_best=True,
    )
    runs, epochs = metrics.shape
    state = jax.vmap(es.init)({"epoch": jnp.full((runs,), -1.0)})
    update = jax.vmap(es.update)
    cols = []
    for epoch in range(epochs):
        marker = {"epoch": jnp.full((runs,), float(epoch))}
        state, stop = update(state, jnp.asarray(metrics[:, epoch]), marker)
        cols.append(
            (stop, state.wait, state.best, state.best_step, state.best_params["epoch"])
        )
    return [np.stack([np.asarray(c[i]) for c in cols], axis=1) for i in range(5)]


def _assert_same_as_keras(metrics, **config):
    metrics = np.asarray(metrics, np.float32).reshape(-1, np.shape(metrics)[-1])
    ours = _jaxreg_run(metrics, **config)
    for run, sequence in enumerate(metrics):
        theirs = _keras_run(sequence, **config)
        stop, wait, best, best_step, weights = (col[run] for col in ours)
        where = f"metrics={sequence.tolist()}, config={config}"
        np.testing.assert_array_equal(stop, theirs[0], err_msg=where)
        np.testing.assert_array_equal(wait, theirs[1], err_msg=where)
        np.testing.assert_array_equal(best_step, theirs[3], err_msg=where)
        known = ~np.isnan(theirs[4].astype(float))  # Keras has a best epoch
        np.testing.assert_array_equal(weights[known], theirs[4][known], err_msg=where)
        np.testing.assert_array_equal(
            best[known], theirs[2][known].astype(np.float32), err_msg=where
        )


# Metric values: exact ties on a grid of float32 numbers (also exact multiples of
# min_delta), random float32 values, NaN and both infinities.
GRID = np.array([0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], np.float32)


def _sequences(seed, runs=24, epochs=10):
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=(runs, epochs), p=[0.4, 0.35, 0.1, 0.15])
    values = np.where(
        kind == 0,
        rng.choice(GRID, size=(runs, epochs)),
        rng.uniform(-3, 3, size=(runs, epochs)).astype(np.float32),
    )
    values = np.where(kind == 2, np.nan, values)
    signs = rng.choice([-1.0, 1.0], size=(runs, epochs))
    return np.where(kind == 3, signs * np.inf, values).astype(np.float32)


# min_delta and baseline are float32 numbers: for those the float32 comparison of
# jaxreg and Keras' float64 subtraction followed by a float32 comparison agree
# exactly (see the early_stopping docstring).
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    patience=st.integers(0, 4),
    min_delta=st.sampled_from([0.0, 0.125, 0.25, 0.5]),
    mode=st.sampled_from(["min", "max"]),
    baseline=st.sampled_from([None, 0.5, 1.0, -0.75]),
    start_from=st.integers(0, 3),
)
@example(seed=0, patience=0, min_delta=0.0, mode="min", baseline=None, start_from=0)
@example(seed=1, patience=2, min_delta=0.25, mode="max", baseline=0.5, start_from=2)
def test_matches_installed_keras_on_random_sequences(
    seed, patience, min_delta, mode, baseline, start_from
):
    _assert_same_as_keras(
        _sequences(seed),
        patience=patience,
        min_delta=min_delta,
        mode=mode,
        baseline=baseline,
        start_from=start_from,
    )


@pytest.mark.parametrize(
    "metrics, patience, mode, start_from, stop_epoch",
    [
        # Keras 3 starts with best=None: the first value improves even if NaN,
        # and nothing improves on a NaN best afterwards.
        ([np.nan, 1.0, 2.0, 3.0], 2, "min", 0, 2),
        ([np.nan, 1.0, 0.5, 0.2], 1, "max", 0, 1),
        # An infinite first value is the best too, and finite values beat it.
        ([np.inf, 1.0, 2.0, 3.0], 1, "min", 0, 2),
        ([-np.inf, 1.0, 1.0], 1, "max", 0, 2),
        # The first monitored epoch after a warm-up is the one that counts.
        ([5.0, np.nan, 1.0, 0.5], 1, "min", 1, 2),
    ],
)
def test_first_monitored_value_always_improves_like_keras(
    metrics, patience, mode, start_from, stop_epoch
):
    config = {
        "patience": patience,
        "min_delta": 0.0,
        "mode": mode,
        "baseline": None,
        "start_from": start_from,
    }
    _assert_same_as_keras([metrics], **config)
    assert _first_stop(metrics, **config)[0] == stop_epoch


# ---------------------------------------------------------------------------
# Hand-worked cases, one per option.
# ---------------------------------------------------------------------------


def _first_stop(metrics, **kwargs):
    es = jaxreg.early_stopping(**kwargs)
    state = es.init()
    update = jax.jit(es.update)
    for epoch, m in enumerate(metrics):
        state, stop = update(state, m)
        if stop:
            return epoch, state
    return None, state


def test_patience_counts_epochs_without_improvement():
    # Best at epoch 1; epochs 2 and 3 do not improve; patience 2 stops at epoch 3.
    epoch, state = _first_stop([1.0, 0.9, 0.95, 0.96, 0.5], patience=2)
    assert epoch == 3
    assert int(state.best_step) == 1 and float(state.best) == np.float32(0.9)
    assert _first_stop([1.0, 0.9, 0.95, 0.96, 0.5], patience=3)[0] is None
    # patience 0 stops at the first non-improving epoch (but never at epoch 0).
    assert _first_stop([1.0, 1.0], patience=0)[0] == 1
    # A NaN first value is the best (Keras' best=None), and 1.0 does not improve
    # on it: patience 0 stops at epoch 1.
    assert _first_stop([float("nan"), 1.0], patience=0)[0] == 1


def test_min_delta_small_gains_do_not_count():
    metrics = [1.0, 0.95, 0.9, 0.85]
    assert _first_stop(metrics, patience=1)[0] is None
    assert _first_stop(metrics, patience=1, min_delta=0.1)[0] == 1
    # Exactly min_delta better is not an improvement (strict inequality).
    assert _first_stop([1.0, 0.75], patience=1, min_delta=0.25)[0] == 1


def test_mode_max():
    acc = [0.5, 0.6, 0.7, 0.7, 0.65, 0.9]
    epoch, state = _first_stop(acc, patience=2, mode="max")
    assert epoch == 4
    assert float(state.best) == np.float32(0.7) and int(state.best_step) == 2
    # In mode "min" nothing after epoch 0 improves: patience 2 stops at epoch 2.
    assert _first_stop(acc, patience=2, mode="min")[0] == 2


def test_baseline():
    # Improving but never beating the baseline: wait is not reset, yet Keras does
    # not stop on an improving epoch; the first non-improving epoch stops.
    assert _first_stop([0.9, 0.8, 0.7], patience=2, baseline=0.5)[0] is None
    assert _first_stop([0.9, 0.8, 0.85], patience=2, baseline=0.5)[0] == 2
    # Without the baseline, the same sequence does not stop at epoch 2.
    assert _first_stop([0.9, 0.8, 0.85], patience=2)[0] is None
    # Beating the baseline resets the counter.
    assert _first_stop([0.9, 0.4, 0.45, 0.46], patience=2, baseline=0.5)[0] == 3


def test_start_from_ignores_warm_up_epochs():
    metrics = [5.0, 9.0, 9.0, 9.0, 1.0, 2.0, 2.0]
    epoch, state = _first_stop(metrics, patience=1, start_from=3)
    assert epoch == 5
    assert int(state.best_step) == 4
    assert _first_stop(metrics, patience=1)[0] == 1


# ---------------------------------------------------------------------------
# jit, while_loop, best params, pytree state.
# ---------------------------------------------------------------------------


def test_inside_lax_while_loop_and_best_params_restored():
    losses = jnp.array([3.0, 2.0, 1.5, 1.6, 1.0, 1.2, 1.3, 1.4, 0.1, 0.1])
    es = jaxreg.early_stopping(patience=3, keep_best=True)
    params0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}

    def train_step(params, i):
        return jax.tree.map(lambda p: p + i.astype(p.dtype), params)

    def cond(carry):
        _, _, stop, i = carry
        return ~stop & (i < losses.shape[0])

    def body(carry):
        state, params, _, i = carry
        params = train_step(params, i)
        state, stop = es.update(state, losses[i], params)
        return state, params, stop, i + 1

    @jax.jit
    def fit(params):
        carry = (es.init(params), params, jnp.array(False), jnp.array(0))
        return jax.lax.while_loop(cond, body, carry)

    state, params, stop, steps = fit(params0)
    assert bool(stop) and int(steps) == 8  # best at epoch 4, stops at epoch 7
    assert int(state.best_step) == 4 and float(state.best) == 1.0
    expected = jax.tree.map(lambda p: p + sum(range(5)), params0)  # after epoch 4
    jax.tree.map(np.testing.assert_array_equal, state.best_params, expected)
    assert not np.array_equal(params["w"], state.best_params["w"])


def test_jit_equals_eager_and_state_is_a_serializable_pytree():
    from flax import serialization

    es = jaxreg.early_stopping(patience=2, min_delta=0.01, keep_best=True)
    params = {"w": jnp.arange(3.0)}
    s_eager = s_jit = es.init(params)
    update = jax.jit(es.update)
    for i, m in enumerate([1.0, 0.5, 0.7, 0.4]):
        p = {"w": params["w"] * i}
        s_eager, stop_eager = es.update(s_eager, m, p)
        s_jit, stop_jit = update(s_jit, m, p)
        assert bool(stop_eager) == bool(stop_jit)
    jax.tree.map(np.testing.assert_array_equal, s_eager, s_jit)
    assert isinstance(s_jit, jaxreg.EarlyStoppingState)
    restored = serialization.from_bytes(es.init(params), serialization.to_bytes(s_jit))
    jax.tree.map(np.testing.assert_array_equal, restored, s_jit)
    # Without keep_best there are no params in the state.
    assert jaxreg.early_stopping(patience=1).init().best_params is None


def test_vmap_over_independent_runs():
    es = jaxreg.early_stopping(patience=1)
    metrics = jnp.array([[1.0, 2.0], [1.0, 0.5]])  # run 0 worsens, run 1 improves
    states = jax.vmap(lambda _: es.init())(jnp.arange(2))
    for t in range(2):
        states, stops = jax.vmap(es.update)(states, metrics[:, t])
    np.testing.assert_array_equal(stops, [True, False])


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_bad_input():
    with pytest.raises(ValueError, match=r"`patience` must be >= 0; got patience=-1"):
        jaxreg.early_stopping(-1)
    with pytest.raises(
        TypeError, match=r"`patience` must be a Python int; got float 1.5"
    ):
        jaxreg.early_stopping(1.5)
    with pytest.raises(
        TypeError, match="`patience` must be a Python int; got bool True"
    ):
        jaxreg.early_stopping(True)
    with pytest.raises(
        ValueError, match=r"`min_delta` must be >= 0; got min_delta=-0.1"
    ):
        jaxreg.early_stopping(1, min_delta=-0.1)
    with pytest.raises(
        ValueError, match=r"`mode` must be 'min' or 'max'; got mode='auto'"
    ):
        jaxreg.early_stopping(1, mode="auto")
    with pytest.raises(TypeError, match="`baseline` must be a real scalar.*got str"):
        jaxreg.early_stopping(1, baseline="0.5")
    with pytest.raises(ValueError, match="`baseline` must be finite; got baseline=nan"):
        jaxreg.early_stopping(1, baseline=float("nan"))
    with pytest.raises(
        ValueError, match=r"`start_from` must be >= 0; got start_from=-2"
    ):
        jaxreg.early_stopping(1, start_from=-2)
    with pytest.raises(TypeError, match="`keep_best` must be a Python bool.*got int 1"):
        jaxreg.early_stopping(1, keep_best=1)
    es = jaxreg.early_stopping(1, keep_best=True)
    with pytest.raises(
        ValueError, match=r"keep_best=True\).init` needs the initial params"
    ):
        es.init()
    state = es.init({"w": jnp.ones(2)})
    with pytest.raises(
        ValueError,
        match=r"needs the current params: call `update\(state, metric, params\)`",
    ):
        es.update(state, 1.0)
    with pytest.raises(
        ValueError, match=r"`metric` must be a scalar; got an array of shape \(2,\)"
    ):
        es.update(state, jnp.ones(2), {"w": jnp.ones(2)})
