"""``jaxreg.zoneout``: the choice between the states, expectation, gradients, dtypes.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial
from _stochastic import data, key_at, ones_of
from jax.test_util import check_grads

from jaxreg import (
    keep_mask,
    keep_probability,
    zoneout,
)


def test_rate_one_zoneout_gradient_flows_to_h_prev():
    h_prev, h_new = data((4, 5), 9), data((4, 5), 10)
    g_prev, g_new = jax.grad(lambda a, b: zoneout(key_at(9), a, b, 1.0).sum(), (0, 1))(
        h_prev, h_new
    )
    np.testing.assert_array_equal(g_prev, jnp.ones_like(h_prev))
    np.testing.assert_array_equal(g_new, jnp.zeros_like(h_new))


def test_check_grads_zoneout_both_states():
    h_prev, h_new = data((3, 4), 11), data((3, 4), 12)
    check_grads(
        lambda a, b: zoneout(key_at(11), a, b, 0.4),
        (h_prev, h_new),
        order=1,
        modes=("fwd", "rev"),
        eps=0.05,
    )


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_zoneout_train_picks_h_prev_with_probability_rate(rate):
    n = 10**6
    h_prev, h_new = ones_of(n) * 0, ones_of(n)
    h = zoneout(key_at(40, int(rate * 10)), h_prev, h_new, rate)
    h = np.asarray(h)
    assert set(np.unique(h)) <= {0.0, 1.0}
    assert_binomial(int((h == 0).sum()), n, rate)


def test_zoneout_values_and_inference():
    rate = 0.3
    h_prev, h_new = data((40, 30), 41), data((40, 30), 42)
    h = zoneout(key_at(41), h_prev, h_new, rate)
    mask = keep_mask(key_at(41), h_new.shape, rate)
    np.testing.assert_array_equal(h, np.where(mask, h_new, h_prev))
    p = keep_probability(rate)
    np.testing.assert_allclose(
        zoneout(None, h_prev, h_new, rate, deterministic=True),
        p * h_new + (1 - p) * h_prev,
        rtol=1e-6,
    )
    np.testing.assert_array_equal(zoneout(key_at(41), h_prev, h_new, 0.0), h_new)
    np.testing.assert_array_equal(zoneout(key_at(41), h_prev, h_new, 1.0), h_prev)


def test_zoneout_expectation_equals_inference():
    rate, num_keys = 0.4, 4096
    h_prev, h_new = data((128,), 43), data((128,), 44)
    keys = jax.random.split(key_at(43), num_keys)
    mean = jax.vmap(lambda k: zoneout(k, h_prev, h_new, rate))(keys).mean(0)
    expected = zoneout(None, h_prev, h_new, rate, deterministic=True)
    # per element: sd = |h_new - h_prev| sqrt(rate (1 - rate) / K); Bonferroni 5.5
    sd = np.abs(np.asarray(h_new - h_prev)) * math.sqrt(rate * (1 - rate) / num_keys)
    z = np.asarray(mean - expected) / sd
    assert np.abs(z).max() < 5.5
    assert abs(z.sum()) / math.sqrt(z.size) < 4


def test_zoneout_dtype_follows_h_new():
    h = zoneout(key_at(44), jnp.zeros(5), jnp.ones(5, jnp.bfloat16), 0.5)
    assert h.dtype == jnp.bfloat16
    h = zoneout(None, jnp.zeros(5), jnp.ones(5, jnp.float16), 0.5, deterministic=True)
    assert h.dtype == jnp.float16


def test_zoneout_checks_h_new_dtype():
    with pytest.raises(TypeError, match=r"`h_new` must have a floating dtype.*int32"):
        zoneout(key_at(51), jnp.zeros(3), jnp.zeros(3, jnp.int32), 0.5)


def test_zoneout_shape_mismatch():
    with pytest.raises(
        ValueError, match=r"`h_prev` and `h_new` .*h_prev.shape=\(3,\).*\(4,\)"
    ):
        zoneout(key_at(61), jnp.zeros(3), jnp.zeros(4), 0.5)
