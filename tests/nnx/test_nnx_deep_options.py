"""jaxreg.nnx: AlphaDropout(broadcast_dims=...) and DropBlock(couple_channels=...,
gamma_scale=...) equal their pure functions; bad fields fail at construction."""

import jax
import numpy as np
import pytest
from _deep_options import BAD, BAD_IDS, CASES, IDS, X, assert_channel_maps_shared
from flax import nnx

import jaxreg.nnx as jn


@pytest.mark.parametrize("name, kwargs, pure", [c[1:] for c in CASES], ids=IDS)
def test_module_equals_pure_function(name, kwargs, pure):
    module = getattr(jn, name)(**kwargs, rngs=nnx.Rngs(dropout=5))
    stream = nnx.Rngs(dropout=5)["dropout"].fork()
    y = module(X)
    np.testing.assert_array_equal(y, pure(stream(), X))
    assert_channel_maps_shared(name, y)
    module = getattr(jn, name)(**kwargs)
    key = jax.random.key(9)
    np.testing.assert_array_equal(module(X, rngs=key), pure(key, X))
    np.testing.assert_array_equal(module(X, deterministic=True), X)


@pytest.mark.parametrize("name, kwargs, error, match", BAD, ids=BAD_IDS)
def test_bad_fields(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(jn, name)(**kwargs)
