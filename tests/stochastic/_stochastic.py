"""Scaffolding shared by the dropout-family tests in this folder (no tests here).

Statistical bounds (stated once, used throughout these files): a count of ``n``
Bernoulli(p) draws must lie within ``4 * sqrt(n p (1 - p))`` of ``n p``; a sample
mean within 4 standard errors of its expectation (the standard error from the
known variance where the maths gives it, else the empirical one, by the central
limit theorem). Keys are fixed, so each test is deterministic for a given
generator; for a correct generator each bound fails with probability about 6e-5.
Tests check public semantics, never particular mask values.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from _helpers import fold_key

from jaxreg import stochastic as st

BASE = jax.random.key(77)
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def key_at(*path):
    return fold_key(BASE, *path)


def assert_mean(sample, expected, stderr, what="mean"):
    sample = float(sample)
    assert abs(sample - expected) < 4 * stderr, (
        f"{what} {sample:.6g}, expected {expected:.6g} +- 4*{stderr:.3g}"
    )


def data(shape, seed=0, dtype=jnp.float32):
    """Data bounded away from zero, so a zero output means 'dropped'.

    Made with NumPy: every JAX op on a new shape costs a compilation.
    """
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.5, 2.0, shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return jnp.asarray((mag * sign).astype(np.float32), dtype)


def ones_of(shape, dtype=np.float32):
    return jnp.asarray(np.ones(shape, dtype))


# Every function with the arguments of one typical call; "x" is its data input.
X2 = data((6, 10))
X4 = data((2, 7, 7, 3), 1)
CALLS = {
    "dropout": lambda k, x, r, **kw: st.dropout(k, x, r, **kw),
    "dropout_classic": lambda k, x, r, **kw: st.dropout(k, x, r, inverted=False, **kw),
    "spatial_dropout": lambda k, x, r, **kw: st.spatial_dropout(k, x, r, **kw),
    "gaussian_dropout": lambda k, x, r, **kw: st.gaussian_dropout(k, x, r, **kw),
    "gaussian_noise": lambda k, x, r, **kw: st.gaussian_noise(k, x, r, **kw),
    "alpha_dropout": lambda k, x, r, **kw: st.alpha_dropout(k, x, r, **kw),
    "drop_path": lambda k, x, r, **kw: st.drop_path(k, x, r, **kw),
    "drop_path_batch": lambda k, x, r, **kw: st.drop_path(k, x, r, mode="batch", **kw),
    "dropblock": lambda k, x, r, **kw: st.dropblock(k, x, r, block_size=3, **kw),
    "zoneout": lambda k, x, r, **kw: st.zoneout(k, 0.5 * x, x, r, **kw),
}
INPUT = {name: X4 if name in ("spatial_dropout", "dropblock") else X2 for name in CALLS}
# rate 1 is valid for all but the Gaussian ones (infinite noise at rate 1)
RATE_ONE_OK = sorted(set(CALLS) - {"gaussian_dropout", "gaussian_noise"})
RATE_CHECKED = sorted(set(CALLS) - {"gaussian_noise"})  # gaussian_noise: stddev


# Compiling dominates this file's run time, so each jitted variant of a function is
# built once and shared by the tests below (the rate is a traced argument, so one
# compilation serves every rate).
@functools.cache
def jit_call(name):
    """``CALLS[name]`` jitted with a traced rate: (key, x, rate) -> output."""
    return jax.jit(CALLS[name])


def loss_of(name, x, key, rate):
    return 0.5 * jnp.sum(CALLS[name](key, x, rate) ** 2)


@functools.cache
def jit_value_and_grad(name, checkpoint=False):
    """value_and_grad of a scalar loss of ``CALLS[name]``, w.r.t. x, jitted."""
    loss = functools.partial(loss_of, name)
    return jax.jit(jax.value_and_grad(jax.checkpoint(loss) if checkpoint else loss))


def bitwise_equal(a, b):
    """Assert equal dtype, shape and bits (for elementwise maths only)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(
        np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)
    )


