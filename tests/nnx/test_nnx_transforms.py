"""jaxreg.nnx modules under train()/eval()/nnx.view and the NNX transforms; scans over time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _modules import KEY, flat_paths
from flax import nnx

import jaxreg
import jaxreg.nnx as jn


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(8, 8, rngs=rngs)
        self.drop = jn.Dropout(0.5, rngs=rngs)
        self.noise = jn.GaussianNoise(0.1, rngs=rngs)
        self.path = jn.DropPath(0.2, rngs=rngs)

    def __call__(self, x):
        return x + self.path(self.noise(self.drop(nnx.relu(self.linear(x)))))


def _modes(model):
    return [
        m.deterministic
        for _, m in nnx.iter_modules(model)
        if hasattr(m, "rate") or hasattr(m, "stddev")
    ]


def test_train_eval_and_view_switch_every_module():
    model = Block(nnx.Rngs(0))
    assert _modes(model) == [False, False, False]
    model.eval()
    assert _modes(model) == [True, True, True]
    model.train()
    assert _modes(model) == [False, False, False]
    view = nnx.view(model, deterministic=True)
    assert _modes(view) == [True, True, True]
    assert _modes(model) == [False, False, False]  # the original is untouched
    x = jnp.ones((2, 8))
    np.testing.assert_array_equal(
        np.asarray(view(x)), np.asarray(x + nnx.relu(model.linear(x)))
    )
    info = nnx.view_info(model)
    for name in ("Dropout:", "GaussianNoise:", "DropPath:", "deterministic"):
        assert name in info


def test_nnx_jit_equals_eager_and_advances_streams():
    x = jax.random.normal(KEY, (2, 8))
    a, b = Block(nnx.Rngs(0)), Block(nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x))
    for _ in range(2):  # two steps: different masks, identical in both
        np.testing.assert_allclose(np.asarray(f(a, x)), np.asarray(b(x)), rtol=1e-6)
    assert int(a.drop.rngs.count[...]) == int(b.drop.rngs.count[...]) == 2
    assert flat_paths(a) == flat_paths(b)


def test_nnx_remat_matches_and_differentiates():
    x = jax.random.normal(KEY, (2, 8))
    a, b = Block(nnx.Rngs(0)), Block(nnx.Rngs(0))
    y_remat = nnx.remat(lambda m, x: m(x))(a, x)
    np.testing.assert_allclose(np.asarray(y_remat), np.asarray(b(x)), rtol=1e-6)

    def loss(m):
        return nnx.remat(lambda m, x: m(x))(m, x).sum()

    g = nnx.grad(loss)(Block(nnx.Rngs(0)))
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))


def _stack(n, seed=0):
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return Block(rngs)

    return create(nnx.Rngs(seed))


def test_nnx_vmap_ensemble_has_independent_masks():
    ensemble = _stack(3)
    assert ensemble.drop.rngs.key[...].shape == (3,)
    x = jnp.ones((2, 8))

    @nnx.vmap(in_axes=(0, None), out_axes=0)
    def forward(block, x):
        return block.drop(x)

    keys = [jax.random.fold_in(k, 0) for k in ensemble.drop.rngs.key[...]]
    y = forward(ensemble, x)
    for i in range(3):
        np.testing.assert_array_equal(
            np.asarray(y[i]), np.asarray(jaxreg.dropout(keys[i], x, 0.5))
        )
    assert not bool(jnp.all(y[0] == y[1]))
    np.testing.assert_array_equal(np.asarray(ensemble.drop.rngs.count[...]), [1, 1, 1])


def test_nnx_scan_over_layers_equals_python_loop():
    layers = _stack(4, seed=1)
    reference = _stack(4, seed=1)
    x = jax.random.normal(KEY, (2, 8))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, block):
        return block(x)

    y = forward(x, layers)
    graphdef, state = nnx.split(reference)
    expected = x
    for i in range(4):
        block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
        expected = block(expected)
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(layers.drop.rngs.count[...]), [1, 1, 1, 1])


@pytest.mark.parametrize("cls", [nnx.Dropout, jn.Dropout])
def test_nnx_scan_over_time_shared_or_per_step(cls):
    x = jnp.ones((3, 8, 16))  # (batch, time, features)

    # The module as scan carry: its stream advances every step -> per-step masks.
    @nnx.scan(in_axes=(nnx.Carry, 1), out_axes=(nnx.Carry, 1))
    def per_step(drop, xt):
        return drop, drop(xt)

    _, y = per_step(cls(0.5, rngs=nnx.Rngs(0)), x)
    assert not bool(jnp.all(y == y[:, :1]))

    # The module broadcast (in_axes=None): the same key every step -> shared mask.
    @nnx.scan(in_axes=(None, nnx.Carry, 1), out_axes=(nnx.Carry, 1))
    def shared(drop, c, xt):
        return c, drop(xt)

    _, y = shared(cls(0.5, rngs=nnx.Rngs(0)), 0, x)
    assert bool(jnp.all(y == y[:, :1]))

    # Explicit keys: one broadcast key (shared) or one key per step (varying).
    drop = cls(0.5)

    @nnx.scan(in_axes=(None, None, nnx.Carry, 1), out_axes=(nnx.Carry, 1))
    def with_key(drop, key, c, xt):
        return c, drop(xt, rngs=key)

    _, y = with_key(drop, KEY, 0, x)
    assert bool(jnp.all(y == y[:, :1]))

    @nnx.scan(in_axes=(None, 0, nnx.Carry, 1), out_axes=(nnx.Carry, 1))
    def with_keys(drop, key, c, xt):
        return c, drop(xt, rngs=key)

    _, y = with_keys(drop, jax.random.split(KEY, 8), 0, x)
    assert not bool(jnp.all(y == y[:, :1]))
