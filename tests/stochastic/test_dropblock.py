"""``jaxreg.dropblock``: contiguous blocks, the seed rate gamma, the realised drop
fraction, key-only memory, bad arguments.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial
from _stochastic import (
    DTYPES,
    X4,
    assert_mean,
    assert_memory_per_layer_is_that_of_a_given_mask,
    assert_vmap_over_keys_equals_loop,
    bitwise_equal,
    data,
    key_at,
    ones_of,
    residual_seed_words,
    residual_sizes,
)
from jax.test_util import check_grads

from jaxreg import (
    dropblock,
    keep_mask,
    keep_probability,
)


def _opening(dropped, b):
    """Positions covered by a b x b square entirely inside ``dropped``.

    The map is padded by b - 1 with "dropped" on every side (blocks are clipped by
    the border), eroded with a b x b window and dilated back.
    """
    pad = b - 1
    d = np.pad(dropped, ((pad, pad), (pad, pad)), constant_values=True)
    h, w = d.shape
    full = np.ones((h - pad, w - pad), bool)  # windows whose top-left is (i, j)
    for i in range(b):
        for j in range(b):
            full &= d[i : h - pad + i, j : w - pad + j]
    covered = np.zeros_like(d)
    for i in range(b):
        for j in range(b):
            covered[i : h - pad + i, j : w - pad + j] |= full
    return covered[pad : pad + dropped.shape[0], pad : pad + dropped.shape[1]]


@pytest.mark.parametrize("block_size, rate", [(3, 0.1), (3, 0.3), (5, 0.2), (7, 0.1)])
def test_dropblock_drops_contiguous_squares(block_size, rate):
    x = data((4, 24, 24, 8), 34)
    y = dropblock(key_at(34, block_size), x, rate, block_size=block_size)
    dropped = np.asarray(y) == 0
    assert dropped.any() and not dropped.all()
    for n in range(dropped.shape[0]):
        for c in range(dropped.shape[3]):
            d = dropped[n, :, :, c]
            np.testing.assert_array_equal(
                _opening(d, block_size), d, err_msg=f"map ({n}, {c}) has a non-block"
            )


def test_plain_dropout_masks_fail_the_block_check():
    # The check above can fail: a Bernoulli mask at the same rate is not a union
    # of 3 x 3 squares.
    d = ~np.asarray(keep_mask(key_at(35), (24, 24), 0.3))
    assert not np.array_equal(_opening(d, 3), d)


@pytest.mark.parametrize("block_size, rate", [(3, 0.1), (3, 0.5), (5, 0.2), (7, 0.3)])
def test_dropblock_realised_drop_fraction(block_size, rate):
    # Maps are independent across (example, channel), positions within a map are
    # not; the mean drop fraction over m = 2048 maps is checked within 4 empirical
    # standard errors of `rate`. Each position, corners included, is dropped with
    # probability `rate`: the corner counts over the maps are binomial.
    y = dropblock(
        key_at(36, block_size), ones_of((128, 16, 16, 16)), rate, block_size=block_size
    )
    dropped = (np.asarray(y) == 0).transpose(0, 3, 1, 2).reshape(-1, 16, 16)
    frac = dropped.reshape(len(dropped), -1).mean(1)
    se = frac.std(ddof=1) / math.sqrt(len(frac))
    assert_mean(frac.mean(), rate, se, "drop fraction")
    for i, j in [(0, 0), (0, 15), (15, 0), (15, 15), (8, 8)]:
        assert_binomial(int(dropped[:, i, j].sum()), len(dropped), rate)
    # kept units are scaled by 1 / (1 - rate), so E[output] == x
    kept_values = np.unique(np.asarray(y)[~(np.asarray(y) == 0)])
    assert kept_values.size == 1
    assert abs(float(kept_values[0]) * (1 - rate) - 1) < 1e-6


def test_dropblock_block_larger_than_map_and_block_one():
    y = dropblock(key_at(37), data((64, 4, 4, 8), 37), 0.5, block_size=7)
    assert y.shape == (64, 4, 4, 8)
    dropped = np.asarray(y) == 0
    assert dropped.any() and not dropped.all()
    # block_size=1 is Bernoulli dropout at the same rate
    y = dropblock(key_at(38), ones_of((100, 50, 50, 4)), 0.3, block_size=1)
    assert_binomial(int((y != 0).sum()), y.size, 0.7)


def test_dropblock_channels_are_independent():
    y = dropblock(key_at(39), ones_of((16, 32, 32, 2)), 0.3, block_size=3)
    d = (np.asarray(y) == 0).astype(np.float64)
    c = np.corrcoef(d[..., 0].ravel(), d[..., 1].ravel())[0, 1]
    # positions are correlated within a map, so use a generous 4 / sqrt(maps) bound
    assert abs(c) < 4 / math.sqrt(16)


@pytest.mark.parametrize(
    "block_size, error, shown",
    [
        (0, ValueError, r"`block_size` must be >= 1; got block_size=0"),
        (-3, ValueError, r"`block_size` must be >= 1; got block_size=-3"),
        (2.0, TypeError, r"`block_size` must be a Python int; got float 2\.0"),
        (True, TypeError, r"`block_size` must be a Python int; got bool True"),
        ("3", TypeError, r"`block_size` must be a Python int; got str '3'"),
    ],
)
def test_dropblock_bad_block_size(block_size, error, shown):
    with pytest.raises(error, match=shown):
        dropblock(key_at(59), X4, 0.5, block_size=block_size)


def test_dropblock_numpy_int_block_size_is_an_int():
    key = key_at(61)
    expected = dropblock(key, X4, 0.5, block_size=3)
    for block_size in (np.int32(3), np.int64(3)):
        y = dropblock(key, X4, 0.5, block_size=block_size)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


def test_dropblock_needs_nhwc():
    with pytest.raises(ValueError, match=r"`x` must be an NHWC .*rank 4.*\(7, 7, 3\)"):
        dropblock(key_at(60), jnp.ones((7, 7, 3)), 0.5, block_size=3)


# --- the seed rate, the scale, and the paths that compute them ------------------------


def _gamma(rate, block_size):
    """The documented seed rate: every position is covered by b*b possible
    blocks, so 1 - (1 - gamma)**(b*b) == rate."""
    return 1.0 - (1.0 - rate) ** (1.0 / block_size**2)


def _scale(rate, block_size):
    """1 / the keep probability the sampler realises for one position."""
    return 1.0 / keep_probability(_gamma(rate, block_size)) ** (block_size**2)


def _assert_blocks(dropped, block_size):
    """Every (example, channel) map's dropped set is a union of b x b squares."""
    for n in range(dropped.shape[0]):
        for c in range(dropped.shape[3]):
            d = dropped[n, :, :, c]
            np.testing.assert_array_equal(
                _opening(d, block_size), d, err_msg=f"map ({n}, {c}) has a non-block"
            )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize(
    ("shape", "block_size", "rate"),
    [
        ((2, 9, 6, 3), 1, 0.3),
        ((2, 9, 6, 3), 2, 0.3),
        ((2, 9, 6, 3), 3, 0.5),
        ((1, 7, 11, 2), 5, 0.2),
        ((1, 4, 4, 2), 7, 0.5),  # block larger than the map
    ],
)
def test_dropblock_keeps_x_times_the_realised_scale_in_blocks(
    dtype, shape, block_size, rate
):
    # Kept units are x / (1 - realised rate), within one rounding of the output
    # dtype and of float32; dropped units are exactly 0 and form whole blocks;
    # the mask depends on the key, shape and rate only (not the data or dtype).
    # Eager and jit with a static rate agree bit for bit (elementwise maths); a
    # traced rate computes gamma in float32, so its scale may differ by float32
    # roundings of gamma amplified by the power b*b.
    key = key_at(902, block_size, round(rate * 100))
    x = data(shape, seed=2, dtype=dtype)
    y = dropblock(key, x, rate, block_size=block_size)
    static = jax.jit(dropblock, static_argnums=2, static_argnames="block_size")
    bitwise_equal(static(key, x, rate, block_size=block_size), y)
    jitted = jax.jit(dropblock, static_argnames="block_size")
    traced = jitted(key, x, jnp.float32(rate), block_size=block_size)
    reference_mask = np.asarray(
        dropblock(key, ones_of(shape), rate, block_size=block_size) == 0
    )
    eps, eps32 = float(jnp.finfo(dtype).eps), float(jnp.finfo(jnp.float32).eps)
    expected = np.asarray(x, np.float64) * _scale(rate, block_size)
    for label, out, rtol in [
        ("eager", y, eps + 2 * eps32),
        ("traced", traced, eps + (block_size**2 + 4) * eps32),
    ]:
        assert out.dtype == dtype
        out = np.asarray(out, np.float64)
        dropped = out == 0
        assert dropped.any() and not dropped.all(), label
        np.testing.assert_array_equal(dropped, reference_mask, err_msg=label)
        _assert_blocks(dropped, block_size)
        err = np.abs(out - expected)[~dropped]
        assert (err <= rtol * np.abs(expected[~dropped])).all(), (label, err.max())


