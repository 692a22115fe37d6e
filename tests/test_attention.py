"""jaxreg.attention: Flax parity, dropout statistics, transforms, memory, errors.

Tolerances: where jaxreg runs the same operations as Flax (the explicit path:
scaled query, einsum, bias, mask, softmax, einsum) results are compared bit for
bit. The fused inference path (:func:`jax.nn.dot_product_attention`) scales the
logits instead of the query and sums in another order; its outputs are convex
combinations of the values, so two float32 evaluations differ by a few float32
roundings of ``max|v|`` per term: ``ATOL = 64 * eps * max|v|`` (eps = 2**-23)
covers the 5 to 16 term sums used here. Products that are evaluated in another
order (jit vs eager, vmap, scan) use the same bound.
"""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import F32_EPS, assert_binomial, run_on_8_cpu_devices
from flax import nnx
from flax.nnx.nn import attention as nnx_attention
from jax.test_util import check_grads

import jaxreg
from jaxreg.attention import (
    attention_dropout,
    dot_product_attention,
    dot_product_attention_weights,
)

RATE = 0.3


def _qkv(shape_q, shape_k=None, shape_v=None, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    shape_k = shape_k or shape_q
    shape_v = shape_v or shape_k
    return tuple(
        jax.random.normal(k, s).astype(dtype)
        for k, s in zip(keys, (shape_q, shape_k, shape_v), strict=True)
    )


def _atol(v):
    return 64 * F32_EPS * float(jnp.max(jnp.abs(v)))


def _close(a, b, v):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=_atol(v))


# --- parity with Flax ---------------------------------------------------------

Q5 = (2, 3, 5, 4, 8)  # two batch axes, 5 queries, 4 heads, depth 8
K5 = (2, 3, 7, 4, 8)
BIAS = (4, 5, 7)
MASK = (2, 1, 1, 5, 7)
EXTRAS = ["plain", "bias+mask"]


