"""Tests for jaxreg.linen: parity with flax.linen, pure-function equality, training."""

import re

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import FUSED_CASES, FUSED_IDS, X_PRE, activation_sized, digits

import jaxreg
import jaxreg.linen as jl

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(42), (4, 6, 6, 3))


def module_key(module, key, variables=None, collection="dropout"):
    """The key a module draws with ``self.make_rng(collection)`` on its first call.

    Flax derives it from the rng passed to ``apply``, the module's scope path and a
    per-scope counter; calling ``make_rng`` from a method at the same (top-level)
    path reproduces the first draw.
    """
    return module.apply(
        variables or {},
        method=lambda m: m.make_rng(collection),
        rngs={collection: key},
    )


# ---------------------------------------------------------------------------------
# Parity with flax.linen.Dropout.
# ---------------------------------------------------------------------------------


def test_fields_and_call_signature_match_flax():
    import dataclasses
    import inspect

    ours = [f.name for f in dataclasses.fields(jl.Dropout)]
    theirs = [f.name for f in dataclasses.fields(nn.Dropout)]
    # Same fields in the same order; ours adds `inverted` and `activation` after
    # Flax's own fields (before the `parent` and `name` every linen module has).
    assert ours == theirs[:-2] + ["inverted", "activation"] + theirs[-2:]
    assert theirs[-2:] == ["parent", "name"]
    sig_ours = inspect.signature(jl.Dropout.__call__)
    sig_theirs = inspect.signature(nn.Dropout.__call__)
    assert list(sig_ours.parameters) == list(sig_theirs.parameters)
    assert jl.Dropout(0.3, (1,), True, "noise").broadcast_dims == (1,)
    positional = jl.Dropout(0.3, (1,), True, "noise", False, "tanh")
    assert (positional.inverted, positional.activation) == (False, "tanh")
    assert jl.Dropout(0.3).activation is None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("where", ["constructor", "call"])
def test_deterministic_path_identical_to_flax(dtype, where):
    x = X.astype(dtype)
    outs = []
    for cls in (nn.Dropout, jl.Dropout):
        if where == "constructor":
            y = cls(0.5, deterministic=True).apply({}, x)
        else:
            y = cls(0.5).apply({}, x, deterministic=True)
        outs.append(y)
    assert outs[0].dtype == outs[1].dtype == dtype
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(outs[0]))
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(x))


def test_rate_zero_and_one_match_flax_without_rng():
    # Neither module draws a key at rate 0 or 1: no rngs needed.
    for rate, expected in ((0.0, X), (1.0, jnp.zeros_like(X))):
        for cls in (nn.Dropout, jl.Dropout):
            y = cls(rate).apply({}, X, deterministic=False)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))

    def grad(cls):
        f = lambda x: cls(1.0, deterministic=False).apply({}, x).sum()  # noqa: E731
        return jax.grad(f)(X)

    g_ours, g_flax = grad(jl.Dropout), grad(nn.Dropout)
    assert bool(jnp.all(jnp.isfinite(g_ours)))
    np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g_flax))
    np.testing.assert_array_equal(np.asarray(g_ours), 0.0)


def _shared_axes(y):
    """Axes along which ``y`` is constant (where the mask is shared)."""
    return tuple(
        ax
        for ax in range(y.ndim)
        if bool(jnp.all(y == jnp.take(y, jnp.array([0]), ax)))
    )


@pytest.mark.parametrize("dims", [(), (0,), (1,), (0, 2), (-1,), (1, 2)])
def test_broadcast_dims_match_flax(dims):
    x = jnp.ones((8, 9, 10))
    shared = []
    for cls in (nn.Dropout, jl.Dropout):
        y = cls(0.5, broadcast_dims=dims).apply(
            {}, x, deterministic=False, rngs={"dropout": KEY}
        )
        assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}
        shared.append(_shared_axes(y))
    assert shared[0] == shared[1] == tuple(sorted(d % 3 for d in dims))


