"""The dropout family in jaxreg.linen: each module is its pure function; fields, flags."""

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _modules import (
    KEY,
    X,
    assert_traced_flag_matches_static,
    each_bad_flax_field,
    each_family_case,
    inference_output,
    module_key,
)

import jaxreg
import jaxreg.linen as jl


@each_family_case
def test_module_equals_pure_function(name, kwargs, pure):
    module = getattr(jl, name)(**kwargs)
    key = jax.random.key(7)
    # 1) key drawn with make_rng from the "dropout" collection
    y = module.apply({}, X, deterministic=False, rngs={"dropout": key})
    expected = pure(module_key(module, key), X)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    # 2) key passed explicitly (no rngs needed)
    y = module.apply({}, X, deterministic=False, rng=key)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(pure(key, X)))
    # 3) inference path is the pure function's deterministic path
    y = module.apply({}, X, deterministic=True)
    np.testing.assert_array_equal(
        np.asarray(y), np.asarray(inference_output(name, kwargs, X))
    )
    # 4) a custom collection is honoured
    custom = module.clone(rng_collection="noise")
    y = custom.apply({}, X, deterministic=False, rngs={"noise": key})
    np.testing.assert_array_equal(
        np.asarray(y), np.asarray(pure(module_key(custom, key, collection="noise"), X))
    )


@pytest.mark.parametrize(
    "module, exact", [(jl.Dropout(0.3), True), (jl.GaussianDropout(0.2), False)]
)
def test_jit_equals_eager_and_vmap_over_keys(module, exact):
    keys = jax.random.split(jax.random.key(3), 4)

    def f(k):
        return module.apply({}, X, deterministic=False, rngs={"dropout": k})

    # Masking is one multiply: bitwise equal. Gaussian noise `x * (1 + s * eps)`
    # may be fused into an FMA by XLA under jit: equal up to a few roundings of
    # the terms, i.e. |jit - eager| <= 4 ulp * (|x| + |y|) elementwise.
    def close(a, b):
        bound = 2.0**-21 * (np.abs(np.asarray(X)) + np.abs(b))
        assert np.all(np.abs(a - b) <= bound), np.max(np.abs(a - b) / bound)

    check = np.testing.assert_array_equal if exact else close
    eager = [f(k) for k in keys]
    check(np.asarray(jax.jit(f)(keys[0])), np.asarray(eager[0]))
    check(np.asarray(jax.vmap(f)(keys)), np.asarray(jnp.stack(eager)))
    assert not bool(jnp.all(eager[0] == eager[1]))  # different keys, different masks


def test_traced_rate_schedule_under_jit():
    @jax.jit
    def f(rate, key):
        return jl.Dropout(rate, deterministic=False).apply({}, X, rng=key)

    key = jax.random.key(5)
    for rate in (0.0, 0.25, 1.0):
        np.testing.assert_array_equal(
            np.asarray(f(rate, key)), np.asarray(jaxreg.dropout(key, X, rate))
        )


def test_wrong_rng_type():
    with pytest.raises(TypeError, match=r"Dropout: `rng` must be a JAX PRNG key"):
        jl.Dropout(0.5, deterministic=False).apply({}, X, rng=3)
    with pytest.raises(ValueError, match=r"Dropout: `rng` is a batch of keys"):
        jl.Dropout(0.5, deterministic=False).apply({}, X, rng=jax.random.split(KEY))


def test_missing_collection_named_for_every_module():
    x = jnp.ones((2, 4, 4, 3))
    for module in (
        jl.SpatialDropout(0.5),
        jl.GaussianNoise(0.5),
        jl.DropBlock(0.5, block_size=2),
    ):
        with pytest.raises(flax.errors.InvalidRngError, match=r"split_rngs"):
            module.apply({}, x, deterministic=False)


@each_family_case
def test_traced_deterministic_selects_the_path_like_the_static_flag(name, kwargs, pure):
    module = getattr(jl, name)(**kwargs)

    def call(x, det):
        return module.apply({}, x, deterministic=det, rng=KEY)

    assert_traced_flag_matches_static(call, name, kwargs, pure, X, KEY)


@each_bad_flax_field
def test_bad_fields_raise_at_construction(name, kwargs, error, message):
    with pytest.raises(error, match=rf"^jaxreg\.linen\.{name}: {message}"):
        getattr(jl, name)(**kwargs)


def test_numpy_integer_fields_work_like_ints():
    key = jax.random.key(3)
    x = jnp.ones((2, 8, 8, 3))
    for block_size in (np.int32(3), np.int64(3)):
        y = jl.DropBlock(0.2, block_size=block_size).apply(
            {}, x, deterministic=False, rng=key
        )
        expected = jaxreg.dropblock(key, x, 0.2, block_size=3)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    y = jl.SpatialDropout(0.5, channel_axis=np.int64(1)).apply(
        {}, x, deterministic=False, rng=key
    )
    expected = jaxreg.spatial_dropout(key, x, 0.5, channel_axis=1)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    y = jl.Dropout(0.5, broadcast_dims=[np.int64(1)]).apply(
        {}, x, deterministic=False, rng=key
    )
    expected = jaxreg.dropout(key, x, 0.5, broadcast_dims=(1,))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