def _extras(name, seed=3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    out = {}
    if "bias" in name:
        out["bias"] = jax.random.normal(k1, BIAS)
    if "mask" in name:
        out["mask"] = jax.random.bernoulli(k2, 0.7, MASK)
    return out


@pytest.mark.parametrize("extra", EXTRAS)
def test_inference_matches_linen(extra):
    q, k, v = _qkv(Q5, K5)
    kw = _extras(extra)
    want = nn.dot_product_attention(q, k, v, **kw)
    # The fused path (jax.nn.dot_product_attention): equal up to rounding.
    _close(dot_product_attention(q, k, v, **kw), want, v)
    _close(dot_product_attention(q, k, v, dropout_rate=0.0, **kw), want, v)
    # The explicit path runs Flax's operations: bit for bit.
    explicit = dot_product_attention(q, k, v, precision="default", **kw)
    np.testing.assert_array_equal(explicit, want)
    np.testing.assert_array_equal(
        dot_product_attention_weights(q, k, **kw),
        nn.dot_product_attention_weights(q, k, **kw),
    )
    # Inference with a rate and a key: no dropout.
    det = dot_product_attention(
        q,
        k,
        v,
        dropout_rng=jax.random.key(1),
        dropout_rate=0.5,
        deterministic=True,
        **kw,
    )
    _close(det, want, v)


@pytest.mark.parametrize(("causal", "kv_heads"), [(False, 4), (True, 2), (True, 1)])
def test_inference_matches_nnx_with_gqa_and_causal(causal, kv_heads):
    q, k, v = _qkv((2, 6, 4, 8), (2, 6, kv_heads, 8))
    mask = jax.random.bernoulli(jax.random.key(5), 0.8, (2, 1, 6, 6))
    for kw in ({}, {"mask": mask}):
        want = nnx.dot_product_attention(q, k, v, is_causal=causal, **kw)
        _close(dot_product_attention(q, k, v, is_causal=causal, **kw), want, v)
        np.testing.assert_array_equal(
            dot_product_attention_weights(q, k, is_causal=causal, **kw),
            nnx_attention.dot_product_attention_weights(q, k, is_causal=causal, **kw),
        )


def test_dtype_promotion_and_force_fp32_softmax_match_linen():
    q, k, v = _qkv((2, 5, 2, 8), dtype=jnp.bfloat16)
    k32 = k.astype(jnp.float32)
    assert dot_product_attention(q, k32, v).dtype == jnp.float32
    out = dot_product_attention(q, k32, v, dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    for force in (False, True):
        want = nn.dot_product_attention(q, k, v, force_fp32_for_softmax=force)
        got = dot_product_attention(
            q, k, v, force_fp32_for_softmax=force, precision="default"
        )
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_linen_module_swap_same_params_outputs_and_sown_weights():
    x = jax.random.normal(jax.random.key(0), (2, 6, 16))
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=4, dropout_rate=0.1)
    ours = nn.MultiHeadDotProductAttention(
        num_heads=4, dropout_rate=0.1, attention_fn=dot_product_attention
    )
    p0 = flax_mha.init(jax.random.key(1), x, deterministic=True)
    p1 = ours.init(jax.random.key(1), x, deterministic=True)
    assert jax.tree.structure(p0) == jax.tree.structure(p1)
    jax.tree.map(np.testing.assert_array_equal, p0, p1)
    y0 = flax_mha.apply(p0, x, deterministic=True)
    _close(ours.apply(p1, x, deterministic=True), y0, y0)
    # Training: sown weights are the weights before dropout (Flax's sown ones).
    rngs = {"dropout": jax.random.key(2)}
    _, s0 = flax_mha.apply(
        p0, x, deterministic=False, rngs=rngs, sow_weights=True, mutable="intermediates"
    )
    y1, s1 = ours.apply(
        p1, x, deterministic=False, rngs=rngs, sow_weights=True, mutable="intermediates"
    )
    np.testing.assert_array_equal(
        s1["intermediates"]["attention_weights"][0],
        s0["intermediates"]["attention_weights"][0],
    )
    assert y1.shape == x.shape and bool(jnp.all(jnp.isfinite(y1)))


# Flax 0.12 deprecates Module.sow outside nnx.capture, for its own attention too.
@pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)':DeprecationWarning")
def test_nnx_module_swap_same_state_outputs_and_sown_weights():
    x = jax.random.normal(jax.random.key(0), (2, 6, 16))
    kw = dict(dropout_rate=0.1, decode=False)
    flax_mha = nnx.MultiHeadAttention(4, 16, 16, rngs=nnx.Rngs(0), **kw)
    ours = nnx.MultiHeadAttention(
        4, 16, 16, attention_fn=dot_product_attention, rngs=nnx.Rngs(0), **kw
    )
    s0, s1 = nnx.state(flax_mha, nnx.Param), nnx.state(ours, nnx.Param)
    assert jax.tree.structure(s0) == jax.tree.structure(s1)
    jax.tree.map(np.testing.assert_array_equal, s0, s1)
    y0 = flax_mha(x, deterministic=True)
    _close(ours(x, deterministic=True), y0, y0)
    flax_mha(x, deterministic=False, rngs=nnx.Rngs(dropout=3), sow_weights=True)
    ours(x, deterministic=False, rngs=nnx.Rngs(dropout=3), sow_weights=True)
    w0 = nnx.state(flax_mha, nnx.Intermediate)["attention_weights"].get_value()[0]
    w1 = nnx.state(ours, nnx.Intermediate)["attention_weights"].get_value()[0]
    np.testing.assert_array_equal(w1, w0)


# --- dropout statistics ---------------------------------------------------------


def test_keep_rate_within_4_sigma_and_scale():
    q, k, _ = _qkv((4, 64, 8, 8))
    w = dot_product_attention_weights(q, k)
    d = dot_product_attention_weights(
        q, k, dropout_rng=jax.random.key(7), dropout_rate=RATE, broadcast_dropout=False
    )
    kept = d != 0  # softmax weights are positive: a zero is a dropped weight
    p = jaxreg.keep_probability(RATE)
    assert_binomial(int(kept.sum()), kept.size, p)
    np.testing.assert_allclose(d[kept], (w / p)[kept], rtol=2 * F32_EPS)


