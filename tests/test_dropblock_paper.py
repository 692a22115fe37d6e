"""DropBlock as in the paper and timm: ``couple_channels`` (one block mask per
example shared by the channels), ``gamma_scale`` (a factor on the seed rate) and
a traced rate from a schedule.

Positions inside one block are dropped together, so drop counts are not
binomial. Bounds are 4 sigma of the mean of per-example drop fractions, which
are independent and identically distributed; sigma is their sample standard
deviation over the square root of the number of examples.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import run_on_8_cpu_devices

import jaxreg

SHAPE = (1500, 10, 10, 3)
BLOCK = 3


def _assert_fraction(y, expected):
    dropped = np.asarray(y == 0, np.float64)
    per_example = dropped.reshape(dropped.shape[0], -1).mean(1)
    se = per_example.std(ddof=1) / math.sqrt(per_example.size)
    assert abs(per_example.mean() - expected) < 4 * se, (
        per_example.mean(),
        expected,
        se,
    )


def _ones_dropped(seed, rate, **kwargs):
    return jaxreg.dropblock(
        jax.random.key(seed), jnp.ones(SHAPE), rate, block_size=BLOCK, **kwargs
    )


def _assert_kept_scale(y, seed_rate):
    """Kept units carry 1 / keep, the realised keep probability of a position."""
    keep = float(jaxreg.keep_probability(seed_rate)) ** (BLOCK * BLOCK)
    kept = np.asarray(y)[np.asarray(y) != 0]
    np.testing.assert_allclose(kept, 1.0 / keep, rtol=1e-6)


def _seed_rate(rate, block=BLOCK):
    return 1.0 - (1.0 - rate) ** (1.0 / block**2)


def test_coupled_mask_identical_across_channels():
    x = jnp.ones((4, 9, 9, 5))
    y = jaxreg.dropblock(
        jax.random.key(0), x, 0.3, block_size=BLOCK, couple_channels=True
    )
    dropped = np.asarray(y == 0)
    assert np.array_equal(dropped, np.broadcast_to(dropped[..., :1], x.shape))
    assert 0 < dropped.mean() < 1
    # Examples still get their own masks.
    assert not np.array_equal(dropped[0], dropped[1])
    # Uncoupled (the default) masks differ between channels.
    z = jaxreg.dropblock(jax.random.key(0), x, 0.3, block_size=BLOCK)
    assert not np.array_equal(np.asarray(z == 0)[..., 0], np.asarray(z == 0)[..., 1])


@pytest.mark.parametrize("coupled", [False, True])
def test_drop_fraction_matches_rate(coupled):
    rate = 0.2
    y = _ones_dropped(1, rate, couple_channels=coupled)
    _assert_fraction(y, rate)
    _assert_kept_scale(y, _seed_rate(rate))


@pytest.mark.parametrize("gamma_scale", [0.5, 2.0])
def test_gamma_scale_scales_the_seed_rate(gamma_scale):
    rate = 0.15
    seed = gamma_scale * _seed_rate(rate)
    y = _ones_dropped(2, rate, gamma_scale=gamma_scale)
    # The scale of kept units is 1 / (1 - seed)**(b*b), with the sampler's
    # realised keep probability of the scaled seed rate.
    _assert_kept_scale(y, seed)
    _assert_fraction(y, 1.0 - (1.0 - seed) ** (BLOCK * BLOCK))


def test_gamma_scale_one_is_the_default_and_zero_keeps_everything():
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
    key = jax.random.key(4)
    base = jaxreg.dropblock(key, x, 0.3, block_size=BLOCK)
    np.testing.assert_array_equal(
        jaxreg.dropblock(key, x, 0.3, block_size=BLOCK, gamma_scale=1.0), base
    )
    np.testing.assert_array_equal(
        jaxreg.dropblock(key, x, 0.3, block_size=BLOCK, gamma_scale=0.0), x
    )


def test_traced_rate_from_a_schedule():
    ramp = jaxreg.schedules.linear_ramp(0.2, 100)
    x = jnp.ones(SHAPE)

    @jax.jit
    def step(key, step):
        return jaxreg.dropblock(
            key, x, ramp(step), block_size=BLOCK, couple_channels=True, gamma_scale=1.0
        )

    np.testing.assert_array_equal(step(jax.random.key(5), 0), x)  # rate 0 at step 0
    _assert_fraction(step(jax.random.key(5), 50), 0.1)
    _assert_fraction(step(jax.random.key(6), 1000), 0.2)


def test_traced_gamma_scale():
    x = jnp.ones(SHAPE)
    f = jax.jit(
        lambda s: jaxreg.dropblock(
            jax.random.key(7), x, 0.1, block_size=BLOCK, gamma_scale=s
        )
    )
    _assert_fraction(f(2.0), 1.0 - (1.0 - 2.0 * _seed_rate(0.1)) ** (BLOCK * BLOCK))


def test_gradient_is_mask_times_scale():
    x = jax.random.normal(jax.random.key(8), (2, 8, 8, 3))
    key = jax.random.key(9)

    def f(x):
        return jaxreg.dropblock(
            key, x, 0.3, block_size=BLOCK, couple_channels=True, gamma_scale=0.7
        )

    g = jax.grad(lambda x: f(x).sum())(x)
    y = f(x)
    scale = jnp.where(x != 0, y / x, 0.0)
    np.testing.assert_allclose(g, scale, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"gamma_scale": -0.5}, ValueError, "gamma_scale"),
        ({"gamma_scale": float("nan")}, ValueError, "gamma_scale"),
        ({"couple_channels": 1}, TypeError, "couple_channels"),
        ({"couple_channels": "yes"}, TypeError, "couple_channels"),
    ],
)
def test_bad_inputs(kwargs, err, match):
    with pytest.raises(err, match=match):
        jaxreg.dropblock(
            jax.random.key(0), jnp.ones((1, 4, 4, 1)), 0.1, block_size=2, **kwargs
        )


SHARD_SCRIPT = """
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import jaxreg

mesh = jax.make_mesh((2, 4), ("b", "c"))
x = jax.random.normal(jax.random.key(0), (4, 8, 8, 8))
key = jax.random.key(1)
for coupled in (False, True):
    want = jaxreg.dropblock(key, x, 0.3, block_size=3, couple_channels=coupled)
    for spec in (P("b", None, "c", None), P("b", None, None, "c")):
        def f(x, spec=spec):
            return jaxreg.dropblock(key, x, 0.3, block_size=3,
                                    couple_channels=coupled, shard_spec=spec)
        g = jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=spec)
        got = jax.jit(g)(jax.device_put(x, NamedSharding(mesh, spec)))
        np.testing.assert_array_equal(got, want)
spec = P("b", None, None, "c")
a = jax.shard_map(
    lambda x: jaxreg.alpha_dropout(key, x, 0.3, broadcast_dims=(1, 2), shard_spec=spec),
    mesh=mesh, in_specs=spec, out_specs=spec)
got = jax.jit(a)(jax.device_put(x, NamedSharding(mesh, spec)))
want = jaxreg.alpha_dropout(key, x, 0.3, broadcast_dims=(1, 2))
np.testing.assert_allclose(got, want, rtol=1e-6, atol=4e-7)
print("OK")
"""


def test_shard_map_blocks_equal_the_global_output():
    # Coupled and per-channel DropBlock with the spatial or the channel axis
    # split, and feature alpha dropout with channels split: every shard gets its
    # block of the global output (masks are elementwise: exact, except alpha
    # dropout's affine map, which XLA may fuse).
    result = run_on_8_cpu_devices(SHARD_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
