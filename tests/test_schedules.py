"""Depth and time schedules (``jaxreg.schedules``).

Values are checked against the formulas of the papers and of timm (float32
arithmetic on both sides, compared to float32 rounding: ``rtol=1e-6``); the
schedules are checked as traced rates inside one compiled step (one compilation
for all steps, and the realised drop rate within a 4-sigma binomial bound).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import assert_binomial

import jaxreg
from jaxreg.schedules import (
    curriculum_dropout,
    drop_path_rates,
    early_dropout,
    late_dropout,
    linear_ramp,
)

RTOL = 1e-6  # float32 products of exactly representable fractions


# ------------------------------------------------------------------ drop_path_rates
def test_linspace_rule_is_timms_linspace():
    for depth in (1, 2, 12, 24):
        rates = drop_path_rates(depth, 0.1)
        assert rates.shape == (depth,) and rates.dtype == jnp.float32
        # timm: [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        np.testing.assert_allclose(rates, np.linspace(0, 0.1, depth), rtol=RTOL)
        assert float(rates[0]) == 0.0
        assert math.isclose(float(rates[-1]), 0.1 if depth > 1 else 0.0, rel_tol=RTOL)


def test_huang_rule_is_the_linear_decay_rule():
    L, p_L = 54, 0.5  # survival probability of the last block, as in the paper
    rates = drop_path_rates(L, 1 - p_L, rule="huang")
    survival = 1 - np.arange(1, L + 1) / L * (1 - p_L)  # p_l = 1 - l/L (1 - p_L)
    np.testing.assert_allclose(1 - np.asarray(rates), survival, rtol=RTOL)


def test_stages_split_the_global_profile():
    depths = (3, 3, 9, 3)  # ConvNeXt-T
    stages = drop_path_rates(depths, 0.4)
    assert [s.shape for s in stages] == [(d,) for d in depths]
    np.testing.assert_array_equal(
        np.concatenate(stages), drop_path_rates(sum(depths), 0.4)
    )


@pytest.mark.parametrize("rule", ["linspace", "huang"])
def test_stagewise_is_constant_per_stage_and_linear_across(rule):
    depths = (2, 2, 6, 2)
    stages = drop_path_rates(depths, 0.3, stagewise=True, rule=rule)
    per_stage = np.asarray(drop_path_rates(len(depths), 0.3, rule=rule))
    for s, (rates, d) in enumerate(zip(stages, depths, strict=True)):
        np.testing.assert_array_equal(rates, np.full(d, per_stage[s], np.float32))


def test_traced_max_rate_follows_a_schedule():
    ramp = linear_ramp(0.2, 100)

    @jax.jit
    def rates_at(step):
        return drop_path_rates(4, ramp(step))

    np.testing.assert_allclose(rates_at(50), drop_path_rates(4, 0.1), rtol=RTOL)
    np.testing.assert_array_equal(rates_at(0), np.zeros(4))
    assert rates_at._cache_size() == 1


@pytest.mark.parametrize(
    "args, kwargs, err, match",
    [
        ((0, 0.1), {}, ValueError, r"`depth` must be >= 1; got depth=0"),
        ((2.0, 0.1), {}, TypeError, r"`depth` must be the number of blocks"),
        (("12", 0.1), {}, TypeError, r"got str '12'"),
        (((), 0.1), {}, ValueError, r"at least one stage"),
        (((2, 0), 0.1), {}, ValueError, r"at least one block; got depth=\(2, 0\)"),
        (((2, 1.5), 0.1), {}, TypeError, r"must contain ints; got 1\.5"),
        ((4, 1.5), {}, ValueError, r"max_rate=1\.5"),
        ((4, float("nan")), {}, ValueError, r"max_rate=nan"),
        ((4, -0.1), {}, ValueError, r"max_rate=-0\.1"),
        ((4, 0.1), {"stagewise": True}, ValueError, r"stagewise=True` needs"),
        (
            ((2, 2), 0.1),
            {"stagewise": 1},
            TypeError,
            r"`stagewise` must be a Python bool",
        ),
        ((4, 0.1), {"rule": "timm"}, ValueError, r"rule='timm'"),
    ],
)
def test_drop_path_rates_bad_inputs(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        drop_path_rates(*args, **kwargs)


# ------------------------------------------------------------------ time schedules
def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_linear_ramp_values():
    ramp = linear_ramp(0.4, 100, begin=10)
    np.testing.assert_allclose(
        _values(ramp, [0, 10, 35, 60, 110, 10**6]),
        [0.0, 0.0, 0.1, 0.2, 0.4, 0.4],
        rtol=RTOL,
    )
    down = linear_ramp(0.0, 10, initial_rate=0.5)
    np.testing.assert_allclose(
        _values(down, [0, 5, 10, 20]), [0.5, 0.25, 0, 0], rtol=RTOL
    )
    jump = linear_ramp(0.3, 0, begin=7)
    np.testing.assert_allclose(_values(jump, [0, 6, 7, 8]), [0, 0, 0.3, 0.3], rtol=RTOL)


def test_ramps_never_leave_their_interval_under_jit():
    # optax.linear_schedule alone returns -7e-9 at the end of a ramp down to 0
    # under jit; a rate schedule must stay within its two rates.
    cases = [
        (early_dropout(0.5, 20, mode="linear"), 0.0, 0.5, 20),
        (linear_ramp(0.0, 13, initial_rate=0.7), 0.0, 0.7, 13),
        (linear_ramp(0.3, 7, initial_rate=0.1), 0.1, 0.3, 7),
    ]
    for schedule, low, high, end in cases:
        traced = jax.jit(schedule)
        values = np.array([float(traced(s)) for s in range(end + 3)])
        assert values.min() >= np.float32(low) and values.max() <= np.float32(high)
        assert values[end] == np.float32(schedule(end))


def test_early_dropout_constant_and_linear():
    early = early_dropout(0.1, 1000)
    np.testing.assert_allclose(
        _values(early, [0, 500, 999, 1000, 5000]), [0.1, 0.1, 0.1, 0, 0], rtol=RTOL
    )
    linear = early_dropout(0.2, 100, mode="linear")
    np.testing.assert_allclose(
        _values(linear, [0, 25, 50, 100, 200]), [0.2, 0.15, 0.1, 0, 0], rtol=RTOL
    )


def test_late_dropout():
    late = late_dropout(0.3, 50)
    np.testing.assert_allclose(
        _values(late, [0, 49, 50, 10**5]), [0, 0, 0.3, 0.3], rtol=RTOL
    )


def test_curriculum_dropout_is_morerios_schedule():
    gamma, final = 0.002, 0.5
    sched = curriculum_dropout(final, gamma)
    steps = np.array([0, 1, 10, 500, 1000, 5000, 100_000])
    theta_bar = 1 - final  # the paper's final retain probability
    theta = (1 - theta_bar) * np.exp(-gamma * steps) + theta_bar  # Morerio et al.
    np.testing.assert_allclose(_values(sched, steps), 1 - theta, rtol=1e-6, atol=1e-9)
    assert float(sched(0)) == 0.0
    assert np.all(np.diff(_values(sched, range(0, 3000, 100))) > 0)  # increasing


SCHEDULES = {
    "linear_ramp": linear_ramp(0.5, 20),
    "early": early_dropout(0.5, 10),
    "early_linear": early_dropout(0.5, 20, mode="linear"),
    "late": late_dropout(0.5, 10),
    "curriculum": curriculum_dropout(0.5, 0.1),
    "optax_join": optax.join_schedules(  # optax schedules compose with ours
        [early_dropout(0.5, 5), late_dropout(0.3, 0)], [10]
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_are_traced_rates_inside_one_compiled_step(name):
    schedule = SCHEDULES[name]
    n = 20_000
    x = jnp.ones((n,))

    @jax.jit
    def step(key, step):
        rate = schedule(step)
        y = jaxreg.dropout(key, x, rate)
        return rate, jnp.sum(y == 0)

    for s in (0, 5, 10, 15, 30):
        rate, dropped = step(jax.random.fold_in(jax.random.key(3), s), s)
        assert float(rate) == pytest.approx(float(schedule(s)), rel=RTOL, abs=1e-9)
        p = float(rate)
        if p in (0.0, 1.0):
            assert int(dropped) == round(p * n)
        else:
            assert_binomial(int(dropped), n, p)
    assert step._cache_size() == 1  # one compilation for every step
    # vmap over steps gives the eager values.
    steps = jnp.arange(0, 40, 3)
    np.testing.assert_allclose(
        jax.vmap(schedule)(steps),
        _values(schedule, steps.tolist()),
        rtol=RTOL,
        atol=1e-9,
    )


@pytest.mark.parametrize(
    "build, err, match",
    [
        (lambda: linear_ramp(1.2, 10), ValueError, r"rate=1\.2"),
        (
            lambda: linear_ramp(0.2, -1),
            ValueError,
            r"`steps` must be >= 0; got steps=-1",
        ),
        (lambda: linear_ramp(0.2, 10.0), TypeError, r"`steps` must be a Python int"),
        (lambda: linear_ramp(0.2, 10, begin=-5), ValueError, r"begin=-5"),
        (
            lambda: linear_ramp(0.2, 10, initial_rate=float("nan")),
            ValueError,
            r"initial_rate=nan",
        ),
        (lambda: early_dropout(-0.1, 10), ValueError, r"rate=-0\.1"),
        (lambda: early_dropout(0.1, 10, mode="cosine"), ValueError, r"mode='cosine'"),
        (
            lambda: early_dropout(0.1, "10"),
            TypeError,
            r"`steps` must be a Python int; got str",
        ),
        (
            lambda: late_dropout(0.1, -2),
            ValueError,
            r"`start` must be >= 0; got start=-2",
        ),
        (
            lambda: curriculum_dropout(0.5, 0.0),
            ValueError,
            r"`gamma` must be > 0; got gamma=0\.0",
        ),
        (lambda: curriculum_dropout(0.5, -1.0), ValueError, r"gamma=-1\.0"),
        (lambda: curriculum_dropout(2.0, 0.1), ValueError, r"rate=2\.0"),
        (
            lambda: curriculum_dropout("0.5", 0.1),
            TypeError,
            r"`rate` must be a real scalar",
        ),
    ],
)
def test_schedule_bad_inputs(build, err, match):
    with pytest.raises(err, match=match):
        build()