def test_missing_deterministic_errors_match_flax():
    for case in ("nowhere", "twice"):
        messages = []
        for cls in (nn.Dropout, jl.Dropout):
            module = cls(0.5, deterministic=None if case == "nowhere" else True)
            kwargs = {} if case == "nowhere" else {"deterministic": False}
            with pytest.raises(ValueError) as info:
                module.apply({}, X, rngs={"dropout": KEY}, **kwargs)
            messages.append(str(info.value))
        flax_msg, ours = messages
        assert flax_msg in ours  # everything Flax says ...
        assert len(ours) > len(flax_msg)  # ... plus how to fix it
    with pytest.raises(ValueError, match=r"deterministic=not train"):
        jl.Dropout(0.5).apply({}, X)


def test_missing_rng_errors_match_flax():
    for cls in (nn.Dropout, jl.Dropout):
        with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
            cls(0.5, deterministic=False).apply({}, X)
    with pytest.raises(
        flax.errors.InvalidRngError,
        match=re.escape("rngs={'dropout': jax.random.key(seed)}"),
    ):
        jl.Dropout(0.5, deterministic=False).apply({}, X)
    # The message names a custom collection and the deterministic alternative.
    with pytest.raises(
        flax.errors.InvalidRngError, match=r"'noise'.*deterministic=True"
    ):
        jl.Dropout(0.5, deterministic=False, rng_collection="noise").apply(
            {}, X, rngs={"dropout": KEY}
        )


def test_init_without_dropout_rng_works_like_flax():
    # Flax falls back to the "params" rng during init; so do we.
    class M(nn.Module):
        drop: type

        @nn.compact
        def __call__(self, x):
            return self.drop(0.5, deterministic=False)(nn.Dense(3)(x))

    for cls in (nn.Dropout, jl.Dropout):
        variables = M(cls).init(KEY, jnp.ones((2, 4)))
        assert variables["params"]["Dense_0"]["kernel"].shape == (4, 3)


def test_model_swapping_flax_dropout_for_ours_trains_unchanged():
    x, y, _, _ = digits(n_train=512)

    def make(dropout_cls):
        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x, train: bool):
                x = nn.relu(nn.Dense(64)(x))
                x = dropout_cls(0.3, deterministic=not train)(x)
                return nn.Dense(10)(x)

        return MLP()

    def train(model):
        params = model.init(KEY, x, train=False)["params"]
        tx = optax.adam(3e-3)
        opt = tx.init(params)

        def loss_fn(p, key):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, opt, key):
            loss, g = jax.value_and_grad(loss_fn)(p, key)
            u, opt = tx.update(g, opt, p)
            return optax.apply_updates(p, u), opt, loss

        losses = []
        for key in jax.random.split(jax.random.key(1), 60):
            params, opt, loss = step(params, opt, key)
            losses.append(float(loss))
        return params, losses

    init_flax = make(nn.Dropout).init(KEY, x, train=False)
    init_ours = make(jl.Dropout).init(KEY, x, train=False)
    # Same structure and the same initial parameters.
    assert jax.tree.structure(init_flax) == jax.tree.structure(init_ours)
    jax.tree.map(np.testing.assert_array_equal, init_flax, init_ours)
    _, losses_flax = train(make(nn.Dropout))
    _, losses_ours = train(make(jl.Dropout))
    assert losses_flax[0] == pytest.approx(losses_ours[0], rel=0.1)
    for losses in (losses_flax, losses_ours):
        assert np.mean(losses[-10:]) < 0.25 * losses[0]
    # Same dynamics up to the randomness of the masks.
    assert np.mean(losses_ours[-10:]) == pytest.approx(
        np.mean(losses_flax[-10:]), rel=0.5
    )


# ---------------------------------------------------------------------------------
# Each module equals its pure function for the same key.
# ---------------------------------------------------------------------------------