@pytest.mark.parametrize("broadcast", [True, False])
def test_training_output_is_linear_in_the_keep_mask_so_expectation_is_exact(broadcast):
    # The output equals sum_k mask * p_k / keep * v_k with the sampler's mask, so
    # E[output] = sum_k keep * p_k / keep * v_k: the inference output (times
    # keep * (1/keep), which is 1 to within one rounding).
    q, k, v = _qkv((2, 5, 4, 8), (2, 9, 4, 8))
    key = jax.random.key(11)
    w = dot_product_attention_weights(q, k)
    dims = (0, 1) if broadcast else ()
    mask = jaxreg.keep_mask(key, w.shape, RATE, broadcast_dims=dims)
    p = jaxreg.keep_probability(RATE)
    out = dot_product_attention(
        q, k, v, dropout_rng=key, dropout_rate=RATE, broadcast_dropout=broadcast
    )
    expected = jnp.einsum("bhqk,bkhd->bqhd", jnp.where(mask, w / p, 0), v)
    _close(out, expected, v / p)
    assert abs(p * (1 / p) - 1) <= F32_EPS
    # Exact expectation over the mask: E[mask] = keep elementwise.
    mean = jnp.einsum("bhqk,bkhd->bqhd", jnp.broadcast_to(p, w.shape) * w / p, v)
    _close(mean, dot_product_attention(q, k, v), v)
    if broadcast:
        return
    # And a Monte Carlo check: the mean over 2000 keys is within 4 standard errors.
    keys = jax.random.split(jax.random.key(12), 2000)
    draws = jax.jit(
        jax.vmap(
            lambda kk: dot_product_attention(
                q, k, v, dropout_rng=kk, dropout_rate=RATE, broadcast_dropout=broadcast
            )
        )
    )(keys)
    err = jnp.abs(draws.mean(0) - dot_product_attention(q, k, v))
    se = draws.std(0) / math.sqrt(len(keys))
    assert float(jnp.max(err / (se + 1e-12))) < 5.5  # 320 outputs, 4-sigma each + slack


def test_same_key_same_output_other_key_other_mask():
    q, k, v = _qkv((2, 5, 4, 8))
    f = lambda key: dot_product_attention(  # noqa: E731
        q, k, v, dropout_rng=key, dropout_rate=RATE, broadcast_dropout=False
    )
    np.testing.assert_array_equal(f(jax.random.key(1)), f(jax.random.key(1)))
    np.testing.assert_array_equal(f(jax.random.PRNGKey(1)), f(jax.random.PRNGKey(1)))
    assert not np.array_equal(f(jax.random.key(1)), f(jax.random.key(2)))


def test_broadcast_dropout_shares_the_mask_over_batch_and_heads():
    q, k, _ = _qkv((3, 16, 4, 8), (3, 16, 2, 8))  # GQA: 4 query heads, 2 kv heads
    key = jax.random.key(4)
    d = dot_product_attention_weights(q, k, dropout_rng=key, dropout_rate=0.5)
    zeros = np.asarray(d == 0)
    assert zeros.any() and not zeros.all()
    assert (zeros == zeros[:1, :1]).all()
    d = dot_product_attention_weights(
        q, k, dropout_rng=key, dropout_rate=0.5, broadcast_dropout=False
    )
    zeros = np.asarray(d == 0)
    assert not (zeros == zeros[:1, :1]).all()


def test_rate_one_gives_zeros_with_finite_gradients_and_traced_rate_works():
    q, k, v = _qkv((2, 5, 2, 4))
    key = jax.random.key(0)
    f = lambda q, r: dot_product_attention(  # noqa: E731
        q, k, v, dropout_rng=key, dropout_rate=r, broadcast_dropout=False
    )
    np.testing.assert_array_equal(f(q, 1.0), jnp.zeros_like(q))
    g = jax.jit(jax.grad(lambda q: jnp.sum(f(q, 1.0) ** 2)))(q)
    assert bool(jnp.all(g == 0))
    traced = jax.jit(f)(q, 0.3)
    _close(traced, f(q, 0.3), v / 0.7)
    np.testing.assert_array_equal(jax.jit(f)(q, 1.0), jnp.zeros_like(q))
    _close(jax.jit(f)(q, 0.0), f(q, 0.0), v)


# --- autodiff and transformations -----------------------------------------------


def test_check_grads():
    # Grouped-query attention (2 query heads share 1 key/value head) and a bias:
    # every branch of the derivative rule.
    q, k, v = _qkv((2, 4, 2, 3), (2, 5, 1, 3))
    bias = jax.random.normal(jax.random.key(9), (2, 4, 5))
    key = jax.random.key(5)
    f = lambda q, k, v, b: dot_product_attention(  # noqa: E731
        q, k, v, b, dropout_rng=key, dropout_rate=RATE, broadcast_dropout=False
    )
    check_grads(jax.jit(f), (q, k, v, bias), order=2, modes=["fwd", "rev"])
    w = dot_product_attention_weights(q, k)
    check_grads(jax.jit(lambda w: attention_dropout(key, w, RATE)), (w,), order=2)


