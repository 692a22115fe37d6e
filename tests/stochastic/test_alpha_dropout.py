"""``jaxreg.alpha_dropout``: the affine map of Klambauer et al. 2017, its moments,
key-only memory (the mask is regenerated, not stored, for the backward pass).

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stochastic import (
    DTYPES,
    assert_mean,
    assert_memory_per_layer_is_that_of_a_given_mask,
    assert_vmap_over_keys_equals_loop,
    data,
    key_at,
    residual_seed_words,
    residual_sizes,
)
from jax.test_util import check_grads

from jaxreg import (
    alpha_dropout,
    keep_mask,
    keep_probability,
)


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5, 0.9])
def test_alpha_dropout_keeps_mean_zero_and_variance_one(rate):
    # For x ~ N(0, 1) (fresh per element) the output is iid with mean 0 and variance
    # 1 exactly (Klambauer et al. 2017). Bounds: 4 standard errors of the sample
    # mean (1 / sqrt(n)) and of the sample variance (empirical sd of the squared
    # deviations / sqrt(n)), n = 10^6.
    n = 10**6
    x = jax.random.normal(key_at(29, 0), (n,))
    y = np.asarray(alpha_dropout(key_at(29, int(rate * 100)), x, rate), np.float64)
    assert_mean(y.mean(), 0.0, 1 / math.sqrt(n), "mean")
    sq = (y - y.mean()) ** 2
    assert_mean(sq.mean(), 1.0, sq.std() / math.sqrt(n), "variance")


def _selu_constants():
    """SELU's alpha and lambda from their closed forms (Klambauer et al. 2017, eq. 14).

    The fixed point of mean 0 and variance 1, computed here from the paper's
    formulas, not copied from any implementation.
    """
    c = math.erfc(1 / math.sqrt(2))
    e = math.e
    alpha = -math.sqrt(2 / math.pi) / (c * math.sqrt(e) - 1)
    inner = (
        2 * math.erfc(math.sqrt(2)) * e**2
        + math.pi * c**2 * e
        - 2 * (2 + math.pi) * c * math.sqrt(e)
        + math.pi
        + 2
    )
    lam = (1 - c * math.sqrt(e)) * math.sqrt(2 * math.pi) * inner**-0.5
    return alpha, lam


def _paper_affine(rate):
    """(a, b, alpha') of the paper's alpha dropout at the realised keep probability."""
    alpha, lam = _selu_constants()
    alpha_p = -lam * alpha  # the SELU's negative saturation value
    q = keep_probability(rate)
    a = (q + alpha_p**2 * q * (1 - q)) ** -0.5
    return a, -a * alpha_p * (1 - q), alpha_p


def test_selu_constants_from_the_closed_forms():
    # The paper quotes alpha_01 ~ 1.6733 and lambda_01 ~ 1.0507.
    alpha, lam = _selu_constants()
    assert abs(alpha - 1.6733) < 1e-4 and abs(lam - 1.0507) < 1e-4


def _tolerance(dtype, a, b, x):
    """One rounding of the output dtype plus a few float32 roundings of a*x + b.

    Scaled by |a x| + |b| (the size of the terms before they cancel).
    """
    eps = float(jnp.finfo(dtype).eps) + 4 * float(jnp.finfo(jnp.float32).eps)
    return eps * (np.abs(a * x) + abs(b))


def _alpha_grad_is_nonzero(f, key, x, rate):
    """Where d sum(y) / dx != 0: exactly the kept elements (dy/dx is a or 0)."""
    g = jax.grad(lambda x: jnp.sum(f(key, x, rate).astype(jnp.float32)))(x)
    return np.asarray(g != 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("rate", [0.05, 0.3, 0.9])
def test_alpha_dropout_is_the_papers_affine_map(dtype, rate):
    # Klambauer et al. 2017, "New Dropout Technique": dropped units are set to
    # alpha' = -lambda * alpha, then a * y + b with q the keep probability:
    # a = (q + alpha'^2 q (1 - q))^(-1/2), b = -a alpha' (1 - q). The mask is
    # keep_mask(key, x.shape, rate); q is the keep probability the sampler
    # realises. Eager, jit with a static rate and jit with a traced rate (the
    # sampler's traced-threshold path) all give it, within the rounding above.
    key = key_at(901, round(rate * 100))
    x = data((5, 7, 3), seed=1, dtype=dtype)
    a, b, alpha_p = _paper_affine(rate)
    kept = np.asarray(keep_mask(key, x.shape, rate))
    assert kept.any() and not kept.all()  # both branches are covered
    x64 = np.asarray(x, np.float64)
    expected = np.where(kept, a * x64 + b, a * alpha_p + b)
    tol = _tolerance(dtype, a, b, np.where(kept, x64, alpha_p))
    paths = {
        "eager": alpha_dropout,
        "jit": jax.jit(alpha_dropout, static_argnums=2),
        "traced": lambda k, x, r: jax.jit(alpha_dropout)(k, x, jnp.float32(r)),
    }
    for label, f in paths.items():
        y = f(key, x, rate)
        assert y.dtype == dtype, label
        err = np.abs(np.asarray(y, np.float64) - expected)
        assert (err <= tol).all(), (label, err.max(), tol.min())
        np.testing.assert_array_equal(
            _alpha_grad_is_nonzero(f, key, x, rate), kept, err_msg=label
        )


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.9])
def test_alpha_dropout_affine_map_preserves_mean_zero_and_variance_one(rate):
    # Read a, b and the dropped value d off the output alone (a least-squares
    # line through the kept elements), then check the moments the paper's map is
    # built for, exactly up to float32 rounding: for x with mean 0 and variance 1,
    # E[y] = q b + (1 - q) d = 0 and E[y^2] = q (a^2 + b^2) + (1 - q) d^2 = 1.
    key = key_at(907, round(rate * 100))
    x = data((40, 50), seed=7)
    y = np.asarray(alpha_dropout(key, x, rate), np.float64)
    kept = np.asarray(keep_mask(key, x.shape, rate))
    x64 = np.asarray(x, np.float64)
    a_hat, b_hat = np.polyfit(x64[kept], y[kept], 1)
    assert np.ptp(y[~kept]) == 0  # every dropped unit holds the same value
    d = y[~kept][0]
    q = keep_probability(rate)
    assert abs(q * b_hat + (1 - q) * d) < 1e-5
    assert abs(q * (a_hat**2 + b_hat**2) + (1 - q) * d**2 - 1) < 1e-5
    # and d is the image of alpha' under the same line
    _, _, alpha_p = _paper_affine(rate)
    assert abs(a_hat * alpha_p + b_hat - d) < 1e-5


def test_alpha_dropout_inference_returns_the_input():
    x = data((20, 10), 30)
    np.testing.assert_array_equal(alpha_dropout(None, x, 0.3, deterministic=True), x)


# --- key-only memory: the backward pass regenerates the mask from the key ---------


def test_alpha_dropout_residuals_are_seed_words():
    key = key_at(903, 5)
    x = data((4, 8, 8, 2), seed=3)
    residual_seed_words(lambda x: alpha_dropout(key, x, 0.3), x, key)
    # The check sees a stored mask: the same map with the mask given keeps it.
    a, b, alpha_p = _paper_affine(0.3)
    mask = keep_mask(key, x.shape, 0.3)
    stored = lambda x: a * jnp.where(mask, x, alpha_p) + b  # noqa: E731
    assert max(residual_sizes(stored, x)) == x.size


def test_alpha_dropout_check_grads_and_gradient_values():
    key = key_at(904)
    x = data((2, 5, 4, 3), seed=4)
    check_grads(
        lambda x: alpha_dropout(key, x, 0.4), (x,), order=2, modes=["fwd", "rev"]
    )
    # d sum(y) / dx is the paper's slope a on kept units and exactly 0 on dropped.
    g = np.asarray(jax.grad(lambda x: jnp.sum(alpha_dropout(key, x, 0.4)))(x))
    kept = np.asarray(keep_mask(key, x.shape, 0.4))
    np.testing.assert_array_equal(g == 0, ~kept)
    a, _, _ = _paper_affine(0.4)
    np.testing.assert_allclose(g[kept], a, rtol=float(jnp.finfo(jnp.float32).eps))


def test_alpha_dropout_jit_and_vmap_over_keys():
    keys = jax.random.split(key_at(905, 5), 3)
    x = data((3, 2, 6, 5, 2), seed=5)
    f = lambda k, x: alpha_dropout(k, x, 0.25)  # noqa: E731
    for i in range(3):
        eager = f(keys[i], x[i])
        jitted = jax.jit(f)(keys[i], x[i])
        # The same mask; the affine map ``a * y + b`` may be a fused multiply-add
        # under jit, a last-bit difference.
        np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
        dropped = ~keep_mask(keys[i], x[i].shape, 0.25)
        assert bool(jnp.all(jnp.where(dropped, jitted == jitted[dropped][0], True)))
    assert_vmap_over_keys_equals_loop(f, keys, x)


def test_alpha_dropout_memory_per_layer_is_that_of_a_given_mask():
    # A net of tanh(h @ w) layers; see the helper for the bounds.
    rate = 0.3
    x = data((16, 64), seed=6)
    a, b, alpha_p = (np.float32(v) for v in _paper_affine(rate))
    assert_memory_per_layer_is_that_of_a_given_mask(
        lambda k, h: alpha_dropout(k, h, rate),
        lambda h, m: a * jnp.where(m, h, alpha_p) + b,
        lambda k: keep_mask(k, x.shape, rate),
        (lambda w, h: jnp.tanh(h @ w), (64, 64), x, key_at(906, 5)),
    )
