"""jaxreg.linen: AlphaDropout(broadcast_dims=...) and DropBlock(couple_channels=...,
gamma_scale=...) equal their pure functions; bad fields fail at construction."""

import jax
import numpy as np
import pytest
from _deep_options import BAD, BAD_IDS, CASES, IDS, X, assert_channel_maps_shared
from _modules import module_key

import jaxreg.linen as jl


@pytest.mark.parametrize("name, kwargs, pure", [c[1:] for c in CASES], ids=IDS)
def test_module_equals_pure_function(name, kwargs, pure):
    module = getattr(jl, name)(**kwargs)
    key = jax.random.key(7)
    y = module.apply({}, X, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(y, pure(module_key(module, key), X))
    assert_channel_maps_shared(name, y)
    np.testing.assert_array_equal(module.apply({}, X, deterministic=True), X)


@pytest.mark.parametrize("name, kwargs, error, match", BAD, ids=BAD_IDS)
def test_bad_fields(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(jl, name)(**kwargs).apply({}, X, deterministic=True)