PURE_CASES = [
    (jl.Dropout(0.3), lambda k, x: jaxreg.dropout(k, x, 0.3)),
    (
        jl.Dropout(0.3, broadcast_dims=(1, 2)),
        lambda k, x: jaxreg.dropout(k, x, 0.3, broadcast_dims=(1, 2)),
    ),
    (
        jl.Dropout(0.3, inverted=False),
        lambda k, x: jaxreg.dropout(k, x, 0.3, inverted=False),
    ),
    (jl.SpatialDropout(0.4), lambda k, x: jaxreg.spatial_dropout(k, x, 0.4)),
    (
        jl.SpatialDropout(0.4, channel_axis=1),
        lambda k, x: jaxreg.spatial_dropout(k, x, 0.4, channel_axis=1),
    ),
    (jl.GaussianDropout(0.2), lambda k, x: jaxreg.gaussian_dropout(k, x, 0.2)),
    (jl.GaussianNoise(0.5), lambda k, x: jaxreg.gaussian_noise(k, x, 0.5)),
    (jl.AlphaDropout(0.1), lambda k, x: jaxreg.alpha_dropout(k, x, 0.1)),
    (jl.DropPath(0.5), lambda k, x: jaxreg.drop_path(k, x, 0.5)),
    (
        jl.DropPath(0.5, mode="batch"),
        lambda k, x: jaxreg.drop_path(k, x, 0.5, mode="batch"),
    ),
    (
        jl.DropBlock(0.2, block_size=3),
        lambda k, x: jaxreg.dropblock(k, x, 0.2, block_size=3),
    ),
]


@pytest.mark.parametrize("module, pure", PURE_CASES, ids=lambda c: type(c).__name__)
def test_module_equals_pure_function(module, pure):
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
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_det(module, X)))
    # 4) a custom collection is honoured
    custom = module.clone(rng_collection="noise")
    y = custom.apply({}, X, deterministic=False, rngs={"noise": key})
    np.testing.assert_array_equal(
        np.asarray(y), np.asarray(pure(module_key(custom, key, collection="noise"), X))
    )


def _det(module, x):
    if isinstance(module, jl.Dropout):
        return jaxreg.dropout(
            None, x, module.rate, deterministic=True, inverted=module.inverted
        )
    return x


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


# ---------------------------------------------------------------------------------
# Dropout(activation=...): the fused activation + dropout.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("activation, f", FUSED_CASES, ids=FUSED_IDS)
@pytest.mark.parametrize("rate, dims, inverted", [(0.3, (), True), (0.5, (1,), False)])
def test_dropout_activation_equals_fused_function_and_unfused_module(
    activation, f, rate, dims, inverted
):
    key = jax.random.key(21)
    fused = jl.Dropout(rate, dims, activation=activation, inverted=inverted)
    unfused = jl.Dropout(rate, dims, inverted=inverted)
    rngs = {"dropout": key}
    y = fused.apply({}, X, deterministic=False, rngs=rngs)
    assert y.dtype == X.dtype and y.shape == X.shape
    # The key the module draws with make_rng, fed to the fused pure function.
    expected = jaxreg.dropout(
        module_key(fused, key),
        X,
        rate,
        broadcast_dims=dims,
        inverted=inverted,
        activation=activation,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    # The same mask and values as activation-then-dropout (bit-exact in float32).
    y_unfused = unfused.apply({}, f(X), deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_unfused))
    # A key passed to the call is used as is.
    y = fused.apply({}, X, deterministic=False, rng=key)
    np.testing.assert_array_equal(
        np.asarray(y), np.asarray(unfused.apply({}, f(X), deterministic=False, rng=key))
    )
    assert not bool(jnp.all(y == f(X)))  # something was dropped


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
def test_dropout_activation_deterministic_rate_zero_and_one(activation, f):
    fx = f(X)
    for where in ("constructor", "call"):
        if where == "constructor":
            y = jl.Dropout(0.4, deterministic=True, activation=activation).apply({}, X)
        else:
            y = jl.Dropout(0.4, activation=activation).apply({}, X, deterministic=True)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(fx))
    # Classic dropout scales at inference, like the unfused module on f(x).
    classic = jl.Dropout(0.4, deterministic=True, inverted=False, activation=activation)
    y = classic.apply({}, X)
    np.testing.assert_array_equal(
        np.asarray(y),
        np.asarray(jl.Dropout(0.4, deterministic=True, inverted=False).apply({}, fx)),
    )
    assert not bool(jnp.all(y == fx))
    # Rate 0 returns f(x) and rate 1 zeros without drawing a key (no rngs given).
    y0 = jl.Dropout(0.0, activation=activation).apply({}, X, deterministic=False)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(fx))
    y1 = jl.Dropout(1.0, activation=activation).apply({}, X, deterministic=False)
    np.testing.assert_array_equal(np.asarray(y1), 0.0)


