"""The mask sampler: ``keep_mask`` and ``keep_probability``.

These tests check public semantics only (Bernoulli statistics, determinism,
independence, broadcasting), never particular mask values, so they hold for any
correct generator behind ``keep_mask``.

Statistical bounds: a count of ``n`` Bernoulli(p) draws is checked to lie within 4
binomial sigmas ``4 * sqrt(n p (1 - p))`` of ``n p``; a Pearson correlation of ``n``
independent pairs within ``4 / sqrt(n)``. The keys are fixed, so each test is
deterministic for a given generator; for a correct generator each bound fails with
probability about 6e-5.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial, fold_key

import jaxreg
from jaxreg import keep_mask, keep_probability

RATES = [0.001, 0.01, 0.1, 0.3, 0.5, 0.9, 0.99]
BASE = jax.random.key(20240611)


def _key(*path):
    return fold_key(BASE, *path)


def _corr(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _assert_uncorrelated(a, b):
    n = np.size(a)
    c = _corr(a, b)
    assert abs(c) < 4 / math.sqrt(n), f"correlation {c:.5f} over {n} pairs"


@functools.partial(jax.jit, static_argnums=(1, 2))
def _count_static(key, shape, rate):
    return keep_mask(key, shape, rate).sum(dtype=jnp.int32)


@functools.partial(jax.jit, static_argnums=1)
def _count_traced(key, shape, rate):
    return keep_mask(key, shape, rate).sum(dtype=jnp.int32)


# --- keep rate ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("rate", RATES)
def test_keep_rate_over_1e7_draws(rate):
    n = 10**7
    kept = int(_count_static(_key(1, RATES.index(rate)), (2500, 4000), rate))
    assert_binomial(kept, n, 1 - rate)


@pytest.mark.parametrize("rate", [0.01, 0.3, 0.9])
def test_keep_rate_with_traced_rate(rate):
    n = 10**6
    kept = int(_count_traced(_key(2, int(rate * 100)), (1000, 1000), rate))
    assert_binomial(kept, n, 1 - rate)


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.1, 0.3, 0.5, 0.9, 0.99, 0.12345])
def test_realised_keep_probability_is_statistically_exact(rate):
    # Whatever the sampler quantizes, the keep probability it realises must be
    # invisible at 10^7 draws: within 1% of one binomial sigma of 1 - rate.
    p = keep_probability(rate)
    assert isinstance(p, float)
    sigma = math.sqrt(rate * (1 - rate) / 10**7)
    assert abs(p - (1 - rate)) <= 0.01 * sigma


def test_keep_probability_exact_values():
    assert keep_probability(0.0) == 1.0
    assert keep_probability(1.0) == 0.0
    assert keep_probability(0) == 1.0
    assert keep_probability(1) == 0.0
    assert keep_probability(0.5) == 0.5
    assert keep_probability(0.25) == 0.75
    assert keep_probability(np.float32(0.5)) == 0.5
    assert keep_probability(jnp.asarray(0.75)) == 0.25


@pytest.mark.parametrize("rate", [0.0, 1e-6, 0.001, 0.3, 0.5, 0.9, 0.999999, 1.0])
def test_keep_probability_traced_matches_static(rate):
    traced = jax.jit(keep_probability)(rate)
    assert traced.shape == ()
    assert jnp.issubdtype(traced.dtype, jnp.floating)
    assert abs(float(traced) - keep_probability(rate)) <= 2.0**-23


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan"), float("inf")])
def test_keep_probability_rejects_bad_rate(bad):
    with pytest.raises(ValueError, match=rf"`rate`.*\[0, 1\]; got rate={bad!r}"):
        keep_probability(bad)


# --- mask basics ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 0, 2), (5, 4, 3)])
def test_mask_shape_and_dtype(shape):
    m = keep_mask(_key(3), shape, 0.5)
    assert m.shape == shape
    assert m.dtype == jnp.bool_


def test_rate_zero_keeps_all_and_rate_one_drops_all():
    shape = (50, 40)
    assert bool(keep_mask(_key(4), shape, 0.0).all())
    assert not bool(keep_mask(_key(4), shape, 1.0).any())
    f = jax.jit(lambda k, r: keep_mask(k, shape, r))
    assert bool(f(_key(4), 0.0).all())
    assert not bool(f(_key(4), 1.0).any())
    # Out-of-range traced rates cannot be checked; they act as the nearest end.
    assert bool(f(_key(4), -0.5).all())
    assert not bool(f(_key(4), 1.5).any())


def test_same_key_same_mask():
    a = keep_mask(_key(5), (300, 200), 0.4)
    b = keep_mask(_key(5), (300, 200), 0.4)
    np.testing.assert_array_equal(a, b)


def test_different_keys_different_masks():
    parent = _key(6)
    k1, k2 = jax.random.split(parent)
    keys = [
        parent,
        k1,
        k2,
        jax.random.fold_in(parent, 7),
        jax.random.key(0),
        jax.random.key(1),
    ]
    # (note: with jax_threefry_partitionable, split(k)[i] == fold_in(k, i), so those
    # are the same key and not listed twice)
    masks = [np.asarray(keep_mask(k, (64, 64), 0.5)) for k in keys]
    for i in range(len(masks)):
        for j in range(i):
            # equal with probability 2**-4096 for independent masks
            assert not np.array_equal(masks[i], masks[j]), (i, j)


def test_jit_equals_eager():
    key = _key(7)
    eager = keep_mask(key, (33, 65), 0.3, broadcast_dims=(0,))
    jitted = jax.jit(lambda k: keep_mask(k, (33, 65), 0.3, broadcast_dims=(0,)))(key)
    np.testing.assert_array_equal(eager, jitted)


def test_vmap_over_keys_equals_loop():
    keys = jax.random.split(_key(8), 6)
    batched = jax.vmap(lambda k: keep_mask(k, (40, 50), 0.5))(keys)
    looped = jnp.stack([keep_mask(k, (40, 50), 0.5) for k in keys])
    np.testing.assert_array_equal(batched, looped)
    for i in range(1, 6):
        assert not np.array_equal(batched[0], batched[i])


# --- independence -------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_neighbours_are_uncorrelated_2d(rate):
    m = np.asarray(keep_mask(_key(9, int(rate * 10)), (1000, 1000), rate))
    _assert_uncorrelated(m[:, :-1], m[:, 1:])  # lag 1 along rows
    _assert_uncorrelated(m[:-1, :], m[1:, :])  # lag 1 along columns
    flat = m.ravel()
    for lag in (2, 3, 4, 8, 16, 32, 64, 128):  # word/byte-sized strides
        _assert_uncorrelated(flat[:-lag], flat[lag:])


def test_neighbours_are_uncorrelated_3d():
    m = np.asarray(keep_mask(_key(10), (64, 128, 128), 0.5))
    _assert_uncorrelated(m[:-1], m[1:])
    _assert_uncorrelated(m[:, :-1], m[:, 1:])
    _assert_uncorrelated(m[:, :, :-1], m[:, :, 1:])


def test_masks_from_different_keys_are_uncorrelated():
    parent = _key(11)
    k1, k2 = jax.random.split(parent)
    pairs = [
        (k1, k2),
        (parent, k1),
        (jax.random.fold_in(parent, 0), jax.random.fold_in(parent, 1)),
        (jax.random.key(0), jax.random.key(1)),
    ]
    for a, b in pairs:
        _assert_uncorrelated(
            keep_mask(a, (1000, 1000), 0.5), keep_mask(b, (1000, 1000), 0.5)
        )


def test_vmapped_masks_are_uncorrelated():
    keys = jax.random.split(_key(12), 4)
    m = np.asarray(jax.vmap(lambda k: keep_mask(k, (500, 500), 0.3))(keys))
    for i in range(1, 4):
        _assert_uncorrelated(m[0], m[i])


# --- broadcast_dims -------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, dims",
    [
        ((8, 1000), (0,)),
        ((8, 1000), (-2,)),
        ((1000, 8), (1,)),
        ((4, 5, 500), (0, 1)),
        ((4, 500, 5), (0, 2)),
        ((6, 7), (0, 1)),
    ],
)
def test_broadcast_dims_share_one_value(shape, dims):
    m = np.asarray(keep_mask(_key(13), shape, 0.5, broadcast_dims=dims))
    assert m.shape == shape
    for d in dims:
        first = np.take(m, [0], axis=d)
        assert (m == first).all(), f"mask varies along broadcast axis {d}"


def test_broadcast_dims_keep_rate_of_the_free_axes():
    n, rate = 10**6, 0.2
    m = keep_mask(_key(14), (3, n), rate, broadcast_dims=(0,))
    assert_binomial(int(m[0].sum()), n, 1 - rate)
    m = np.asarray(keep_mask(_key(15), (1000, 4, 1000), rate, broadcast_dims=(1,)))
    assert_binomial(int(m[:, 0].sum()), n, 1 - rate)
    _assert_uncorrelated(m[:-1, 0], m[1:, 0])


def test_all_dims_broadcast_is_one_coin():
    # Broadcasting over every axis draws one decision per key.
    keys = jax.random.split(_key(16), 2000)
    ms = jax.vmap(lambda k: keep_mask(k, (3, 4), 0.3, broadcast_dims=(0, 1)))(keys)
    ms = np.asarray(ms)
    assert (ms == ms[:, :1, :1]).all()
    assert_binomial(int(ms[:, 0, 0].sum()), 2000, 0.7)


def test_public_names():
    assert jaxreg.keep_mask is keep_mask
    assert "keep_mask" in jaxreg.__all__ and "keep_probability" in jaxreg.__all__


def test_keep_mask_rejects_bad_shapes():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`shape` must not have negative sizes"):
        jaxreg.keep_mask(key, (-1, 2), 0.5)
    with pytest.raises(TypeError, match=r"`shape` must be a sequence of ints"):
        jaxreg.keep_mask(key, 5, 0.5)
