"""Feature alpha dropout: ``alpha_dropout(..., broadcast_dims=...)`` (PyTorch's
FeatureAlphaDropout) keeps a standard-normal input at mean 0 and variance 1 and
shares each keep decision exactly along the broadcast axes.

Statistics use 4-sigma bounds. Elements of one channel map share a decision, so
they are not independent; the maps are. Each bound is therefore built from the
per-map averages (independent, identically distributed): their grand mean has
standard error ``std(per-map averages) / sqrt(number of maps)``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg

# SELU constants (Klambauer et al. 2017, eq. 14): alpha' = -scale * alpha.
ALPHA_PRIME = -1.0507009873554804934193349852946 * 1.6732632423543772848170429916717
FEATURE = (1, 2)  # the spatial axes of an NHWC batch: one decision per channel map


def _affine(rate):
    """The paper's (a, b) for keep probability q = 1 - rate (float64)."""
    q = 1.0 - rate
    a = (q + ALPHA_PRIME**2 * q * (1 - q)) ** -0.5
    return a, -a * ALPHA_PRIME * (1 - q)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_mean_zero_variance_one(rate):
    x = jax.random.normal(jax.random.key(0), (400, 4, 4, 50))  # 20,000 maps
    y = jaxreg.alpha_dropout(jax.random.key(1), x, rate, broadcast_dims=FEATURE)
    y = np.asarray(y, np.float64)
    maps = y.transpose(0, 3, 1, 2).reshape(-1, 16)  # one row per channel map
    for stat, target in ((maps.mean(1), 0.0), ((maps**2).mean(1), 1.0)):
        se = stat.std(ddof=1) / math.sqrt(stat.size)
        assert abs(stat.mean() - target) < 4 * se, (stat.mean(), target, se)
    # The variance itself: E[y^2] - E[y]^2 within the two bounds above combined.
    assert abs(y.var() - 1.0) < 0.05


def test_mask_shared_exactly_along_broadcast_dims():
    x = jax.random.normal(jax.random.key(2), (3, 5, 6, 7))
    rate = 0.4
    y = jaxreg.alpha_dropout(jax.random.key(3), x, rate, broadcast_dims=FEATURE)
    a, b = _affine(float(1.0 - jaxreg.keep_probability(rate)))
    dropped_value = np.float32(a * ALPHA_PRIME + b)
    dropped = np.isclose(np.asarray(y), dropped_value, rtol=1e-6, atol=0)
    # One decision per (example, channel): the pattern is constant over H and W.
    assert np.array_equal(dropped, np.broadcast_to(dropped[:, :1, :1, :], x.shape))
    assert 0 < dropped.mean() < 1
    # The decisions are those of keep_mask with the same broadcast_dims.
    keep = jaxreg.keep_mask(jax.random.key(3), x.shape, rate, broadcast_dims=FEATURE)
    assert np.array_equal(~dropped, np.broadcast_to(keep, x.shape))
    # Kept elements are a * x + b (float32 rounding of terms of size ~1: the
    # absolute tolerance covers cancellation near 0).
    kept = ~dropped
    np.testing.assert_allclose(
        np.asarray(y)[kept],
        (a * np.asarray(x, np.float64) + b)[kept],
        rtol=1e-6,
        atol=4e-7,
    )


def test_drop_fraction_of_maps():
    rate, n = 0.3, 200 * 100
    x = jnp.zeros((200, 3, 3, 100))
    y = jaxreg.alpha_dropout(jax.random.key(4), x, rate, broadcast_dims=FEATURE)
    a, b = _affine(rate)
    kept_maps = int(np.sum(np.abs(np.asarray(y[:, 0, 0, :]) - b) < 1e-6))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(kept_maps - n * (1 - rate)) < 4 * sigma


def test_jit_equals_eager_and_gradient_is_mask_times_a():
    x = jax.random.normal(jax.random.key(5), (2, 4, 4, 3))
    key = jax.random.key(6)

    def f(x):
        return jaxreg.alpha_dropout(key, x, 0.5, broadcast_dims=FEATURE)

    # Same masks; a * y + b may be fused (one rounding fewer) under jit.
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-6, atol=4e-7)
    g = jax.grad(lambda x: f(x).sum())(x)
    keep = np.broadcast_to(
        jaxreg.keep_mask(key, x.shape, 0.5, broadcast_dims=FEATURE), x.shape
    )
    a, _ = _affine(float(1.0 - jaxreg.keep_probability(0.5)))
    np.testing.assert_allclose(g, np.where(keep, a, 0.0), rtol=1e-6)


def test_edges_and_inference():
    x = jax.random.normal(jax.random.key(7), (2, 3, 3, 2))
    np.testing.assert_array_equal(
        jaxreg.alpha_dropout(None, x, 0.0, broadcast_dims=FEATURE), x
    )
    np.testing.assert_array_equal(
        jaxreg.alpha_dropout(None, x, 1.0, broadcast_dims=FEATURE), jnp.zeros_like(x)
    )
    np.testing.assert_array_equal(
        jaxreg.alpha_dropout(None, x, 0.5, broadcast_dims=FEATURE, deterministic=True),
        x,
    )


@pytest.mark.parametrize(
    ("dims", "err", "match"),
    [((4,), ValueError, "broadcast_dims"), ((1.5,), TypeError, "broadcast_dims")],
)
def test_bad_broadcast_dims(dims, err, match):
    with pytest.raises(err, match=match):
        jaxreg.alpha_dropout(
            jax.random.key(0), jnp.ones((2, 3, 3, 2)), 0.5, broadcast_dims=dims
        )
