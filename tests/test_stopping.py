"""Tests for jaxreg.stopping: early stopping vs. Keras' EarlyStopping rule."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg


class KerasEarlyStoppingReference:
    """Pure-Python re-implementation of keras.callbacks.EarlyStopping (Keras 3).

    Follows keras/src/callbacks/early_stopping.py: ``min_delta`` is stored as its
    absolute value and negated in mode "min"; an improvement is
    ``op(current - min_delta, reference)`` with ``op`` = less (min) or greater
    (max); ``best`` starts at +inf / -inf; ``on_epoch_end`` returns early during
    the ``start_from_epoch`` warm-up; with ``restore_best_weights`` the first
    monitored epoch stores the weights; ``wait`` is incremented before the
    improvement test and reset only if the value also improves on the baseline;
    training stops when ``wait >= patience and epoch > 0`` on a non-improving
    epoch. Keras' ops compare float32 tensors, so the arithmetic is float32 here.
    """

    def __init__(self, patience, min_delta, mode, baseline, start_from_epoch):
        self.patience = patience
        self.baseline = baseline
        self.min_delta = abs(min_delta)
        self.start_from_epoch = start_from_epoch
        self.less = mode == "min"
        if self.less:
            self.min_delta *= -1
        self.best = math.inf if self.less else -math.inf
        self.wait = 0
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        lhs = np.float32(value) - np.float32(self.min_delta)
        rhs = np.float32(reference)
        return bool(lhs < rhs) if self.less else bool(lhs > rhs)

    def on_epoch_end(self, epoch, current, weights):
        """Returns True when Keras would set ``model.stop_training``."""
        if epoch < self.start_from_epoch:
            return False
        if self.best_weights is None:
            self.best_weights = weights
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            self.best_weights = weights
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return False
        return self.wait >= self.patience and epoch > 0


@functools.cache
def _compiled_run(patience, min_delta, mode, baseline, start_from):
    """One jit-compiled scan over a whole metric sequence, per configuration."""
    es = jaxreg.early_stopping(
        patience,
        min_delta=min_delta,
        mode=mode,
        baseline=baseline,
        start_from=start_from,
        keep_best=True,
    )

    def step(state, metric_and_epoch):
        metric, epoch = metric_and_epoch
        params = {"epoch": epoch.astype(jnp.float32)}
        state, stop = es.update(state, metric, params)
        return state, (stop, state.best, state.best_step, state.wait, state.best_params)

    def run(metrics):
        init = es.init({"epoch": jnp.float32(-1.0)})
        epochs = jnp.arange(metrics.shape[0])
        return jax.lax.scan(step, init, (metrics, epochs))[1]

    return jax.jit(run)


def _compare_with_keras(metrics, patience, min_delta, mode, baseline, start_from):
    metrics = np.asarray(metrics, np.float32)
    stops, bests, best_steps, waits, best_params = _compiled_run(
        patience, min_delta, mode, baseline, start_from
    )(jnp.asarray(metrics))
    ref = KerasEarlyStoppingReference(patience, min_delta, mode, baseline, start_from)
    for epoch, m in enumerate(metrics):
        stop = ref.on_epoch_end(epoch, float(m), float(epoch))
        assert bool(stops[epoch]) == stop, (epoch, metrics.tolist())
        assert int(waits[epoch]) == ref.wait, (epoch, metrics.tolist())
        np.testing.assert_array_equal(bests[epoch], np.float32(ref.best))
        if ref.best_weights is not None:
            assert int(best_steps[epoch]) == ref.best_epoch
            assert float(best_params["epoch"][epoch]) == ref.best_weights
    return np.asarray(stops)


GRID = st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0])
VALUES = st.one_of(
    GRID,  # exact ties and exact min_delta steps
    st.floats(-3, 3, width=32),
    st.just(float("nan")),
    st.just(float("inf")),
)


@settings(max_examples=120, deadline=None)
@given(
    metrics=st.lists(VALUES, min_size=12, max_size=12),
    patience=st.integers(0, 4),
    min_delta=st.sampled_from([0.0, 0.125, 0.25, 0.3]),
    mode=st.sampled_from(["min", "max"]),
    baseline=st.sampled_from([None, 0.5, 1.0, -0.7]),
    start_from=st.integers(0, 3),
)
def test_matches_keras_early_stopping_on_random_sequences(
    metrics, patience, min_delta, mode, baseline, start_from
):
    _compare_with_keras(metrics, patience, min_delta, mode, baseline, start_from)


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
    assert _first_stop([float("nan"), 1.0], patience=0)[0] is None


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
        TypeError, match=r"`patience` must be a Python int >= 0; got float 1.5"
    ):
        jaxreg.early_stopping(1.5)
    with pytest.raises(TypeError, match="`patience` must be a Python int"):
        jaxreg.early_stopping(True)
    with pytest.raises(
        ValueError, match=r"`min_delta` must be >= 0; got min_delta=-0.1"
    ):
        jaxreg.early_stopping(1, min_delta=-0.1)
    with pytest.raises(
        ValueError, match=r'`mode` must be "min".*"max".*got mode=\'auto\''
    ):
        jaxreg.early_stopping(1, mode="auto")
    with pytest.raises(
        TypeError, match="`baseline` must be a Python float or None; got str"
    ):
        jaxreg.early_stopping(1, baseline="0.5")
    with pytest.raises(ValueError, match="`baseline` must not be NaN"):
        jaxreg.early_stopping(1, baseline=float("nan"))
    with pytest.raises(
        ValueError, match=r"`start_from` must be >= 0; got start_from=-2"
    ):
        jaxreg.early_stopping(1, start_from=-2)
    with pytest.raises(TypeError, match="`keep_best` must be a Python bool; got int 1"):
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
