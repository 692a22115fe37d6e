"""``jaxreg.gaussian_dropout`` and ``jaxreg.gaussian_noise``: moments, edge rates,
bad arguments.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stochastic import X2, assert_mean, data, key_at, ones_of

import jaxreg
from jaxreg import (
    gaussian_dropout,
    gaussian_noise,
)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_gaussian_dropout_noise_has_mean_one_and_variance_rate_over_keep(rate):
    # y = x * noise with noise ~ N(1, rate / (1 - rate)). With n = 10^6 draws the
    # sample mean has standard error sqrt(v / n) and the sample variance (of a
    # normal) sqrt(2 / (n - 1)) * v.
    n = 10**6
    v = rate / (1 - rate)
    noise = np.asarray(gaussian_dropout(key_at(26, int(rate * 10)), ones_of(n), rate))
    noise = noise.astype(np.float64)
    assert_mean(noise.mean(), 1.0, math.sqrt(v / n), "noise mean")
    assert_mean(noise.var(ddof=1), v, math.sqrt(2 / (n - 1)) * v, "noise variance")


def test_gaussian_dropout_multiplies_the_input():
    x = data((50, 40), 27)
    y = gaussian_dropout(key_at(27), x, 0.3)
    ones = gaussian_dropout(key_at(27), ones_of(x.shape), 0.3)
    np.testing.assert_allclose(y, x * ones, rtol=1e-6)
    np.testing.assert_array_equal(gaussian_dropout(None, x, 0.3, deterministic=True), x)


@pytest.mark.parametrize("stddev", [0.1, 2.0])
def test_gaussian_noise_moments(stddev):
    n = 10**6
    x = jnp.asarray(np.full(n, 3.0, np.float32))
    noise = np.asarray(gaussian_noise(key_at(28), x, stddev) - x, np.float64)
    assert_mean(noise.mean(), 0.0, stddev / math.sqrt(n), "noise mean")
    assert_mean(
        noise.var(ddof=1), stddev**2, math.sqrt(2 / (n - 1)) * stddev**2, "variance"
    )
    np.testing.assert_array_equal(
        gaussian_noise(None, x, stddev, deterministic=True), x
    )


def test_gaussian_dropout_rate_one_is_an_error():
    with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\); got rate=1\.0"):
        gaussian_dropout(key_at(48), X2, 1.0)


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_gaussian_noise_bad_stddev(bad):
    with pytest.raises(ValueError, match=rf"`stddev` must be >= 0; got stddev={bad}"):
        gaussian_noise(key_at(49), X2, bad)


def test_gaussian_dropout_traced_rate_one_is_zero_and_nan_free():
    x = jnp.linspace(-1.0, 1.0, 16)

    def f(x, rate):
        return jaxreg.gaussian_dropout(jax.random.key(0), x, rate).sum()

    value, grad = jax.jit(jax.value_and_grad(f))(x, jnp.float32(1.0))
    assert value == 0.0
    assert bool(jnp.all(grad == 0.0))
