"""jaxreg.equinox: AlphaDropout(broadcast_dims=...) and DropBlock(couple_channels=...,
gamma_scale=...) equal their pure functions; bad fields fail at construction."""

import equinox as eqx
import jax
import numpy as np
import pytest
from _deep_options import BAD, BAD_IDS, CASES, IDS, X, assert_channel_maps_shared

import jaxreg.equinox as je


@pytest.mark.parametrize("name, kwargs, pure", [c[1:] for c in CASES], ids=IDS)
def test_module_equals_pure_function(name, kwargs, pure):
    module = getattr(je, name)(**kwargs)
    key = jax.random.key(7)
    y = module(X, key=key)
    np.testing.assert_array_equal(y, pure(key, X))
    assert_channel_maps_shared(name, y)
    np.testing.assert_array_equal(module(X, inference=True), X)
    assert jax.tree.leaves(eqx.filter(module, eqx.is_array)) == []


@pytest.mark.parametrize("name, kwargs, error, match", BAD, ids=BAD_IDS)
def test_bad_fields(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(je, name)(**kwargs)