def test_gradients_equal_the_stored_mask_reference():
    q, k, v = _qkv((2, 6, 2, 4))
    key = jax.random.key(8)
    w_shape = (2, 2, 6, 6)
    mask = jaxreg.keep_mask(key, w_shape, RATE)
    p = jaxreg.keep_probability(RATE)

    def ours(q, k, v):
        out = dot_product_attention(
            q, k, v, dropout_rng=key, dropout_rate=RATE, broadcast_dropout=False
        )
        return jnp.sum(jnp.sin(out))

    def reference(q, k, v):
        w = nn.dot_product_attention_weights(q, k)
        out = jnp.einsum("bhqk,bkhd->bqhd", jnp.where(mask, w / p, 0), v)
        return jnp.sum(jnp.sin(out))

    for a, b in zip(
        jax.jit(jax.grad(ours, (0, 1, 2)))(q, k, v),
        jax.jit(jax.grad(reference, (0, 1, 2)))(q, k, v),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_jit_vmap_scan_and_remat():
    q, k, v = _qkv((3, 5, 2, 4))
    key = jax.random.key(6)

    def f(key, q):
        return dot_product_attention(
            q, k, v, dropout_rng=key, dropout_rate=RATE, broadcast_dropout=False
        )

    eager = f(key, q)
    _close(jax.jit(f)(key, q), eager, v / 0.7)
    keys = jax.random.split(key, 3)
    batched = jax.vmap(f, in_axes=(0, None))(keys, q)
    for i in range(3):
        _close(batched[i], f(keys[i], q), v / 0.7)

    # Scan over 3 layers (stacked projections), with remat, against a loop.
    ws = jax.random.normal(jax.random.key(1), (3, 4, 4)) * 0.5
    layer_keys = jax.random.split(jax.random.key(2), 3)

    def layer(h, wk):
        w, kk = wk
        hq = h @ w
        out = dot_product_attention(
            hq, hq, hq, dropout_rng=kk, dropout_rate=RATE, broadcast_dropout=False
        )
        return h + out, None

    def scanned(ws, h):
        return jnp.sum(jax.lax.scan(jax.checkpoint(layer), h, (ws, layer_keys))[0])

    def looped(ws, h):
        for i in range(3):
            h, _ = layer(h, (ws[i], layer_keys[i]))
        return jnp.sum(h)

    np.testing.assert_allclose(scanned(ws, q), looped(ws, q), rtol=1e-5)
    gs, gl = jax.jit(jax.grad(scanned))(ws, q), jax.jit(jax.grad(looped))(ws, q)
    np.testing.assert_allclose(gs, gl, rtol=1e-4, atol=1e-5)


# --- memory: what the backward pass keeps ------------------------------------


def _leaves(fn, q):
    _, vjp = jax.vjp(fn, q)
    return jax.tree_util.tree_leaves(vjp)


def test_backward_keeps_no_mask_and_no_second_probability_array():
    q = _qkv((2, 16, 4, 8))[0]
    size = 2 * 4 * 16 * 16  # (batch, heads, q, k)
    key = jax.random.key(0)

    def ours(q):
        return dot_product_attention(
            q, q, q, dropout_rng=key, dropout_rate=RATE, broadcast_dropout=False
        )

    def flax_dropout(q):
        return nn.dot_product_attention(
            q, q, q, dropout_rng=key, dropout_rate=RATE, broadcast_dropout=False
        )

    def no_dropout(q):
        return nn.dot_product_attention(q, q, q)

    def big(fn, kind):
        return [
            leaf
            for leaf in _leaves(fn, q)
            if np.size(leaf) == size and jnp.issubdtype(leaf.dtype, kind)
        ]

    # No (b, h, q, k) boolean or integer (uint32 bits) array.
    assert not big(ours, jnp.bool_) and not big(ours, jnp.integer)
    # One probability-sized float, the probabilities themselves: fewer than
    # attention without dropout keeps (the softmax's intermediates and the
    # probabilities), where Flax's dropout adds the mask and the dropped ones.
    n_none = len(big(no_dropout, jnp.floating))
    assert len(big(ours, jnp.floating)) == 1 <= n_none
    assert len(big(flax_dropout, jnp.floating)) > n_none
    weights = nn.dot_product_attention_weights(q, q)
    np.testing.assert_array_equal(big(ours, jnp.floating)[0], weights)


def test_compiled_backward_memory_matches_no_dropout():
    q = _qkv((2, 128, 4, 16))[0]
    key = jax.random.key(0)

    def temp(fn):
        step = jax.jit(jax.grad(lambda q: jnp.sum(fn(q) ** 2)))
        return step.lower(q).compile().memory_analysis().temp_size_in_bytes

    kw = dict(dropout_rng=key, dropout_rate=RATE, broadcast_dropout=False)
    ours = temp(lambda q: dot_product_attention(q, q, q, **kw))
    flax_drop = temp(lambda q: nn.dot_product_attention(q, q, q, **kw))
    none = temp(lambda q: nn.dot_product_attention(q, q, q))
    probs = 2 * 4 * 128 * 128 * 4  # one float32 probability array, in bytes
    assert ours <= none + probs // 4, (ours, none, flax_drop)
    assert flax_drop >= none + probs, (ours, none, flax_drop)


# --- explicit sharding and shard_map (8 simulated devices) --------------------

_SHARDING_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import jaxreg
from jaxreg.attention import dot_product_attention, dot_product_attention_weights

ks = jax.random.split(jax.random.key(0), 3)
q, k, v = (jax.random.normal(kk, (4, 8, 8, 4)) for kk in ks)
key = jax.random.key(1)
out = {}
for broadcast in (False, True):
    kw = dict(dropout_rng=key, dropout_rate=0.3, broadcast_dropout=broadcast)
    f = lambda q, k, v: dot_product_attention(q, k, v, **kw)
    loss = lambda q, k, v: jnp.sum(f(q, k, v) ** 2)
    want, gwant = f(q, k, v), jax.grad(loss)(q, k, v)
    mesh = jax.make_mesh((2, 4), ("b", "h"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        spec = P("b", None, "h", None)
        qs, kss, vs = (jax.device_put(a, NamedSharding(mesh, spec)) for a in (q, k, v))
        got = jax.jit(f)(qs, kss, vs)
        g = jax.jit(jax.grad(loss))(qs, kss, vs)
        hlo = jax.jit(f).lower(qs, kss, vs).compile().as_text()
        out[f"explicit-{broadcast}"] = dict(
            diff=float(jnp.max(jnp.abs(got - want))),
            gdiff=float(jnp.max(jnp.abs(g - gwant))),
            spec=str(jax.typeof(got).sharding.spec),
            collectives=[c for c in ("all-gather", "all-reduce", "all-to-all",
                         "collective-permute") if c in hlo],
        )
    # shard_map: each shard draws its block of the global mask.
    mesh = jax.make_mesh((2, 4), ("b", "h"), axis_types=(AxisType.Auto,) * 2)
    w_spec = P("b", "h")
    dims = (0, 1) if broadcast else ()

    @jax.shard_map(mesh=mesh, in_specs=(P("b", None, "h", None),) * 2,
                   out_specs=w_spec)
    def block(q, k):
        return dot_product_attention_weights(
            q, k, **kw, shard_spec=P() if broadcast else w_spec)

    wglobal = dot_product_attention_weights(q, k, **kw)
    out[f"shard_map-{broadcast}"] = dict(
        same_zeros=bool(jnp.all((block(q, k) == 0) == (wglobal == 0))))
print(json.dumps(out))
"""


def test_explicit_sharding_over_batch_and_heads_and_shard_map():
    proc = run_on_8_cpu_devices(_SHARDING_SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    bound = 64 * F32_EPS * 10  # |v| < 10 here; scaled by 1/0.7, 16-term sums
    for broadcast in (False, True):
        r = report[f"explicit-{broadcast}"]
        assert r["diff"] <= bound, r
        assert r["gdiff"] <= 1e-4, r
        assert r["spec"] == str(jax.sharding.PartitionSpec("b", None, "h", None)), r
        assert r["collectives"] == [], r
        assert report[f"shard_map-{broadcast}"]["same_zeros"]


# --- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_bad_rates_raise(rate):
    q, k, v = _qkv((1, 3, 1, 2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`dropout_rate`.*\[0, 1\]"):
        dot_product_attention(q, k, v, dropout_rng=key, dropout_rate=rate)
    with pytest.raises(ValueError, match=r"`dropout_rate`"):
        dot_product_attention_weights(q, k, dropout_rng=key, dropout_rate=rate)
    with pytest.raises(ValueError, match=r"`rate`"):
        attention_dropout(key, jnp.ones((2, 2)), rate)


def test_missing_or_bad_key_raises():
    q, k, v = _qkv((1, 3, 1, 2))
    with pytest.raises(ValueError, match="`dropout_rng` is None.*attention dropout"):
        dot_product_attention(q, k, v, dropout_rate=0.1)
    with pytest.raises(ValueError, match="`dropout_rng` is None"):
        dot_product_attention_weights(q, k, dropout_rate=0.1)
    with pytest.raises(TypeError, match="`dropout_rng` must be a JAX PRNG key"):
        dot_product_attention(q, k, v, dropout_rng=3, dropout_rate=0.1)
    with pytest.raises(ValueError, match="`key` is None"):
        attention_dropout(None, jnp.ones((2, 2)), 0.1)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((3, 1, 2), (1, 3, 1, 2), (1, 3, 1, 2)), "same rank"),
        (((1, 3, 1, 2), (2, 3, 1, 2), (2, 3, 1, 2)), "same batch dimensions"),
        (((1, 3, 1, 2), (1, 3, 1, 4), (1, 3, 1, 4)), "same depth"),
        (((1, 3, 4, 2), (1, 3, 3, 2), (1, 3, 3, 2)), r"heads of `key` \(3\)"),
        (((1, 3, 4, 2), (1, 3, 4, 2), (1, 3, 3, 2)), r"heads of `value` \(3\)"),
        (((1, 3, 1, 2), (1, 3, 1, 2), (1, 4, 1, 2)), "same length"),
        (((3, 2), (3, 2), (3, 2)), r"`query` must have shape.*\(3, 2\)"),
    ],
)
def test_bad_qkv_shapes_raise(shapes, match):
    q, k, v = (jnp.ones(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        dot_product_attention(q, k, v)


def test_bad_mask_bias_flags_dtypes_and_arguments_raise():
    q, k, v = _qkv((2, 3, 4, 2), (2, 5, 4, 2))
    with pytest.raises(
        ValueError, match=r"`mask` of shape \(3, 3\) does not broadcast"
    ):
        dot_product_attention(q, k, v, mask=jnp.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"`bias` of shape \(2, 1, 4, 3, 5\)"):
        dot_product_attention(q, k, v, bias=jnp.ones((2, 1, 4, 3, 5)))
    with pytest.raises(TypeError, match="`bias` must be None or an array"):
        dot_product_attention(q, k, v, bias=[1.0])
    for flag in ("deterministic", "broadcast_dropout", "is_causal"):
        with pytest.raises(TypeError, match=f"`{flag}` must be a Python bool"):
            dot_product_attention(q, k, v, **{flag: "yes"})
    with pytest.raises(
        TypeError, match="`force_fp32_for_softmax` must be a Python bool"
    ):
        dot_product_attention_weights(q, k, force_fp32_for_softmax=None)
    with pytest.raises(TypeError, match="`query` must have a floating dtype"):
        dot_product_attention(q.astype(jnp.int32), k, v)
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        dot_product_attention(q, k, v, dtype=jnp.int32)
    with pytest.raises(TypeError, match="`module` must be None or the Flax module"):
        dot_product_attention(q, k, v, module=object())
    with pytest.raises(ValueError, match="mutually exclusive"):
        dot_product_attention_weights(q, k, precision="highest", einsum=jnp.einsum)
    with pytest.raises(ValueError, match="must be given together"):
        dot_product_attention(q, k, v, qk_attn_weights_einsum=jnp.einsum)
    with pytest.raises(ValueError, match="`weights` must have shape"):
        attention_dropout(jax.random.key(0), jnp.ones(3), 0.1)
    with pytest.raises(TypeError, match="`weights` must have a floating dtype"):
        attention_dropout(jax.random.key(0), jnp.ones((2, 2), int), 0.1)
    with pytest.raises(ValueError, match="`shard_spec`.*only meaningful inside"):
        dot_product_attention(
            q,
            k,
            v,
            dropout_rng=jax.random.key(0),
            dropout_rate=0.1,
            shard_spec=jax.sharding.PartitionSpec(),
        )
