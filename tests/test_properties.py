"""Property tests (hypothesis) over shapes, dtypes, rates and broadcast_dims.

For any input the dropout family must keep shape and dtype, every output element
must be 0 or ``x / p`` (``x`` for classic dropout) with ``p =
keep_probability(rate)`` (scaled in float32 and rounded once to the data dtype),
and the keep decision must be constant along ``broadcast_dims``. The number of
examples is bounded and the search derandomized, so this file runs in seconds
and the same way every time.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxreg import drop_path, dropout, keep_mask, keep_probability, spatial_dropout

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)

dtypes = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16])
rates = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, 0.001, 0.999]),
    st.floats(0.0, 1.0, allow_nan=False),
)
# small sizes: every new shape costs a compilation
shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def shape_and_dims(draw):
    shape = draw(shapes)
    ndim = len(shape)
    if ndim == 0:
        return shape, ()
    dims = draw(st.lists(st.integers(-ndim, ndim - 1), max_size=ndim))
    return shape, tuple(dims)


def _data(shape, dtype, seed):
    """Values with |x| in [0.5, 2], so a zero output means 'dropped'."""
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.5, 2.0, shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return jnp.asarray(mag * sign, dtype)


def _assert_constant_along(kept, dims):
    for d in dims:
        d %= kept.ndim
        assert (kept == np.take(kept, [0], axis=d)).all(), f"varies along axis {d}"


@SETTINGS
@given(shape_and_dims(), dtypes, rates, st.integers(0, 2**31 - 1), st.booleans())
def test_dropout_properties(shape_dims, dtype, rate, seed, inverted):
    shape, dims = shape_dims
    x = _data(shape, dtype, seed)
    y = dropout(jax.random.key(seed), x, rate, broadcast_dims=dims, inverted=inverted)
    assert y.shape == x.shape and y.dtype == x.dtype
    p = keep_probability(rate)
    kept = np.asarray(y != 0)
    scale = np.float32(1 / p) if (inverted and p > 0) else np.float32(1)
    expected = (np.asarray(x, np.float32) * scale).astype(jnp.dtype(dtype))
    np.testing.assert_array_equal(np.asarray(y)[kept], expected[kept])
    _assert_constant_along(kept, dims)
    if p == 1.0:
        assert kept.all()
    if p == 0.0:
        assert not kept.any()
    # inference: x (inverted) or x * p (classic), dtype preserved
    z = dropout(None, x, rate, deterministic=True, inverted=inverted)
    assert z.shape == x.shape and z.dtype == x.dtype


@SETTINGS
@given(shape_and_dims(), rates, st.integers(0, 2**31 - 1))
def test_keep_mask_properties(shape_dims, rate, seed):
    shape, dims = shape_dims
    m = keep_mask(jax.random.key(seed), shape, rate, broadcast_dims=dims)
    assert m.shape == shape and m.dtype == jnp.bool_
    _assert_constant_along(np.asarray(m), dims)
    # the same key gives the same mask
    np.testing.assert_array_equal(
        m, keep_mask(jax.random.key(seed), shape, rate, broadcast_dims=dims)
    )


@SETTINGS
@given(rates, rates)
def test_keep_probability_is_monotone_and_close_to_one_minus_rate(r1, r2):
    p1, p2 = keep_probability(r1), keep_probability(r2)
    assert 0.0 <= p1 <= 1.0
    assert abs(p1 - (1 - r1)) <= 1e-6
    if r1 <= r2:
        assert p1 >= p2


@SETTINGS
@given(
    st.integers(3, 5),
    st.integers(1, 2),
    dtypes,
    rates,
    st.integers(0, 2**31 - 1),
    st.data(),
)
def test_spatial_dropout_properties(ndim, size, dtype, rate, seed, data):
    channel_axis = data.draw(st.sampled_from([1, -1, ndim - 1, -(ndim - 1)]))
    shape = tuple(data.draw(st.integers(1, size + 1)) for _ in range(ndim))
    x = _data(shape, dtype, seed)
    y = spatial_dropout(jax.random.key(seed), x, rate, channel_axis=channel_axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    ch = channel_axis % ndim
    spatial = [d for d in range(1, ndim) if d != ch]
    _assert_constant_along(np.asarray(y != 0), spatial)


@SETTINGS
@given(shapes.filter(lambda s: len(s) >= 1), dtypes, rates, st.integers(0, 2**31 - 1))
def test_drop_path_properties(shape, dtype, rate, seed):
    x = _data(shape, dtype, seed)
    y = drop_path(jax.random.key(seed), x, rate)
    assert y.shape == x.shape and y.dtype == x.dtype
    _assert_constant_along(np.asarray(y != 0), range(1, len(shape)))
    y = drop_path(jax.random.key(seed), x, rate, mode="batch")
    _assert_constant_along(np.asarray(y != 0), range(len(shape)))