@pytest.mark.parametrize("block_size, rate", [(2, 0.3), (3, 0.1), (3, 0.5), (5, 0.2)])
def test_dropblock_seed_rate_is_gamma(block_size, rate):
    # Two horizontally adjacent positions are both kept iff none of the b*(b+1)
    # seeds whose blocks cover either is drawn: probability (1 - gamma)**(b*(b+1)),
    # which a wrong gamma (or the paper's centres-inside-the-map rate) misses.
    # Two positions b apart share no seed: both kept with probability
    # (1 - rate)**2. Pairs whose seed windows are disjoint (rows b apart, columns
    # b + 1 apart for adjacent pairs; rows b apart for the distant ones) and maps
    # (example, channel) are independent, so the counts are binomial.
    b, side = block_size, 16
    y = dropblock(key_at(908, b), ones_of((256, side, side, 16)), rate, block_size=b)
    kept = (np.asarray(y) != 0).transpose(0, 3, 1, 2).reshape(-1, side, side)
    q_seed = keep_probability(_gamma(rate, b))
    rows = range(0, side, b)
    adjacent = [
        kept[:, i, j] & kept[:, i, j + 1]
        for i in rows
        for j in range(0, side - 1, b + 1)
    ]
    adjacent = np.stack(adjacent)
    assert_binomial(int(adjacent.sum()), adjacent.size, q_seed ** (b * (b + 1)))
    distant = np.stack([kept[:, i, 0] & kept[:, i, b] for i in rows])
    assert_binomial(int(distant.sum()), distant.size, q_seed ** (2 * b * b))