def residual_sizes(f, x):
    """The sizes of the arrays the vjp of ``f`` at ``x`` keeps for the backward pass."""
    _, vjp = jax.vjp(f, x)
    return [np.size(leaf) for leaf in jax.tree_util.tree_leaves(vjp)]


def temp_bytes(loss, *args):
    """The compiled ``jit(grad(loss))``'s temporary memory, in bytes."""
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def residual_seed_words(f, x, key):
    """Check what ``jax.vjp(f, x)`` keeps: a few scalars and the key's seed words.

    Key-only functions keep the 2 uint32 seed words, the uint32 threshold, the
    bool "drop all" flag and one float scalar: 6 elements in all, none of them
    depending on x's size.
    """
    sizes = residual_sizes(f, x)
    assert max(sizes) <= 2 and sum(sizes) <= 6, sizes
    _, vjp = jax.vjp(f, x)
    words = [
        leaf
        for leaf in jax.tree_util.tree_leaves(vjp)
        if np.shape(leaf) == (2,) and leaf.dtype == jnp.uint32
    ]
    assert len(words) == 1
    np.testing.assert_array_equal(words[0], jax.random.bits(key, (2,), jnp.uint32))


def assert_memory_per_layer_is_that_of_a_given_mask(new, given, make_mask, net):
    """A key-only function costs per scanned layer what its given-mask twin does.

    ``net = (layer, weight_shape, x, key)`` describes a net of ``layer(w, h)``
    steps in a ``lax.scan``, differentiated under jit. ``new(k, h)`` is the
    key-only function, ``given(h, m)`` the same map given its mask
    ``m = make_mask(k)`` (passed in as a scanned argument, which
    ``temp_size_in_bytes`` does not count), and a third net computes the mask in
    each step and keeps it. Within one XLA program without loops a stored mask
    costs nothing extra (XLA fuses the hash into both passes), but a scan stacks
    each step's residuals, so there a stored mask costs its bytes per layer. The
    difference between depths 6 and 2 cancels the one-layer workspace: per extra
    layer the key-only net may need at most 64 bytes more than the given-mask
    net (seed words and scalars, with alignment), the stored-mask net at least
    the mask (one bool per element) more.
    """
    layer, weight, x, key = net
    fns = {
        "new": lambda k, h, m: new(k, h),
        "given": lambda k, h, m: given(h, m),
        "stored": lambda k, h, m: given(h, make_mask(k)),
    }

    def temp(f, depth):
        keys = jax.random.split(key, depth)
        masks = jax.vmap(make_mask)(keys)
        ws = jnp.full((depth,) + weight, 0.05, jnp.float32)

        def loss(ws, x, masks):
            def body(h, args):
                w, k, m = args
                return f(k, layer(w, h), m), None

            h, _ = jax.lax.scan(body, x, (ws, keys, masks))
            return jnp.sum(h**2)

        return temp_bytes(loss, ws, x, masks)

    shallow, deep = 2, 6
    per_layer = {
        label: (temp(f, deep) - temp(f, shallow)) / (deep - shallow)
        for label, f in fns.items()
    }
    assert per_layer["new"] <= per_layer["given"] + 64, per_layer
    assert per_layer["stored"] >= per_layer["given"] + x.size, per_layer


def assert_vmap_over_keys_equals_loop(f, keys, x):
    """``vmap(f)`` over keys and x (and its gradient) equals ``f`` per key, bit for
    bit (elementwise maths; the masks are regenerated under vmap)."""
    batched = jax.vmap(f)(keys, x)
    grad = jax.grad(lambda x, k: jnp.sum(f(k, x) * x))
    gb = jax.vmap(grad)(x, keys)
    for i in range(len(x)):
        bitwise_equal(batched[i], f(keys[i], x[i]))
        bitwise_equal(gb[i], grad(x[i], keys[i]))
