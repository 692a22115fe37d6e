"""Tests for jaxreg.nnx: parity with flax.nnx, transforms, state, training."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import FUSED_CASES, FUSED_IDS, X_PRE, activation_sized, digits
from flax import nnx

import jaxreg
import jaxreg.nnx as jn

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(42), (4, 6, 6, 3))


def first_key(seed, collection="dropout"):
    """The key a module built with ``rngs=nnx.Rngs(**{collection: seed})`` draws first.

    The module forks ``rngs[collection]`` at construction (as ``nnx.Dropout``
    does) and each call draws ``fold_in(stream.key, stream.count)``.
    """
    return nnx.Rngs(**{collection: seed})[collection].fork()()


def flat_paths(node, *filters):
    return sorted(path for path, _ in nnx.to_flat_state(nnx.state(node, *filters)))


# ---------------------------------------------------------------------------------
# Parity with flax.nnx.Dropout.
# ---------------------------------------------------------------------------------


def test_signature_attributes_and_state_match_flax():
    ours = inspect.signature(jn.Dropout.__init__).parameters
    theirs = inspect.signature(nnx.Dropout.__init__).parameters
    # Ours adds `inverted` and `activation` after Flax's own arguments.
    assert list(ours) == list(theirs) + ["inverted", "activation"]
    assert ours["activation"].default is None
    for name in theirs:
        if name != "rngs":
            assert ours[name].default == theirs[name].default, name
    assert list(inspect.signature(jn.Dropout.__call__).parameters) == list(
        inspect.signature(nnx.Dropout.__call__).parameters
    )
    a = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=1))
    b = jn.Dropout(0.3, rngs=nnx.Rngs(dropout=1))
    for name in ("rate", "broadcast_dims", "deterministic", "rng_collection"):
        assert getattr(a, name) == getattr(b, name)
    # Same state tree and the same forked stream: checkpoints are interchangeable.
    assert flat_paths(a) == flat_paths(b) == [("rngs", "count"), ("rngs", "key")]
    ka, kb = jax.random.key_data(a.rngs.key[...]), jax.random.key_data(b.rngs.key[...])
    np.testing.assert_array_equal(np.asarray(ka), np.asarray(kb))
    assert flat_paths(nnx.Dropout(0.3)) == flat_paths(jn.Dropout(0.3)) == []


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("how", ["constructor", "call", "eval", "view"])
def test_deterministic_path_identical_to_flax(dtype, how):
    x = X.astype(dtype)
    outs = []
    for cls in (nnx.Dropout, jn.Dropout):
        if how == "constructor":
            y = cls(0.5, deterministic=True)(x)
        elif how == "call":
            y = cls(0.5, rngs=nnx.Rngs(0))(x, deterministic=True)
        elif how == "eval":
            m = cls(0.5, rngs=nnx.Rngs(0))
            m.eval()
            y = m(x)
        else:
            y = nnx.view(cls(0.5, rngs=nnx.Rngs(0)), deterministic=True)(x)
        outs.append(y)
    assert outs[0].dtype == outs[1].dtype == dtype
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(outs[0]))
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(x))


def test_rate_zero_and_one_match_flax_without_rngs():
    for rate, expected in ((0.0, X), (1.0, jnp.zeros_like(X))):
        for cls in (nnx.Dropout, jn.Dropout):
            y = cls(rate)(X)  # no rngs anywhere: no key is drawn
            np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    grads = [
        jax.grad(lambda x, c=cls: c(1.0)(x).sum())(X)
        for cls in (nnx.Dropout, jn.Dropout)
    ]
    assert bool(jnp.all(jnp.isfinite(grads[1])))
    np.testing.assert_array_equal(np.asarray(grads[1]), np.asarray(grads[0]))


def _shared_axes(y):
    return tuple(
        ax
        for ax in range(y.ndim)
        if bool(jnp.all(y == jnp.take(y, jnp.array([0]), ax)))
    )


@pytest.mark.parametrize("dims", [(), (0,), (1,), (0, 2), (-1,)])
def test_broadcast_dims_match_flax(dims):
    x = jnp.ones((8, 9, 10))
    shared = [
        _shared_axes(cls(0.5, broadcast_dims=dims, rngs=nnx.Rngs(0))(x))
        for cls in (nnx.Dropout, jn.Dropout)
    ]
    assert shared[0] == shared[1] == tuple(sorted(d % 3 for d in dims))


def test_missing_deterministic_and_missing_rngs_errors_match_flax():
    for cls in (nnx.Dropout, jn.Dropout):
        with pytest.raises(ValueError, match="deterministic"):
            cls(0.5, deterministic=None, rngs=nnx.Rngs(0))(X)
        with pytest.raises(
            ValueError, match=r"`deterministic` is False, but no `rngs`"
        ):
            cls(0.5)(X)
    # Ours lists every way to fix it.
    with pytest.raises(ValueError) as info:
        jn.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(0))(X)
    for hint in (
        "deterministic=False",
        "deterministic=True",
        "model.eval()",
        "nnx.view",
    ):
        assert hint in str(info.value)
    with pytest.raises(
        ValueError, match=r"rngs=nnx\.Rngs\(dropout=seed\).*model\.eval"
    ):
        jn.Dropout(0.5)(X)


def test_wrong_rngs_type_raises_type_error_like_flax():
    for cls in (nnx.Dropout, jn.Dropout):
        with pytest.raises(TypeError, match="rngs"):
            cls(0.5, rngs=3)
        with pytest.raises(TypeError, match="rngs"):
            cls(0.5)(X, rngs="key")
    with pytest.raises(
        TypeError, match=r"For an integer seed use `rngs=nnx\.Rngs\(seed\)`"
    ):
        jn.Dropout(0.5, rngs=3)
    with pytest.raises(TypeError, match=r"`rngs` must be a JAX PRNG key"):
        jn.Dropout(0.5, rngs=jnp.zeros(3))  # an array that is not a key
    # A Rngs without the stream (and without 'default'): ValueError naming it.
    with pytest.raises(
        ValueError, match=r"no 'dropout' stream.*nnx\.Rngs\(dropout=seed\)"
    ):
        jn.Dropout(0.5, rngs=nnx.Rngs(params=0))


def test_model_swapping_flax_dropout_for_ours_trains_unchanged():
    x, y, _, _ = digits(n_train=512)

    class MLP(nnx.Module):
        def __init__(self, dropout_cls, rngs):
            self.l1 = nnx.Linear(64, 64, rngs=rngs)
            self.drop = dropout_cls(0.3, rngs=rngs)
            self.l2 = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.drop(nnx.relu(self.l1(x))))

    def train(model):
        opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt):
            def loss_fn(model):
                logits = model(x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, g = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, g)
            return loss

        return [float(step(model, opt)) for _ in range(60)]

    flax_model = MLP(nnx.Dropout, nnx.Rngs(0))
    ours = MLP(jn.Dropout, nnx.Rngs(0))
    # Same state tree (parameters and rng streams) with the same initial values.
    assert flat_paths(flax_model) == flat_paths(ours)
    np.testing.assert_array_equal(
        np.asarray(nnx.state(flax_model, nnx.Param)["l1"]["kernel"][...]),
        np.asarray(nnx.state(ours, nnx.Param)["l1"]["kernel"][...]),
    )
    losses_flax, losses_ours = train(flax_model), train(ours)
    assert losses_flax[0] == pytest.approx(losses_ours[0], rel=0.1)
    for losses in (losses_flax, losses_ours):
        assert np.mean(losses[-10:]) < 0.25 * losses[0]
    assert np.mean(losses_ours[-10:]) == pytest.approx(
        np.mean(losses_flax[-10:]), rel=0.5
    )
    assert flat_paths(ours) == flat_paths(flax_model)  # structure unchanged by training
    assert int(ours.drop.rngs.count[...]) == 60  # one key per step


# ---------------------------------------------------------------------------------
# Each module equals its pure function for the same key.
# ---------------------------------------------------------------------------------

PURE_CASES = [
    (lambda r: jn.Dropout(0.3, rngs=r), lambda k, x: jaxreg.dropout(k, x, 0.3)),
    (
        lambda r: jn.Dropout(0.3, broadcast_dims=(1, 2), rngs=r),
        lambda k, x: jaxreg.dropout(k, x, 0.3, broadcast_dims=(1, 2)),
    ),
    (
        lambda r: jn.SpatialDropout(0.4, rngs=r),
        lambda k, x: jaxreg.spatial_dropout(k, x, 0.4),
    ),
    (
        lambda r: jn.GaussianDropout(0.2, rngs=r),
        lambda k, x: jaxreg.gaussian_dropout(k, x, 0.2),
    ),
    (
        lambda r: jn.GaussianNoise(0.5, rngs=r),
        lambda k, x: jaxreg.gaussian_noise(k, x, 0.5),
    ),
    (
        lambda r: jn.AlphaDropout(0.1, rngs=r),
        lambda k, x: jaxreg.alpha_dropout(k, x, 0.1),
    ),
    (
        lambda r: jn.DropPath(0.5, mode="batch", rngs=r),
        lambda k, x: jaxreg.drop_path(k, x, 0.5, mode="batch"),
    ),
    (lambda r: jn.DropPath(0.5, rngs=r), lambda k, x: jaxreg.drop_path(k, x, 0.5)),
    (
        lambda r: jn.DropBlock(0.2, block_size=3, rngs=r),
        lambda k, x: jaxreg.dropblock(k, x, 0.2, block_size=3),
    ),
]
IDS = [
    "Dropout",
    "Dropout-bcast",
    "Spatial",
    "GaussianDropout",
    "GaussianNoise",
    "Alpha",
    "DropPath-batch",
    "DropPath",
    "DropBlock",
]


@pytest.mark.parametrize("make, pure", PURE_CASES, ids=IDS)
def test_module_equals_pure_function(make, pure):
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
    # 6) eval(): the inference path (the input itself for these modules).
    module.eval()
    np.testing.assert_array_equal(np.asarray(module(X)), np.asarray(X))


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


# ---------------------------------------------------------------------------------
# train() / eval() / nnx.view, and the NNX transforms.
# ---------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------
# Scan over time: a mask shared across steps (variational) or one per step.
# ---------------------------------------------------------------------------------


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


class _Echo(nnx.RNNCellBase):
    """A cell whose new state is its input: zoneout masks become visible."""

    def __init__(self, features):
        self.features = features

    def __call__(self, carry, x):
        return x, x

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        return jnp.zeros(input_shape)

    @property
    def num_feature_axes(self):
        return 1


@pytest.mark.parametrize("broadcast", [False, True])
def test_zoneout_cell_in_nnx_rnn_per_step_or_shared(broadcast):
    # nnx.RNN's broadcast_rngs filters streams by tag: the stream forked from
    # nnx.Rngs(dropout=...) is tagged "dropout".
    cell = jn.ZoneoutCell(_Echo(32), 0.5, rngs=nnx.Rngs(dropout=0))
    rnn = nnx.RNN(cell, broadcast_rngs="dropout" if broadcast else None)
    t = jnp.arange(1.0, 9.0)
    x = jnp.broadcast_to(t[None, :, None], (2, 8, 32))
    y = rnn(x)
    updated = y == x
    same = [bool(jnp.all(updated[:, i] == updated[:, 1])) for i in range(1, 8)]
    assert all(same) is broadcast
    prev = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    assert bool(jnp.all(jnp.where(updated, True, y == prev)))


def test_zoneout_cell_equals_pure_function_per_carry_leaf():
    rngs = nnx.Rngs(0)
    cell = nnx.LSTMCell(5, 4, rngs=rngs)
    zc = jn.ZoneoutCell(cell, (0.5, 0.05), rngs=nnx.Rngs(dropout=3))
    x = jax.random.normal(jax.random.key(2), (3, 5))
    carry = jax.tree.map(lambda c: c + 0.3, cell.initialize_carry((3, 5), rngs))
    (c_new, h_new), _ = cell(carry, x)
    (c, h), out = zc(carry, x)
    k_c, k_h = jax.random.split(first_key(3), 2)
    np.testing.assert_array_equal(
        np.asarray(c), np.asarray(jaxreg.zoneout(k_c, carry[0], c_new, 0.5))
    )
    np.testing.assert_array_equal(
        np.asarray(h), np.asarray(jaxreg.zoneout(k_h, carry[1], h_new, 0.05))
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(h))
    zc.eval()
    (c_det, h_det), out_det = zc(carry, x)
    np.testing.assert_allclose(
        np.asarray(c_det), np.asarray(0.5 * c_new + 0.5 * carry[0]), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(out_det), np.asarray(h_det))
    with pytest.raises(ValueError, match="structure of the cell's carry"):
        jn.ZoneoutCell(cell, (0.1, 0.2, 0.3), rngs=rngs)(carry, x)
    with pytest.raises(TypeError, match="`cell` must be an NNX RNN cell"):
        jn.ZoneoutCell(lambda c, x: (c, x), 0.1)


# ---------------------------------------------------------------------------------
# Dropout(activation=...): the fused activation + dropout.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("activation, f", FUSED_CASES, ids=FUSED_IDS)
@pytest.mark.parametrize("rate, dims, inverted", [(0.3, (), True), (0.5, (1,), False)])
def test_dropout_activation_equals_fused_function_and_unfused_module(
    activation, f, rate, dims, inverted
):
    def make(**kwargs):
        return jn.Dropout(
            rate,
            broadcast_dims=dims,
            inverted=inverted,
            rngs=nnx.Rngs(dropout=21),
            **kwargs,
        )

    fused, unfused = make(activation=activation), make()
    y = fused(X)
    assert y.dtype == X.dtype and y.shape == X.shape
    # The key the module draws first, fed to the fused pure function.
    expected = jaxreg.dropout(
        first_key(21),
        X,
        rate,
        broadcast_dims=dims,
        inverted=inverted,
        activation=activation,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    # The same mask and values as activation-then-dropout (bit-exact in float32),
    # also on the second call (both streams advanced once).
    for _ in range(2):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(unfused(f(X))))
        y = fused(X)
    # A key passed to the call is used as is.
    key = jax.random.key(3)
    y = fused(X, rngs=key)
    np.testing.assert_array_equal(
        np.asarray(y),
        np.asarray(
            jaxreg.dropout(
                key,
                X,
                rate,
                broadcast_dims=dims,
                inverted=inverted,
                activation=activation,
            )
        ),
    )
    assert not bool(jnp.all(y == f(X)))  # something was dropped


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
@pytest.mark.parametrize("how", ["constructor", "call", "eval", "view"])
def test_dropout_activation_deterministic_rate_zero_and_one(activation, f, how):
    fx = f(X)
    layer = jn.Dropout(0.4, activation=activation, rngs=nnx.Rngs(0))
    if how == "constructor":
        y = jn.Dropout(0.4, deterministic=True, activation=activation)(X)
    elif how == "call":
        y = layer(X, deterministic=True)
    elif how == "eval":
        layer.eval()
        y = layer(X)
    else:
        y = nnx.view(layer, deterministic=True)(X)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(fx))
    # Classic dropout scales at inference, like the unfused module on f(x).
    classic = jn.Dropout(0.4, deterministic=True, inverted=False, activation=activation)
    y = classic(X)
    np.testing.assert_array_equal(
        np.asarray(y),
        np.asarray(jn.Dropout(0.4, deterministic=True, inverted=False)(fx)),
    )
    assert not bool(jnp.all(y == fx))
    # Rate 0 returns f(x) and rate 1 zeros without drawing a key (no rngs given).
    y0 = jn.Dropout(0.0, activation=activation)(X)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(fx))
    np.testing.assert_array_equal(
        np.asarray(jn.Dropout(1.0, activation=activation)(X)), 0.0
    )


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
@pytest.mark.parametrize("inverted", [True, False])
def test_dropout_activation_gradients_equal_unfused(activation, f, inverted):
    key = jax.random.key(5)
    w = jax.random.normal(jax.random.key(6), X_PRE.shape)
    fused = jn.Dropout(0.3, inverted=inverted, activation=activation)
    unfused = jn.Dropout(0.3, inverted=inverted)

    def grad(apply):
        return jax.grad(lambda x: jnp.sum(apply(x) * w))(X_PRE)

    g = grad(lambda x: fused(x, rngs=key))
    g_unfused = grad(lambda x: unfused(f(x), rngs=key))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_unfused), rtol=1e-6)
    assert bool(jnp.any(g == 0)) and bool(jnp.any(g != 0))  # dropped and kept
    # The module differentiates exactly as the pure function it calls.
    g_pure = grad(
        lambda x: jaxreg.dropout(key, x, 0.3, inverted=inverted, activation=activation)
    )
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_pure))


def test_dropout_activation_keeps_only_its_output_for_the_backward_pass():
    key = jax.random.key(8)
    x = jax.random.normal(jax.random.key(9), (32, 64))
    fused = jn.Dropout(0.3, activation="tanh")
    unfused = jn.Dropout(0.3)
    y, vjp = jax.vjp(lambda x: fused(x, rngs=key), x)
    kept = activation_sized(vjp, x)
    # The only activation-sized residual is the output (which the next layer
    # keeps anyway); neither tanh(x) nor x nor a mask is stored.
    assert len(kept) == 1
    np.testing.assert_array_equal(np.asarray(kept[0]), np.asarray(y))
    # tanh then dropout keeps two activation-sized arrays besides its output,
    # one of them tanh(x).
    y_unfused, vjp_unfused = jax.vjp(lambda x: unfused(jnp.tanh(x), rngs=key), x)
    kept = activation_sized(vjp_unfused, x)
    assert len(kept) == 2
    assert not any(bool(jnp.array_equal(leaf, y_unfused)) for leaf in kept)
    assert any(bool(jnp.array_equal(leaf, jnp.tanh(x))) for leaf in kept)


class _Layer(nnx.Module):
    """``Linear -> tanh -> Dropout``, fused or not."""

    def __init__(self, fused, rngs):
        self.linear = nnx.Linear(3, 5, rngs=rngs)
        self.fused = fused
        if fused:
            self.drop = jn.Dropout(0.5, activation=nnx.tanh, rngs=rngs)
        else:
            self.drop = jn.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        h = self.linear(x)
        return self.drop(h if self.fused else nnx.tanh(h))


def test_dropout_activation_under_nnx_jit_and_nnx_grad():
    x = jax.random.uniform(jax.random.key(2), (8, 3), minval=-1.0, maxval=1.0)
    a, b, c = (_Layer(fused, nnx.Rngs(0)) for fused in (True, True, False))
    # Same state paths as the unfused model: checkpoints are interchangeable.
    assert flat_paths(a) == flat_paths(c)
    f = nnx.jit(lambda m, x: m(x))
    for _ in range(2):  # two steps: different masks, identical in all three
        y = f(a, x)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(b(x)))
        np.testing.assert_array_equal(np.asarray(y), np.asarray(c(x)))
    assert int(a.drop.rngs.count[...]) == int(b.drop.rngs.count[...]) == 2
    for model in (a, c):
        model.eval()
    np.testing.assert_array_equal(np.asarray(f(a, x)), np.asarray(c(x)))
    np.testing.assert_array_equal(
        np.asarray(f(a, x)), np.asarray(nnx.tanh(a.linear(x)))
    )
    for model in (a, c):
        model.train()

    def loss(m):
        return jnp.sum(m(x) ** 2)

    g_fused = nnx.jit(nnx.grad(loss))(a)
    g_unfused = nnx.grad(loss)(c)
    leaves = jax.tree.leaves(g_fused), jax.tree.leaves(g_unfused)
    assert len(leaves[0]) == len(leaves[1]) == 2  # kernel and bias
    for u, v in zip(*leaves, strict=True):
        assert bool(jnp.any(u != 0))
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6)


@pytest.mark.parametrize(
    "bad", ["gelu", "Tanh", nnx.gelu, nnx.swish, lambda x: x, 3, ["tanh"]]
)
def test_dropout_bad_activation_raises_at_construction(bad):
    with pytest.raises(ValueError, match=r"Dropout: `activation` must be None, one of"):
        jn.Dropout(0.5, activation=bad)


# ---------------------------------------------------------------------------------
# DropConnectDense and ActivityRegularization.
# ---------------------------------------------------------------------------------


def test_dropconnect_dense_is_a_drop_in_for_linear():
    x = jax.random.normal(jax.random.key(1), (5, 7))
    linear = nnx.Linear(7, 4, rngs=nnx.Rngs(0))
    ours = jn.DropConnectDense(7, 4, rate=0.5, rngs=nnx.Rngs(0))
    assert flat_paths(linear, nnx.Param) == flat_paths(ours, nnx.Param)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(
            np.asarray(getattr(linear, name)[...]), np.asarray(getattr(ours, name)[...])
        )
    assert flat_paths(ours) == [
        ("bias",),
        ("kernel",),
        ("rngs", "count"),
        ("rngs", "key"),
    ]
    ours.eval()
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(linear(x)))
    no_bias = jn.DropConnectDense(
        7, 4, use_bias=False, param_dtype=jnp.float16, rngs=KEY
    )
    assert flat_paths(no_bias, nnx.Param) == [("kernel",)]
    assert no_bias.kernel[...].dtype == jnp.float16


@pytest.mark.parametrize("per_example", [False, True])
def test_dropconnect_dense_equals_pure_function(per_example):
    x = jax.random.normal(jax.random.key(1), (6, 5))
    layer = jn.DropConnectDense(
        5, 3, rate=0.4, per_example=per_example, activation=nnx.relu, rngs=nnx.Rngs(0)
    )
    w, b = layer.kernel[...], layer.bias[...]
    key = jax.random.key(9)
    # Training and inference="mc" both apply one sampled mask.
    sampled = np.asarray(
        nnx.relu(
            jaxreg.dropconnect_dense(key, x, w, 0.4, bias=b, per_example=per_example)
        )
    )
    np.testing.assert_array_equal(np.asarray(layer(x, rngs=key)), sampled)
    layer.eval()
    layer.inference = "moments"
    layer.num_samples = 32
    np.testing.assert_array_equal(
        np.asarray(layer(x, rngs=key)),
        np.asarray(
            jaxreg.dropconnect_inference(
                key, x, w, 0.4, nnx.relu, bias=b, num_samples=32
            )
        ),
    )
    layer.inference = "mc"
    np.testing.assert_array_equal(np.asarray(layer(x, rngs=key)), sampled)


def test_activity_regularization_captured_penalty():
    x = jax.random.normal(jax.random.key(3), (4, 5))
    layer = jn.ActivityRegularization(l1=0.01, l2=0.1)
    y, losses = nnx.capture(layer, jn.Loss)(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    expected = 0.01 * jnp.abs(x).sum() + 0.1 * (x**2).sum()
    np.testing.assert_allclose(
        float(sum(jax.tree.leaves(losses))), float(expected), rtol=1e-6
    )
    # Outside capture nothing is recorded and the state never changes structure.
    assert layer(x) is x or bool(jnp.all(layer(x) == x))
    assert flat_paths(layer) == []
    # Gradient into the activations: d/dx [l2 * sum x^2] = 2 * l2 * x.
    g = jax.grad(
        lambda x: sum(
            jax.tree.leaves(
                nnx.capture(jn.ActivityRegularization(l2=0.1), jn.Loss)(x)[1]
            )
        )
    )(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(0.2 * x), rtol=1e-6)
    with pytest.raises(ValueError, match=r"`l2` must be >= 0; got l2=-1"):
        jn.ActivityRegularization(l2=-1.0)
    with pytest.raises(
        TypeError, match="`variable_type` must be an `nnx.Variable` subclass"
    ):
        jn.ActivityRegularization(variable_type=dict)


# ---------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [
        jn.Dropout,
        jn.SpatialDropout,
        jn.GaussianDropout,
        jn.AlphaDropout,
        jn.DropPath,
        jn.DropBlock,
    ],
    ids=lambda c: c.__name__,
)
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_out_of_range_at_construction(cls, rate):
    with pytest.raises(
        ValueError, match=rf"jaxreg\.nnx\.{cls.__name__}: `rate`.*rate={rate}"
    ):
        cls(rate)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\).*rate=1\.0"):
        jn.GaussianDropout(1.0)
    with pytest.raises(ValueError, match=r"`stddev` must be >= 0"):
        jn.GaussianNoise(-0.5)
    with pytest.raises(ValueError, match=r"`mode` must be 'row' or 'batch'"):
        jn.DropPath(0.1, mode="col")
    with pytest.raises(ValueError, match=r"`block_size` must be an int >= 1"):
        jn.DropBlock(0.1, block_size=0)
    with pytest.raises(ValueError, match=r"`rate`.*rate=-1"):
        jn.DropConnectDense(3, 2, rate=-1.0, rngs=KEY)
    with pytest.raises(ValueError, match=r"`inference` must be one of"):
        jn.DropConnectDense(3, 2, inference="median", rngs=KEY)
    with pytest.raises(TypeError, match=r"`rngs` is required"):
        jn.DropConnectDense(3, 2, rngs=None)
    with pytest.raises(TypeError, match=r"`rngs` must be an `nnx.Rngs`"):
        jn.DropConnectDense(3, 2, rngs=0)
    with pytest.raises(ValueError, match=r"ZoneoutCell: `rate`.*rate=1\.5"):
        jn.ZoneoutCell(nnx.SimpleCell(2, 2, rngs=nnx.Rngs(0)), (1.5,))
    with pytest.raises(TypeError, match=r"`deterministic` must be a bool or None"):
        jn.Dropout(0.1, deterministic="yes")
    with pytest.raises(TypeError, match=r"`deterministic` must be a Python bool"):
        jn.Dropout(0.1, rngs=KEY)(X, deterministic=jnp.array(True))
    with pytest.raises(ValueError, match=r"batch of keys.*jax\.vmap"):
        jn.Dropout(0.1)(X, rngs=jax.random.split(KEY, 2))


# ---------------------------------------------------------------------------------
# End to end: an NNX MLP with jaxreg modules and a jaxreg optax chain on digits.
# ---------------------------------------------------------------------------------


def test_mlp_with_jaxreg_modules_and_chain_learns_digits():
    x_tr, y_tr, x_te, y_te = digits()

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.noise = jn.GaussianNoise(0.1, rngs=rngs)
            self.hidden = jn.DropConnectDense(
                64, 256, rate=0.2, activation=nnx.relu, rngs=rngs
            )
            self.act_reg = jn.ActivityRegularization(l2=1e-5)
            self.drop = jn.Dropout(0.3, rngs=rngs)
            self.out = nnx.Linear(256, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(self.drop(self.act_reg(self.hidden(self.noise(x)))))

    model = MLP(nnx.Rngs(0))
    tx = optax.chain(
        jaxreg.add_l2(1e-4),
        optax.adam(2e-3),
        jaxreg.max_norm_constraint(3.0, mask=jaxreg.mask_by_ndim),
    )
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    paths_before = flat_paths(model)

    @nnx.jit
    def train_step(model, opt, xb, yb):
        def loss_fn(model):
            logits, losses = nnx.capture(model, jn.Loss)(xb)
            data = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return data + sum(jax.tree.leaves(losses))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    n = (x_tr.shape[0] // 64) * 64
    model.train()
    for _ in range(30):
        for idx in rng.permutation(x_tr.shape[0])[:n].reshape(-1, 64):
            train_step(model, opt, x_tr[idx], y_tr[idx])
    model.eval()
    accuracy = float((model(x_te).argmax(-1) == y_te).mean())
    assert accuracy >= 0.95, accuracy
    assert flat_paths(model) == paths_before  # checkpoint structure is stable
    for kernel in (model.hidden.kernel[...], model.out.kernel[...]):
        assert float(jnp.linalg.norm(kernel, axis=0).max()) <= 3.0 + 1e-5


def test_gradients_through_modules_check_grads():
    from jax.test_util import check_grads

    key = jax.random.key(6)
    x = jax.random.normal(jax.random.key(1), (3, 5))
    for module in (jn.Dropout(0.3), jn.GaussianDropout(0.2), jn.AlphaDropout(0.1)):
        check_grads(
            lambda x, m=module: m(x, rngs=key), (x,), order=2, modes=["fwd", "rev"]
        )
    layer = jn.DropConnectDense(5, 4, rate=0.3, activation=jnp.tanh, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def g(params, x):
        return nnx.merge(graphdef, params, rest)(x, rngs=key)

    check_grads(g, (params, x), order=1, modes=["fwd", "rev"])