@pytest.mark.parametrize("activation, f", FUSED_CASES[:5], ids=FUSED_IDS[:5])
@pytest.mark.parametrize("inverted", [True, False])
def test_dropout_activation_gradients_equal_unfused(activation, f, inverted):
    key = jax.random.key(5)
    w = jax.random.normal(jax.random.key(6), X_PRE.shape)
    fused = jl.Dropout(
        0.3, deterministic=False, inverted=inverted, activation=activation
    )
    unfused = jl.Dropout(0.3, deterministic=False, inverted=inverted)

    def loss(apply):
        return jax.grad(lambda x: jnp.sum(apply(x) * w))(X_PRE)

    g = loss(lambda x: fused.apply({}, x, rng=key))
    g_unfused = loss(lambda x: unfused.apply({}, f(x), rng=key))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_unfused), rtol=1e-6)
    assert bool(jnp.any(g == 0)) and bool(jnp.any(g != 0))  # dropped and kept
    # The module differentiates exactly as the pure function it calls.
    g_pure = loss(
        lambda x: jaxreg.dropout(key, x, 0.3, inverted=inverted, activation=activation)
    )
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_pure))


def test_dropout_activation_keeps_only_its_output_for_the_backward_pass():
    key = jax.random.key(8)
    x = jax.random.normal(jax.random.key(9), (32, 64))
    fused = jl.Dropout(0.3, deterministic=False, activation="tanh")
    unfused = jl.Dropout(0.3, deterministic=False)
    y, vjp = jax.vjp(lambda x: fused.apply({}, x, rng=key), x)
    kept = activation_sized(vjp, x)
    # The only activation-sized residual is the output (which the next layer
    # keeps anyway); neither tanh(x) nor x nor a mask is stored.
    assert len(kept) == 1
    np.testing.assert_array_equal(np.asarray(kept[0]), np.asarray(y))
    # tanh then dropout keeps two activation-sized arrays besides its output,
    # one of them tanh(x).
    y_unfused, vjp_unfused = jax.vjp(
        lambda x: unfused.apply({}, jnp.tanh(x), rng=key), x
    )
    kept = activation_sized(vjp_unfused, x)
    assert len(kept) == 2
    assert not any(bool(jnp.array_equal(leaf, y_unfused)) for leaf in kept)
    assert any(bool(jnp.array_equal(leaf, jnp.tanh(x))) for leaf in kept)


class _Layer(nn.Module):
    fused: bool

    @nn.compact
    def __call__(self, x, train):
        h = nn.Dense(5)(x)
        if self.fused:
            return jl.Dropout(0.5, deterministic=not train, activation=nn.tanh)(h)
        return jl.Dropout(0.5, deterministic=not train)(nn.tanh(h))


def test_dropout_activation_under_jit_in_a_model():
    x = jax.random.uniform(jax.random.key(2), (8, 3), minval=-1.0, maxval=1.0)
    variables = _Layer(True).init(KEY, x, train=False)
    # Same parameter tree as the unfused model: checkpoints are interchangeable.
    assert jax.tree.structure(variables) == jax.tree.structure(
        _Layer(False).init(KEY, x, train=False)
    )
    rngs = {"dropout": jax.random.key(4)}

    def run(fused, params, train):
        return _Layer(fused).apply(params, x, train=train, rngs=rngs)

    for train in (True, False):
        eager = run(True, variables, train)
        jitted = jax.jit(run, static_argnums=(0, 2))(True, variables, train)
        np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
        np.testing.assert_array_equal(
            np.asarray(eager), np.asarray(run(False, variables, train))
        )

    def grads(fused):
        loss = lambda p: jnp.sum(run(fused, p, True) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(variables)

    pairs = zip(
        jax.tree.leaves(grads(True)), jax.tree.leaves(grads(False)), strict=True
    )
    # Parameter gradients are sums over the batch of per-element derivatives that
    # agree to about one float32 rounding (checked per element above); where the
    # sum cancels, that rounding is relative to the leaf's scale, not its value.
    for a, b in pairs:
        scale = float(np.max(np.abs(np.asarray(b))))
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6 * scale
        )


