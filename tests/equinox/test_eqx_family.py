"""The dropout family in jaxreg.equinox: each module is its pure function.

Equinox's test conventions (conftest.py) hold in every test here: strict dtype
promotion and rank promotion "raise".
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _modules import (
    FAMILY,
    KEY,
    X,
    assert_same_output,
    assert_traced_flag_matches_static,
    each_bad_field,
    each_family_case,
    inference_output,
)

import jaxreg
import jaxreg.equinox as je


def make(name, **kwargs):
    """The Equinox module for a shared case (Dropout's rate is called `p`)."""
    if name == "Dropout" and "rate" in kwargs:
        kwargs["p"] = kwargs.pop("rate")
    return getattr(je, name)(**kwargs)


@each_family_case
def test_module_equals_pure_function(name, kwargs, pure):
    module = make(name, **kwargs)
    key = jax.random.key(7)
    # The key passed is used as is.
    y = module(X, key=key)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(pure(key, X)))
    # The inference path, from the field, the call or inference_mode.
    expected = np.asarray(inference_output(name, kwargs, X))
    np.testing.assert_array_equal(np.asarray(module(X, inference=True)), expected)
    np.testing.assert_array_equal(
        np.asarray(eqx.nn.inference_mode(module)(X)), expected
    )
    np.testing.assert_array_equal(
        np.asarray(make(name, **kwargs, inference=True)(X)), expected
    )
    # filter_jit equals eager; a module is a pytree with no array leaves.
    jitted = eqx.filter_jit(lambda m, x, k: m(x, key=k))(module, X, key)
    assert_same_output(name, jitted, y, X)
    assert jax.tree.leaves(eqx.filter(module, eqx.is_array)) == []


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_keep_their_dtype(dtype):
    x = X.astype(dtype)
    for name, kwargs, pure in [c[1:] for c in FAMILY]:
        y = make(name, **kwargs)(x, key=KEY)
        assert y.dtype == dtype, name
        np.testing.assert_array_equal(np.asarray(y), np.asarray(pure(KEY, x)))


def test_vmap_over_examples_with_one_key_each():
    # Equinox's convention: the module sees one example; vmap with split keys
    # gives every example its own mask, one shared key the same mask.
    x = jax.random.normal(KEY, (8, 16))
    keys = jax.random.split(jax.random.key(1), 8)
    layer = je.Dropout(0.5)
    y = jax.vmap(lambda xi, k: layer(xi, key=k))(x, keys)
    for i in range(8):
        np.testing.assert_array_equal(
            np.asarray(y[i]), np.asarray(jaxreg.dropout(keys[i], x[i], 0.5))
        )
    shared = jax.vmap(lambda xi: layer(xi, key=KEY))(x)
    assert bool(jnp.all((shared == 0) == (shared[:1] == 0)))
    # DropPath's default mode drops a whole example.
    drop = jax.vmap(lambda xi, k: je.DropPath(0.5)(xi, key=k))(jnp.ones((8, 4)), keys)
    assert bool(jnp.all((drop == 0).all(1) | (drop == 2).all(1)))


@each_family_case
def test_traced_inference_flag_selects_the_path_like_the_static_flag(
    name, kwargs, pure
):
    module = make(name, **kwargs)

    def call(x, flag):
        return module(x, key=KEY, inference=flag)

    assert_traced_flag_matches_static(call, name, kwargs, pure, X, KEY)


@each_bad_field
def test_bad_fields_raise_at_construction(name, kwargs, error, message):
    if name == "Dropout":
        message = message.replace("`rate`", "`p`").replace("rate=", "p=")
    with pytest.raises(error, match=rf"^jaxreg\.equinox\.{name}: {message}"):
        make(name, **kwargs)


def test_numpy_integer_fields_are_stored_as_ints():
    x = jnp.ones((2, 8, 8, 3))
    for block_size in (np.int32(3), np.int64(3)):
        layer = je.DropBlock(0.2, block_size=block_size)
        assert type(layer.block_size) is int  # hashable static field
        expected = jaxreg.dropblock(KEY, x, 0.2, block_size=3)
        np.testing.assert_array_equal(np.asarray(layer(x, key=KEY)), expected)
    layer = je.Dropout(0.5, broadcast_dims=[np.int64(1)])
    assert layer.broadcast_dims == (1,)
    np.testing.assert_array_equal(
        np.asarray(layer(x, key=KEY)),
        np.asarray(jaxreg.dropout(KEY, x, 0.5, broadcast_dims=(1,))),
    )
    assert type(je.Dropout(np.float32(0.25)).p) is float


def test_equinox_conventions_hold_in_these_tests():
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    assert jax.config.jax_numpy_rank_promotion == "raise"
    with pytest.raises(ValueError, match="rank_promotion"):
        jnp.ones((2, 3)) + jnp.ones(3)
