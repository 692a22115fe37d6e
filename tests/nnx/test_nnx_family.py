"""The dropout family in jaxreg.nnx: each module is its pure function; state, fields, flags."""

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
    first_key,
    flat_paths,
    inference_output,
)
from flax import nnx

import jaxreg
import jaxreg.nnx as jn


@each_family_case
def test_module_equals_pure_function(name, kwargs, pure):
    def make(rngs):
        return getattr(jn, name)(**kwargs, rngs=rngs)

    # 1) rngs=nnx.Rngs at construction: the forked stream's keys, in order.
    module = make(nnx.Rngs(dropout=5))
    stream = nnx.Rngs(dropout=5)["dropout"].fork()
    for _ in range(2):
        np.testing.assert_array_equal(
            np.asarray(module(X)), np.asarray(pure(stream(), X))
        )
    # 2) a raw key at construction seeds the stream directly.
    module = make(jax.random.key(8))
    stream = nnx.RngStream(jax.random.key(8), tag="dropout")
    np.testing.assert_array_equal(np.asarray(module(X)), np.asarray(pure(stream(), X)))
    # 3) a legacy uint32 key at construction works too.
    module = make(jax.random.PRNGKey(8))
    np.testing.assert_array_equal(
        np.asarray(module(X)),
        np.asarray(pure(nnx.RngStream(jax.random.key(8), tag="d")(), X)),
    )
    # 4) at call time: a key is used as is; an RngStream / Rngs is drawn from.
    module = make(None)
    key = jax.random.key(9)
    np.testing.assert_array_equal(
        np.asarray(module(X, rngs=key)), np.asarray(pure(key, X))
    )
    np.testing.assert_array_equal(
        np.asarray(module(X, rngs=nnx.RngStream(key, tag="x"))),
        np.asarray(pure(jax.random.fold_in(key, 0), X)),
    )
    np.testing.assert_array_equal(
        np.asarray(module(X, rngs=nnx.Rngs(dropout=key))),
        np.asarray(pure(jax.random.fold_in(key, 0), X)),
    )
    # 5) an RngStream at construction is forked.
    module = make(nnx.Rngs(dropout=5)["dropout"])
    np.testing.assert_array_equal(
        np.asarray(module(X)), np.asarray(pure(first_key(5), X))
    )
    # 6) eval(): the inference path (the input itself, scaled for classic dropout).
    module.eval()
    np.testing.assert_array_equal(
        np.asarray(module(X)), np.asarray(inference_output(name, kwargs, X))
    )


STREAM = [("rngs", "count"), ("rngs", "key")]


def test_state_paths_of_every_module_are_stable():
    rngs = nnx.Rngs(0)
    cell = nnx.SimpleCell(3, 2, rngs=rngs)
    expected = {
        "Dropout": (jn.Dropout(0.1, rngs=rngs), STREAM),
        "SpatialDropout": (jn.SpatialDropout(0.1, rngs=rngs), STREAM),
        "GaussianDropout": (jn.GaussianDropout(0.1, rngs=rngs), STREAM),
        "GaussianNoise": (jn.GaussianNoise(0.1, rngs=rngs), STREAM),
        "AlphaDropout": (jn.AlphaDropout(0.1, rngs=rngs), STREAM),
        "DropPath": (jn.DropPath(0.1, rngs=rngs), STREAM),
        "DropBlock": (jn.DropBlock(0.1, block_size=2, rngs=rngs), STREAM),
        "DropConnectDense": (
            jn.DropConnectDense(3, 2, rngs=rngs),
            [("bias",), ("kernel",), *STREAM],
        ),
        "ZoneoutCell": (
            jn.ZoneoutCell(cell, 0.1, rngs=rngs),
            sorted([("cell", *p) for p in flat_paths(cell)] + STREAM),
        ),
        "ActivityRegularization": (jn.ActivityRegularization(l1=0.1), []),
        "Dropout without rngs": (jn.Dropout(0.1), []),
    }
    for name, (module, paths) in expected.items():
        assert flat_paths(module) == paths, name
    # Calls (eager and jitted) and mode switches do not change the structure.
    x = jnp.ones((2, 4, 4, 3))
    for name in ("Dropout", "DropBlock", "GaussianNoise"):
        module, paths = expected[name]
        module(x)
        nnx.jit(lambda m, x: m(x))(module, x)
        module.eval()
        module(x)
        assert flat_paths(module) == paths, name
        assert int(module.rngs.count[...]) == 2


@each_bad_flax_field
def test_bad_fields_raise_at_construction(name, kwargs, error, message):
    # Every argument is checked in the constructor (broadcast_dims, inverted and
    # channel_axis too), not at the first call.
    with pytest.raises(error, match=rf"^jaxreg\.nnx\.{name}: {message}"):
        getattr(jn, name)(**kwargs)


def test_a_batch_of_keys_is_rejected_at_construction_and_call():
    with pytest.raises(ValueError, match=r"batch of keys.*jax\.vmap"):
        jn.Dropout(0.1)(X, rngs=jax.random.split(KEY, 2))
    with pytest.raises(ValueError, match=r"batch of keys.*jax\.vmap"):
        jn.Dropout(0.1, rngs=jax.random.split(KEY, 2))


def test_numpy_integer_arguments_work_like_ints():
    key = jax.random.key(3)
    x = jnp.ones((2, 8, 8, 3))
    for block_size in (np.int32(3), np.int64(3)):
        layer = jn.DropBlock(0.2, block_size=block_size)
        assert type(layer.block_size) is int
        expected = jaxreg.dropblock(key, x, 0.2, block_size=3)
        np.testing.assert_array_equal(
            np.asarray(layer(x, rngs=key)), np.asarray(expected)
        )
    layer = jn.SpatialDropout(0.5, channel_axis=np.int64(1))
    expected = jaxreg.spatial_dropout(key, x, 0.5, channel_axis=1)
    np.testing.assert_array_equal(np.asarray(layer(x, rngs=key)), np.asarray(expected))
    layer = jn.Dropout(0.5, broadcast_dims=[np.int64(1)])
    assert layer.broadcast_dims == (1,)
    expected = jaxreg.dropout(key, x, 0.5, broadcast_dims=(1,))
    np.testing.assert_array_equal(np.asarray(layer(x, rngs=key)), np.asarray(expected))


@each_family_case
def test_traced_deterministic_selects_the_path_like_the_static_flag(name, kwargs, pure):
    module = getattr(jn, name)(**kwargs)

    def call(x, det):
        return module(x, deterministic=det, rngs=KEY)

    assert_traced_flag_matches_static(call, name, kwargs, pure, X, KEY)