# --- key-only memory: the backward pass regenerates the blocks from the key -------


def test_dropblock_residuals_are_seed_words():
    key = key_at(903, 9)
    x = data((4, 8, 8, 2), seed=3)
    residual_seed_words(lambda x: dropblock(key, x, 0.3, block_size=3), x, key)
    # The check sees a stored mask: multiplying by a given scaled mask keeps it.
    scaled_mask = dropblock(key, jnp.ones_like(x), 0.3, block_size=3)
    assert max(residual_sizes(lambda x: x * scaled_mask, x)) == x.size


def test_dropblock_check_grads_and_gradient_values():
    key = key_at(904)
    x = data((2, 5, 4, 3), seed=4)
    check_grads(
        lambda x: dropblock(key, x, 0.3, block_size=2),
        (x,),
        order=2,
        modes=["fwd", "rev"],
    )
    # y = s * m * x, so d sum(y * x) / dx = 2 s m x = 2 y, zero exactly where y is.
    y = np.asarray(dropblock(key, x, 0.3, block_size=2))
    g = jax.grad(lambda x: jnp.sum(dropblock(key, x, 0.3, block_size=2) * x))(x)
    g = np.asarray(g)
    np.testing.assert_array_equal(g == 0, y == 0)
    np.testing.assert_allclose(g, 2 * y, rtol=2 * float(jnp.finfo(jnp.float32).eps))


def test_dropblock_jit_and_vmap_over_keys():
    keys = jax.random.split(key_at(905, 9), 3)
    x = data((3, 2, 6, 5, 2), seed=5)
    f = lambda k, x: dropblock(k, x, 0.25, block_size=3)  # noqa: E731
    for i in range(3):
        eager = f(keys[i], x[i])
        bitwise_equal(jax.jit(f)(keys[i], x[i]), eager)
    assert_vmap_over_keys_equals_loop(f, keys, x)


def test_dropblock_memory_per_layer_is_that_of_a_given_mask():
    # As for alpha dropout, with 3 x 3 convolutions; see the helper for the bounds.
    rate = 0.3
    x = data((2, 8, 8, 8), seed=6)
    scale = np.float32(_scale(rate, 3))

    def layer(w, h):
        dims = ("NHWC", "HWIO", "NHWC")
        conv = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", None, None, dims)
        return jnp.tanh(conv)

    assert_memory_per_layer_is_that_of_a_given_mask(
        lambda k, h: dropblock(k, h, rate, block_size=3),
        lambda h, m: jnp.where(m, h * scale, 0.0),
        lambda k: dropblock(k, jnp.ones(x.shape), rate, block_size=3) != 0,
        (layer, (3, 3, 8, 8), x, key_at(906, 9)),
    )
