"""``jaxreg.spatial_dropout``: whole channels dropped, keep rate, bad axes and ranks.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial
from _stochastic import X4, data, key_at, ones_of

from jaxreg import (
    keep_probability,
    spatial_dropout,
)


@pytest.mark.parametrize(
    "shape, channel_axis",
    [
        ((16, 9, 32), -1),  # 1-D maps, NLC
        ((16, 32, 9), 1),  # 1-D maps, NCL
        ((8, 5, 6, 32), -1),  # 2-D maps, NHWC
        ((8, 32, 5, 6), 1),  # 2-D maps, NCHW
        ((4, 3, 4, 5, 32), 4),  # 3-D maps, NDHWC
        ((4, 32, 3, 4, 5), -4),  # 3-D maps, NCDHW
    ],
)
def test_spatial_dropout_is_constant_over_space(shape, channel_axis):
    x = data(shape, 23)
    rate = 0.4
    y = spatial_dropout(key_at(23), x, rate, channel_axis=channel_axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    ch = channel_axis % len(shape)
    kept = np.moveaxis((np.asarray(y) != 0), ch, -1)
    kept = kept.reshape(shape[0], -1, shape[ch])  # (N, positions, C)
    assert (kept == kept[:, :1, :]).all(), "mask varies over spatial positions"
    per_unit = kept[:, 0, :]  # one decision per (example, channel)
    assert 0 < per_unit.sum() < per_unit.size
    assert not (per_unit == per_unit[:1]).all(), "examples share a mask"
    p = keep_probability(rate)
    yk, xk = np.asarray(y)[np.asarray(y) != 0], np.asarray(x)[np.asarray(y) != 0]
    np.testing.assert_allclose(yk, xk / p, rtol=1e-6)


def test_spatial_dropout_keep_rate():
    # One decision per (example, channel): 2000 x 500 = 10^6 decisions.
    rate = 0.25
    y = spatial_dropout(key_at(24), ones_of((2000, 2, 500)), rate)
    kept = np.asarray(y)[:, 0, :] != 0
    assert_binomial(int(kept.sum()), kept.size, 1 - rate)


def test_spatial_dropout_inference():
    x = data((2, 3, 4, 5), 25)
    np.testing.assert_array_equal(spatial_dropout(None, x, 0.5, deterministic=True), x)


@pytest.mark.parametrize(
    "axis, error, shown",
    [
        (4, ValueError, r"`channel_axis`=4 is out of range.*rank 4"),
        (-5, ValueError, r"`channel_axis`=-5 is out of range.*rank 4"),
        (0, ValueError, r"`channel_axis`=0 is the batch axis"),
        (-4, ValueError, r"`channel_axis`=-4 is the batch axis \(axis 0"),
        (1.0, TypeError, r"`channel_axis` must be an int; got float 1\.0"),
        (None, TypeError, r"`channel_axis` must be an int; got NoneType None"),
    ],
)
def test_bad_channel_axis(axis, error, shown):
    with pytest.raises(error, match=shown):
        spatial_dropout(key_at(55), X4, 0.5, channel_axis=axis)


@pytest.mark.parametrize("shape", [(5,), (4, 5), (1, 2, 3, 4, 5, 6)])
def test_spatial_dropout_bad_rank(shape):
    with pytest.raises(ValueError, match=rf"`x` must be .*rank 3, 4 or 5.*{shape}"):
        spatial_dropout(key_at(56), jnp.ones(shape), 0.5)