@pytest.mark.parametrize(
    "bad", ["gelu", "Tanh", nn.gelu, nn.swish, lambda x: x, 3, ["tanh"]]
)
def test_dropout_bad_activation_raises_at_construction(bad):
    with pytest.raises(ValueError, match=r"Dropout: `activation` must be None, one of"):
        jl.Dropout(0.5, activation=bad)


# ---------------------------------------------------------------------------------
# DropConnectDense.
# ---------------------------------------------------------------------------------


def test_dropconnect_dense_is_a_drop_in_for_dense():
    x = jax.random.normal(jax.random.key(1), (5, 7))
    dense = nn.Dense(4)
    ours = jl.DropConnectDense(4, rate=0.5)
    v_dense = dense.init(KEY, x)
    v_ours = ours.init(KEY, x, deterministic=True)
    # Same parameter tree and values (same default initializers), so checkpoints swap.
    assert jax.tree.structure(v_dense) == jax.tree.structure(v_ours)
    jax.tree.map(np.testing.assert_array_equal, v_dense, v_ours)
    # The "mean" inference path is exactly the dense layer.
    np.testing.assert_array_equal(
        np.asarray(ours.apply(v_dense, x, deterministic=True)),
        np.asarray(dense.apply(v_dense, x)),
    )
    # Dense fields are honoured.
    v = jl.DropConnectDense(4, use_bias=False, param_dtype=jnp.float16).init(
        KEY, x, deterministic=True
    )
    assert list(v["params"]) == ["kernel"]
    assert v["params"]["kernel"].dtype == jnp.float16
    y = jl.DropConnectDense(4, dtype=jnp.bfloat16).apply(v_dense, x, deterministic=True)
    assert y.dtype == jnp.bfloat16
    y = jl.DropConnectDense(4, precision=jax.lax.Precision.HIGHEST).apply(
        v_dense, x, deterministic=True
    )
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(dense.apply(v_dense, x)), rtol=1e-6
    )


