"""``jaxreg.dropout`` and ``jaxreg.keep_mask``: values, expectation, classic vs
inverted, broadcast dims, the keep rate in low precision, bad arguments.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial
from _stochastic import DTYPES, X2, data, key_at, ones_of

import jaxreg
from jaxreg import (
    dropout,
    keep_mask,
    keep_probability,
)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_values_are_zero_or_x_over_p(rate):
    key, x = key_at(1), data((300, 200), 2)
    y = dropout(key, x, rate)
    p = keep_probability(rate)
    kept = np.asarray(y) != 0
    # the mask is the sampler's mask for the same key, shape and rate
    np.testing.assert_array_equal(kept, keep_mask(key, x.shape, rate))
    expected = np.asarray(x, np.float32) * np.float32(1 / p)
    np.testing.assert_array_equal(np.asarray(y)[kept], expected[kept])
    assert_binomial(int(kept.sum()), kept.size, 1 - rate)


@pytest.mark.parametrize("rate", [0.001, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_scale_times_keep_probability_is_one(rate):
    # The exact identity behind E[dropout(x)] == x: every kept unit is multiplied by
    # 1 / keep_probability(rate), rounded once to float32.
    y = dropout(key_at(2), ones_of(4000), rate)
    scale = np.unique(np.asarray(y)[np.asarray(y) != 0])
    assert scale.size == 1
    assert abs(float(scale[0]) * keep_probability(rate) - 1.0) <= 2.0**-23


def _mean_over_keys(fn, x, num_keys, seed):
    keys = jax.random.split(key_at(3, seed), num_keys)
    return jax.vmap(lambda k: fn(k, x))(keys).mean(0)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("inverted", [True, False], ids=["inverted", "classic"])
def test_dropout_expectation(rate, inverted):
    # Average of K = 4096 draws for each of d = 256 elements. Per element,
    # z = (mean - E) / (|x| sqrt((1-p) / (p K))) (times p for classic) is
    # approximately N(0, 1): we require |sum z| / sqrt(d) < 4 and, Bonferroni over
    # d elements, max |z| < 5.5 (each fails with probability < 1e-4).
    num_keys, x = 4096, data((256,), 3)
    p = keep_probability(rate)
    mean = _mean_over_keys(
        lambda k, v: dropout(k, v, rate, inverted=inverted), x, num_keys, int(rate * 10)
    )
    expected = x if inverted else x * p
    sd = np.abs(x) * math.sqrt((1 - p) / (p * num_keys)) * (1 if inverted else p)
    z = (np.asarray(mean, np.float64) - np.asarray(expected)) / sd
    assert abs(z.sum()) / math.sqrt(z.size) < 4
    assert np.abs(z).max() < 5.5
    # the inference path returns exactly this expectation
    np.testing.assert_allclose(
        dropout(None, x, rate, deterministic=True, inverted=inverted),
        expected,
        rtol=1e-7,
    )


@pytest.mark.parametrize("rate", [0.2, 0.75])
def test_classic_and_inverted_share_the_mask_and_differ_by_p(rate):
    key, x = key_at(4), data((100, 100), 4)
    p = keep_probability(rate)
    inv = dropout(key, x, rate)
    cls = dropout(key, x, rate, inverted=False)
    np.testing.assert_array_equal(inv != 0, cls != 0)
    np.testing.assert_array_equal(cls, np.where(np.asarray(cls) != 0, x, 0))  # x*mask
    np.testing.assert_allclose(inv * p, cls, rtol=1e-6)


def test_inference_paths():
    x, rate = data((5, 8), 5), 0.3
    np.testing.assert_array_equal(dropout(None, x, rate, deterministic=True), x)
    classic = dropout(None, x, rate, deterministic=True, inverted=False)
    np.testing.assert_allclose(classic, x * 0.7, rtol=1e-6)
    # deterministic ignores the key, if given
    np.testing.assert_array_equal(dropout(key_at(5), x, rate, deterministic=True), x)


def test_dropout_broadcast_dims():
    x = data((4, 50, 6), 6)
    y = dropout(key_at(6), x, 0.5, broadcast_dims=(0, 2))
    kept = np.asarray(y) != 0
    assert (kept == kept[:1, :, :1]).all()
    assert 0 < kept[0, :, 0].sum() < 50
    y = dropout(key_at(6), x, 0.5, broadcast_dims=-1)  # a single int is accepted
    kept = np.asarray(y) != 0
    assert (kept == kept[..., :1]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("rate", [0.01, 0.3, 0.9])
def test_low_precision_keep_rate(dtype, rate):
    # The keep decision happens in integer bit space, so the rate is right whatever
    # the data dtype: 10^6 draws, 4-sigma binomial bound.
    n = 10**6
    y = dropout(key_at(22, int(rate * 100)), ones_of((1000, 1000), dtype), rate)
    assert y.dtype == dtype
    y = np.asarray(y)
    kept = y != 0
    assert_binomial(int(kept.sum()), n, 1 - rate)
    # kept units hold 1/p rounded once from float32 to the data dtype
    scale = np.float32(1 / keep_probability(rate)).astype(jnp.dtype(dtype))
    assert (y[kept] == scale).all()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_rate_keep_mask(bad):
    with pytest.raises(ValueError, match=rf"`rate`.*got rate={re.escape(repr(bad))}"):
        keep_mask(key_at(46), (3,), bad)


@pytest.mark.parametrize("bad", [None, [1.0, 2.0], "x"])
def test_non_array_input(bad):
    with pytest.raises(TypeError, match=r"`x` must be an array of floating dtype"):
        dropout(key_at(52), bad, 0.5)


@pytest.mark.parametrize(
    "dims, shown",
    [((2,), r"\(2,\) has axis 2"), ((0, -3), r"\(0, -3\) has axis -3"), (5, "axis 5")],
)
def test_broadcast_dims_out_of_range(dims, shown):
    with pytest.raises(ValueError, match=rf"`broadcast_dims`=.*{shown}.*rank 2"):
        dropout(key_at(53), X2, 0.5, broadcast_dims=dims)
    with pytest.raises(ValueError, match=rf"`broadcast_dims`=.*{shown}.*rank 2"):
        keep_mask(key_at(53), (6, 10), 0.5, broadcast_dims=dims)


@pytest.mark.parametrize("dims", [(0.5,), ("a",), (True,), 1.0])
def test_broadcast_dims_of_the_wrong_type(dims):
    with pytest.raises(TypeError, match=r"`broadcast_dims` must"):
        dropout(key_at(54), X2, 0.5, broadcast_dims=dims)


@pytest.mark.parametrize("inverted", ["no", 1, None])
def test_dropout_inverted_must_be_bool(inverted):
    with pytest.raises(TypeError, match=r"`inverted` must be a Python bool"):
        jaxreg.dropout(jax.random.key(0), jnp.ones(3), 0.5, inverted=inverted)
