"""``jaxreg.dropout(activation=...)``: the fused activation + dropout equals the
composition, with less memory.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import FUSABLE
from jax.test_util import check_grads

import jaxreg


def _fused_inputs(dtype=jnp.float32, shape=(48, 37)):
    x = 2.0 * jax.random.normal(jax.random.key(11), shape)
    return x.astype(dtype), jax.random.key(12)


@pytest.mark.parametrize("inverted", [True, False])
@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_activation_equals_the_composition_exactly(name, inverted):
    x, key = _fused_inputs()
    f = FUSABLE[name]
    want = jaxreg.dropout(key, f(x), 0.3, inverted=inverted)
    for activation in (name, f):
        got = jaxreg.dropout(key, x, 0.3, inverted=inverted, activation=activation)
        np.testing.assert_array_equal(got, want)
    dims = jaxreg.dropout(key, x, 0.3, broadcast_dims=(0,), activation=name)
    np.testing.assert_array_equal(
        dims, jaxreg.dropout(key, f(x), 0.3, broadcast_dims=(0,))
    )


def test_fused_activation_accepts_the_flax_and_lax_spellings():
    import flax.linen as nn
    from flax import nnx

    x, key = _fused_inputs()
    want = jaxreg.dropout(key, jnp.tanh(x), 0.2)
    for f in (nn.tanh, nnx.tanh, jax.nn.tanh, jax.lax.tanh):
        np.testing.assert_array_equal(jaxreg.dropout(key, x, 0.2, activation=f), want)
    want = jaxreg.dropout(key, jax.nn.sigmoid(x), 0.2)
    got = jaxreg.dropout(key, x, 0.2, activation=jax.lax.logistic)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_fused_activation_low_precision_within_one_rounding(dtype):
    # f(x) is computed in float32 and rounded once; the composition rounds f(x)
    # to ``dtype`` first, so the two differ by at most one ulp of the output.
    x, key = _fused_inputs(dtype)
    got = jaxreg.dropout(key, x, 0.3, activation="tanh")
    want = jaxreg.dropout(key, jnp.tanh(x), 0.3)
    assert got.dtype == dtype
    ulp = np.asarray(jnp.finfo(dtype).eps, np.float32) * np.abs(
        np.asarray(want, np.float32)
    )
    np.testing.assert_array_less(
        np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32)),
        2 * ulp + 1e-30,
    )
    np.testing.assert_array_equal(got == 0, want == 0)


@pytest.mark.parametrize("inverted", [True, False])
@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_activation_gradients_equal_the_composition(name, inverted):
    x, key = _fused_inputs()
    f = FUSABLE[name]

    def loss(x, fused):
        if fused:
            h = jaxreg.dropout(key, x, 0.3, inverted=inverted, activation=name)
        else:
            h = jaxreg.dropout(key, f(x), 0.3, inverted=inverted)
        return jnp.sum(jnp.sin(h))

    g_fused = jax.grad(loss)(x, True)
    g_plain = jax.grad(loss)(x, False)
    np.testing.assert_allclose(g_fused, g_plain, rtol=1e-5, atol=1e-6)
    # Dropped elements get exactly no gradient.
    dropped = ~jaxreg.keep_mask(key, x.shape, 0.3)
    assert bool((g_fused[dropped] == 0).all())


@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_activation_gradients_at_exact_zeros(name):
    # Where f(x) == 0 an element's output is 0 whether it was kept or dropped.
    # tanh and elu have f'(0) = 1, so a kept zero must still pass its gradient
    # (the mask is needed); relu, sigmoid and softplus have f' = 0 there.
    x, key = _fused_inputs()
    x = x.at[::3].set(0.0)
    f = FUSABLE[name]

    def loss(x, fused):
        if fused:
            h = jaxreg.dropout(key, x, 0.3, activation=name)
        else:
            h = jaxreg.dropout(key, f(x), 0.3)
        return jnp.sum(jnp.sin(h) + h)

    g_fused = jax.grad(loss)(x, True)
    np.testing.assert_allclose(g_fused, jax.grad(loss)(x, False), rtol=1e-5, atol=1e-6)
    keep = jaxreg.keep_mask(key, x.shape, 0.3)
    zero_kept = keep & (x == 0)
    assert bool(zero_kept.any())
    if name in ("tanh", "elu"):
        assert bool((g_fused[zero_kept] != 0).all())
    assert bool((g_fused[~keep] == 0).all())


@pytest.mark.parametrize("name", sorted(FUSABLE))
def test_fused_activation_check_grads_second_order(name):
    # Finite differences need float64 (in float32 they fail for the unfused
    # composition too). Second order checks the derivative rule's own derivative.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (6, 7), jnp.float64)
        key = jax.random.key(5)
        check_grads(
            lambda x: jaxreg.dropout(key, x, 0.4, activation=name),
            (x,),
            order=2,
            modes=["fwd", "rev"],
        )


def test_fused_activation_keeps_only_its_output_for_the_backward_pass():
    x, key = _fused_inputs()

    def residuals(fn):
        out, vjp = jax.vjp(fn, x)
        return out, [leaf for leaf in jax.tree_util.tree_leaves(vjp)]

    out, leaves = residuals(lambda x: jaxreg.dropout(key, x, 0.3, activation="tanh"))
    big = [leaf for leaf in leaves if np.size(leaf) > 2]
    assert len(big) == 1, [np.shape(leaf) for leaf in leaves]
    np.testing.assert_array_equal(big[0], out)  # the output itself
    # Control: the unfused composition keeps x-sized residuals for tanh's
    # derivative that are not its output.
    out, leaves = residuals(lambda x: jaxreg.dropout(key, jnp.tanh(x), 0.3))
    big = [leaf for leaf in leaves if np.size(leaf) > 2]
    assert big and not any(np.array_equal(leaf, out) for leaf in big)


def test_fused_activation_compiled_memory_matches_no_dropout():
    # A 4-layer tanh MLP: with the fused form the step's temporary memory is that
    # of the net without dropout; applying tanh and dropout separately adds about
    # one activation buffer per layer.
    width, batch, depth = 128, 256, 4
    ws = [jnp.eye(width) * 0.5] * depth
    x, key = jnp.ones((batch, width)), jax.random.key(0)

    def loss(ws, x, mode):
        h = x
        for i, w in enumerate(ws):
            k = jax.random.fold_in(key, i)
            if mode == "none":
                h = jnp.tanh(h @ w)
            elif mode == "fused":
                h = jaxreg.dropout(k, h @ w, 0.1, activation="tanh")
            else:
                h = jaxreg.dropout(k, jnp.tanh(h @ w), 0.1)
        return jnp.sum(h)

    def temp(mode):
        c = jax.jit(jax.grad(functools.partial(loss, mode=mode))).lower(ws, x).compile()
        return c.memory_analysis().temp_size_in_bytes

    act = batch * width * 4
    none, fused, plain = temp("none"), temp("fused"), temp("plain")
    assert fused <= none + 1024, (none, fused)
    assert plain >= none + (depth - 1) * act, (none, plain)


def test_fused_activation_inference_and_edge_rates():
    x, key = _fused_inputs()
    p = jaxreg.keep_probability(0.3)
    relu = jax.nn.relu(x)
    np.testing.assert_array_equal(
        jaxreg.dropout(None, x, 0.3, deterministic=True, activation="relu"), relu
    )
    classic = jaxreg.dropout(
        None, x, 0.3, deterministic=True, inverted=False, activation="relu"
    )
    np.testing.assert_allclose(classic, relu * p, rtol=1e-6)
    np.testing.assert_array_equal(jaxreg.dropout(key, x, 0.0, activation="relu"), relu)
    np.testing.assert_array_equal(
        jaxreg.dropout(key, x, 1.0, activation="relu"), jnp.zeros_like(x)
    )
    # A traced rate: same mask as the static rate; rate 1 gives zeros with finite,
    # zero gradients.
    f = jax.jit(lambda x, r: jaxreg.dropout(key, x, r, activation="tanh"))
    static = jaxreg.dropout(key, x, 0.3, activation="tanh")
    np.testing.assert_allclose(f(x, 0.3), static, rtol=1e-6)
    np.testing.assert_array_equal(f(x, 0.3) == 0, static == 0)
    g = jax.grad(lambda x: jnp.sum(f(x, 1.0)))(x)
    assert bool((f(x, 1.0) == 0).all()) and bool((g == 0).all())


def test_fused_activation_jit_vmap_scan_remat():
    x, key = _fused_inputs()
    fn = lambda k, x: jaxreg.dropout(k, x, 0.5, activation="sigmoid")  # noqa: E731
    np.testing.assert_array_equal(jax.jit(fn)(key, x), fn(key, x))
    keys = jax.random.split(key, 3)
    xs = jnp.stack([x, -x, 2 * x])
    batched = jax.vmap(fn)(keys, xs)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], fn(keys[i], xs[i]))
    grad = jax.grad(lambda x, k: jnp.sum(fn(k, x)))
    gb = jax.vmap(grad)(xs, keys)
    for i in range(3):
        np.testing.assert_array_equal(gb[i], grad(xs[i], keys[i]))

    def body(h, k):
        return jax.checkpoint(fn)(k, h), None

    out, _ = jax.lax.scan(body, x, keys)
    want = x
    for k in keys:
        want = fn(k, want)
    np.testing.assert_array_equal(out, want)
    g_scan = jax.grad(lambda x: jnp.sum(jax.lax.scan(body, x, keys)[0]))(x)
    g_loop = jax.grad(
        lambda x: jnp.sum(functools.reduce(lambda h, k: fn(k, h), keys, x))
    )(x)
    np.testing.assert_allclose(g_scan, g_loop, rtol=1e-6)


def test_fused_activation_keeps_exactly_the_keep_mask():
    # relu of positive inputs is positive, so the non-zeros are the kept elements.
    x = jnp.abs(jax.random.normal(jax.random.key(3), (1000, 1000))) + 0.1
    key = jax.random.key(4)
    out = jaxreg.dropout(key, x, 0.1, activation="relu")
    np.testing.assert_array_equal(out != 0, jaxreg.keep_mask(key, x.shape, 0.1))


@pytest.mark.parametrize(
    "bad", ["gelu", "Tanh", jax.nn.gelu, jax.nn.silu, lambda x: x, [jnp.tanh], 3]
)
def test_fused_activation_rejects_what_it_cannot_fuse(bad):
    x, key = _fused_inputs()
    with pytest.raises(ValueError, match="`activation` must be None, one of"):
        jaxreg.dropout(key, x, 0.3, activation=bad)
    with pytest.raises(ValueError, match="derivative is a function of its output"):
        jaxreg.dropout(None, x, 0.3, deterministic=True, activation=bad)