@pytest.mark.parametrize("per_example", [False, True])
def test_dropconnect_dense_training_equals_pure_function(per_example):
    x = jax.random.normal(jax.random.key(1), (6, 5))
    layer = jl.DropConnectDense(
        3, rate=0.4, per_example=per_example, activation=nn.relu
    )
    v = layer.init(KEY, x, deterministic=True)
    w, b = v["params"]["kernel"], v["params"]["bias"]
    key = jax.random.key(9)
    y = layer.apply(v, x, deterministic=False, rngs={"dropout": key})
    expected = nn.relu(
        jaxreg.dropconnect_dense(
            module_key(layer, key, v), x, w, 0.4, bias=b, per_example=per_example
        )
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


def test_dropconnect_dense_inference_modes():
    x = jax.random.normal(jax.random.key(1), (6, 5))
    key = jax.random.key(11)
    base = jl.DropConnectDense(3, rate=0.4, activation=nn.relu)
    v = base.init(KEY, x, deterministic=True)
    w, b = v["params"]["kernel"], v["params"]["bias"]
    # mean: activation of the mean pre-activation, no key needed.
    np.testing.assert_array_equal(
        np.asarray(base.apply(v, x, deterministic=True)), np.asarray(nn.relu(x @ w + b))
    )
    # moments: the paper's Gaussian sampling, with the module's key.
    moments = base.clone(inference="moments", num_samples=64)
    y = moments.apply(v, x, deterministic=True, rngs={"dropout": key})
    expected = jaxreg.dropconnect_inference(
        module_key(moments, key, v), x, w, 0.4, nn.relu, bias=b, num_samples=64
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        moments.apply(v, x, deterministic=True)
    # mc: a sampled mask at inference.
    mc = base.clone(inference="mc")
    y = mc.apply(v, x, deterministic=True, rngs={"dropout": key})
    expected = nn.relu(
        jaxreg.dropconnect_dense(module_key(mc, key, v), x, w, 0.4, bias=b)
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


# ---------------------------------------------------------------------------------
# Scan: variational (shared) and per-step masks; ZoneoutCell.
# ---------------------------------------------------------------------------------


class _Step(nn.Module):
    @nn.compact
    def __call__(self, carry, xt):
        return carry, jl.Dropout(0.5, deterministic=False)(xt)


@pytest.mark.parametrize("split", [False, True])
def test_dropout_in_nn_scan_shared_or_per_step(split):
    scan = nn.scan(
        _Step,
        variable_broadcast="params",
        split_rngs={"params": False, "dropout": split},
        in_axes=1,
        out_axes=1,
    )
    x = jnp.ones((3, 8, 16))  # (batch, time, features)
    _, y = scan().apply({}, None, x, rngs={"dropout": KEY})
    same_over_time = bool(jnp.all(y == y[:, :1]))
    assert same_over_time is (not split)
    # A mask shared over time is also what broadcast_dims over the time axis gives.
    if not split:
        assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}


class _Echo(nn.RNNCellBase):
    """A cell whose new state is its input: zoneout masks become visible."""

    @nn.compact
    def __call__(self, carry, x):
        return x, x

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        return jnp.zeros(input_shape)

    @property
    def num_feature_axes(self):
        return 1


@pytest.mark.parametrize("split", [False, True])
def test_zoneout_cell_in_nn_rnn_shared_or_per_step(split):
    rnn = nn.RNN(
        jl.ZoneoutCell(_Echo(), 0.5, deterministic=False),
        split_rngs={"params": False, "dropout": split},
    )
    t = jnp.arange(1.0, 9.0)  # distinct inputs per step
    x = jnp.broadcast_to(t[None, :, None], (2, 8, 32))
    y = rnn.apply({}, x, rngs={"dropout": KEY})
    updated = y == x  # unit took the new value at this step
    per_step = [bool(jnp.all(updated[:, i] == updated[:, 1])) for i in range(1, 8)]
    assert all(per_step) is (not split)
    # Where not updated, the unit holds its previous value (zoneout, not dropout).
    prev = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    assert bool(jnp.all(jnp.where(updated, True, y == prev)))


def test_zoneout_cell_equals_pure_function_per_carry_leaf():
    cell = nn.LSTMCell(4)
    zc = jl.ZoneoutCell(cell, (0.5, 0.05), deterministic=False)
    x = jax.random.normal(jax.random.key(2), (3, 5))
    carry = cell.initialize_carry(KEY, x.shape)
    carry = jax.tree.map(lambda c: c + 0.3, carry)  # non-zero previous state
    v = zc.init(KEY, carry, x)
    key = jax.random.key(4)
    (c, h), out = zc.apply(v, carry, x, rngs={"dropout": key})
    (c_new, h_new), _ = cell.apply({"params": v["params"]["cell"]}, carry, x)
    k_c, k_h = jax.random.split(module_key(zc, key, v), 2)
    np.testing.assert_array_equal(
        np.asarray(c), np.asarray(jaxreg.zoneout(k_c, carry[0], c_new, 0.5))
    )
    np.testing.assert_array_equal(
        np.asarray(h), np.asarray(jaxreg.zoneout(k_h, carry[1], h_new, 0.05))
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(h))  # output = zoned h
    # Inference: the expectation, no key.
    zd = zc.clone(deterministic=True)
    (c_det, h_det), out_det = zd.apply(v, carry, x)
    np.testing.assert_allclose(
        np.asarray(c_det), np.asarray(0.5 * c_new + 0.5 * carry[0]), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(out_det), np.asarray(h_det))
    # Works inside nn.RNN with an LSTM.
    rnn = nn.RNN(zc, split_rngs={"params": False, "dropout": True})
    seq = jnp.ones((2, 6, 5))
    params = rnn.init(KEY, seq)
    assert rnn.apply(params, seq, rngs={"dropout": key}).shape == (2, 6, 4)


def test_zoneout_cell_in_nn_rnn_without_split_rngs_says_what_to_do():
    rnn = nn.RNN(jl.ZoneoutCell(_Echo(), 0.5, deterministic=False))
    x = jnp.ones((2, 3, 4))
    with pytest.raises(
        flax.errors.InvalidRngError,
        match=r"split_rngs=\{'params': False, 'dropout': True\}",
    ):
        rnn.apply({}, x, rngs={"dropout": KEY})


def test_zoneout_cell_bad_rate_structure():
    cell = nn.LSTMCell(4)
    x = jnp.ones((3, 5))
    carry = cell.initialize_carry(KEY, x.shape)
    zc = jl.ZoneoutCell(cell, (0.1, 0.2, 0.3), deterministic=False)
    with pytest.raises(ValueError, match="structure of the cell's carry"):
        zc.init({"params": KEY, "dropout": KEY}, carry, x)
    with pytest.raises(ValueError, match=r"rate=1\.5"):
        jl.ZoneoutCell(cell, (0.1, 1.5))


# ---------------------------------------------------------------------------------
# ActivityRegularization.
# ---------------------------------------------------------------------------------


def test_activity_regularization_sows_keras_penalty():
    x = jax.random.normal(jax.random.key(3), (4, 5))
    layer = jl.ActivityRegularization(l1=0.01, l2=0.1)
    y, state = layer.apply({}, x, mutable=["losses"])
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    (penalty,) = jax.tree.leaves(state["losses"])
    expected = 0.01 * jnp.abs(x).sum() + 0.1 * (x**2).sum()
    np.testing.assert_allclose(float(penalty), float(expected), rtol=1e-6)
    # Not mutable: nothing recorded, output unchanged.
    y2 = layer.apply({}, x)
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(x))
    # Gradient flows into the activations: d/dx [l2 * sum x^2] = 2 * l2 * x.
    g = jax.grad(
        lambda x: sum(
            jax.tree.leaves(
                jl.ActivityRegularization(l2=0.1).apply({}, x, mutable=["losses"])[1]
            )
        )
    )(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(0.2 * x), rtol=1e-6)
    # Custom collection; zero factors sow an exact zero.
    _, state = jl.ActivityRegularization(collection="aux").apply({}, x, mutable=True)
    assert float(jax.tree.leaves(state["aux"])[0]) == 0.0


# ---------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------

RATE_MODULES = [
    jl.Dropout,
    jl.SpatialDropout,
    jl.GaussianDropout,
    jl.AlphaDropout,
    jl.DropPath,
    jl.DropBlock,
]


@pytest.mark.parametrize("cls", RATE_MODULES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_out_of_range_at_construction(cls, rate):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: `rate`.*rate={rate}"):
        cls(rate)


def test_other_bad_construction_arguments():
    with pytest.raises(
        ValueError, match=r"GaussianDropout: `rate`.*\[0, 1\).*rate=1\.0"
    ):
        jl.GaussianDropout(1.0)
    with pytest.raises(ValueError, match=r"`stddev` must be >= 0; got stddev=-1"):
        jl.GaussianNoise(-1.0)
    with pytest.raises(ValueError, match=r"`rate`.*rate=2\.0"):
        jl.DropConnectDense(3, rate=2.0)
    with pytest.raises(ValueError, match=r"`inference` must be one of.*'median'"):
        jl.DropConnectDense(3, inference="median")
    with pytest.raises(ValueError, match=r"`num_samples` must be an int >= 1"):
        jl.DropConnectDense(3, num_samples=0)
    with pytest.raises(ValueError, match=r"`mode` must be 'row' or 'batch'"):
        jl.DropPath(0.1, mode="col")
    with pytest.raises(ValueError, match=r"`block_size` must be an int >= 1"):
        jl.DropBlock(0.1, block_size=0)
    with pytest.raises(ValueError, match=r"`l1` must be >= 0; got l1=-0\.1"):
        jl.ActivityRegularization(l1=-0.1)
    with pytest.raises(TypeError, match=r"`rate` must be a real scalar"):
        jl.Dropout("0.5")


def test_wrong_rng_type_and_flag_type():
    with pytest.raises(TypeError, match=r"Dropout: `rng` must be a JAX PRNG key"):
        jl.Dropout(0.5, deterministic=False).apply({}, X, rng=3)
    with pytest.raises(TypeError, match=r"`deterministic` must be a Python bool"):
        jl.Dropout(0.5).apply({}, X, deterministic=jnp.array(True), rng=KEY)


def test_missing_collection_named_for_every_module():
    x = jnp.ones((2, 4, 4, 3))
    for module in (
        jl.SpatialDropout(0.5),
        jl.GaussianNoise(0.5),
        jl.DropBlock(0.5, block_size=2),
    ):
        with pytest.raises(flax.errors.InvalidRngError, match=r"split_rngs"):
            module.apply({}, x, deterministic=False)


# ---------------------------------------------------------------------------------
# End to end: an MLP with jaxreg modules and a jaxreg optax chain on digits.
# ---------------------------------------------------------------------------------


def test_mlp_with_jaxreg_modules_and_chain_learns_digits():
    x_tr, y_tr, x_te, y_te = digits()

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            det = not train
            x = jl.GaussianNoise(0.1, deterministic=det)(x)
            x = jl.DropConnectDense(
                256, rate=0.2, activation=nn.relu, deterministic=det
            )(x)
            x = jl.ActivityRegularization(l2=1e-5)(x)
            x = jl.Dropout(0.3, deterministic=det)(x)
            return nn.Dense(10)(x)

    model = MLP()
    params = model.init(KEY, x_tr[:1], train=False)["params"]
    tx = optax.chain(
        jaxreg.add_l2(1e-4),
        optax.adam(2e-3),
        jaxreg.max_norm_constraint(3.0, mask=jaxreg.mask_by_ndim),
    )
    opt = tx.init(params)

    def loss_fn(p, xb, yb, key):
        logits, state = model.apply(
            {"params": p}, xb, train=True, rngs={"dropout": key}, mutable=["losses"]
        )
        data = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return data + sum(jax.tree.leaves(state["losses"]))

    @jax.jit
    def epoch(p, opt, key):
        perm_key, key = jax.random.split(key)
        n = (x_tr.shape[0] // 64) * 64
        idx = jax.random.permutation(perm_key, x_tr.shape[0])[:n].reshape(-1, 64)

        def step(carry, batch):
            p, opt, key = carry
            key, sub = jax.random.split(key)
            g = jax.grad(loss_fn)(p, x_tr[batch], y_tr[batch], sub)
            u, opt = tx.update(g, opt, p)
            return (optax.apply_updates(p, u), opt, key), None

        (p, opt, _), _ = jax.lax.scan(step, (p, opt, key), idx)
        return p, opt

    for key in jax.random.split(jax.random.key(1), 30):
        params, opt = epoch(params, opt, key)
    logits = model.apply({"params": params}, x_te, train=False)
    accuracy = float((logits.argmax(-1) == y_te).mean())
    assert accuracy >= 0.95, accuracy
    # The max-norm constraint holds on every kernel column.
    for kernel in (params["DropConnectDense_0"]["kernel"], params["Dense_0"]["kernel"]):
        assert float(jnp.linalg.norm(kernel, axis=0).max()) <= 3.0 + 1e-5


def test_gradients_through_modules_check_grads():
    from jax.test_util import check_grads

    key = jax.random.key(6)
    x = jax.random.normal(jax.random.key(1), (3, 5))
    for module in (jl.Dropout(0.3), jl.GaussianDropout(0.2), jl.AlphaDropout(0.1)):
        f = lambda x, m=module: m.apply({}, x, deterministic=False, rng=key)  # noqa: E731
        check_grads(f, (x,), order=2, modes=["fwd", "rev"])
    layer = jl.DropConnectDense(4, rate=0.3, activation=jnp.tanh, per_example=True)
    v = layer.init(KEY, x, deterministic=True)

    def g(kernel, x):
        params = {"params": {"kernel": kernel, "bias": v["params"]["bias"]}}
        return layer.apply(params, x, deterministic=False, rng=key)

    check_grads(g, (v["params"]["kernel"], x), order=1, modes=["fwd", "rev"])
