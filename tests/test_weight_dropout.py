"""Tests for jaxreg.weight_dropout: DropConnect as pure functions.

Statistical checks use 4-sigma bounds computed from the exact moments of the
Bernoulli masks (two-sided false-alarm probability about 6e-5 per check); keys are
fixed, so every run is reproducible.
"""

import json
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_matmul_close, run_on_8_cpu_devices
from jax.test_util import check_grads

import jaxreg
from jaxreg import (
    dropconnect,
    dropconnect_dense,
    dropconnect_inference,
    dropconnect_moments,
    dropconnect_params,
    keep_probability,
)

K = jax.random.key


def _data(batch=(6,), n_in=5, n_out=4, seed=0, dtype=jnp.float32):
    kx, kw, kb = jax.random.split(K(seed), 3)
    x = jax.random.normal(kx, batch + (n_in,), dtype)
    w = jax.random.normal(kw, (n_in, n_out), dtype)
    b = jax.random.normal(kb, (n_out,), dtype)
    return x, w, b


def _sum_moments(c, p):
    """Exact sigma^2 and mu_4 of S = sum_j c_j B_j, B_j ~ Bernoulli(p) iid.

    Cumulants add over independent terms: kappa_2 = p(1-p) sum c^2 and
    kappa_4 = p(1-p)(1-6p(1-p)) sum c^4; mu_4 = kappa_4 + 3 kappa_2^2.
    """
    c = np.asarray(c, np.float64)
    q = p * (1 - p)
    var = q * np.sum(c**2, axis=0)
    mu4 = q * (1 - 6 * q) * np.sum(c**4, axis=0) + 3 * var**2
    return var, mu4


def _check_sample_moments(samples, mean, var, mu4):
    """4-sigma checks of the sample mean and the (1/n) sample variance."""
    samples = np.asarray(samples, np.float64)
    n = samples.shape[0]
    m_hat = samples.mean(0)
    assert np.all(np.abs(m_hat - mean) <= 4 * np.sqrt(var / n) + 1e-6), (m_hat, mean)
    v_hat = samples.var(0)
    e_v = (n - 1) / n * var
    sd_v = np.sqrt((n - 1) ** 2 / n**3 * mu4 - (n - 1) * (n - 3) / n**3 * var**2)
    assert np.all(np.abs(v_hat - e_v) <= 4 * sd_v + 1e-6), (v_hat, var, sd_v)


# ----------------------------------------------------------------------------
# dropconnect
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.9])
def test_dropconnect_values_inverted_and_classic(rate):
    w = jax.random.normal(K(1), (40, 30))
    p = keep_probability(rate)
    y = dropconnect(K(2), w, rate)
    kept = y != 0
    np.testing.assert_allclose(y[kept], w[kept] / p, rtol=1e-6)
    y_classic = dropconnect(K(2), w, rate, inverted=False)
    np.testing.assert_array_equal(y_classic, jnp.where(kept, w, 0.0))
    # Same key -> same mask; different key -> another mask.
    np.testing.assert_array_equal(dropconnect(K(2), w, rate), y)
    assert not np.array_equal(dropconnect(K(3), w, rate) != 0, kept)
    # Inference paths: E[train output] == inference output.
    np.testing.assert_array_equal(dropconnect(None, w, rate, deterministic=True), w)
    np.testing.assert_allclose(
        dropconnect(None, w, rate, inverted=False, deterministic=True), p * w
    )


def test_dropconnect_rate_zero_and_one():
    w = jax.random.normal(K(1), (5, 3))
    np.testing.assert_array_equal(dropconnect(None, w, 0.0), w)
    np.testing.assert_array_equal(dropconnect(None, w, 1.0), jnp.zeros_like(w))
    g = jax.grad(lambda w: jnp.sum(dropconnect(K(0), w, 1.0) ** 2))(w)
    assert np.all(np.isfinite(g)) and np.all(g == 0)


@pytest.mark.parametrize("rate", [0.001, 0.1, 0.5, 0.9])
def test_realised_weight_keep_rate_within_4_sigma(rate):
    n = 2_000_000
    y = dropconnect(K(7), jnp.ones((2000, 1000)), rate)
    p = keep_probability(rate)
    kept = float(jnp.mean(y != 0))
    assert abs(kept - (1 - rate)) <= 4 * math.sqrt(rate * (1 - rate) / n)
    # Kept weights are scaled by exactly 1/p.
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1.0 / p], rtol=1e-6)


# ----------------------------------------------------------------------------
# dropconnect_dense
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(), (6,), (2, 3)])
@pytest.mark.parametrize("inverted", [True, False])
def test_dense_shared_mask_equals_matmul_with_dropped_kernel(batch, inverted):
    x, w, b = _data(batch)
    key = K(11)
    y = dropconnect_dense(key, x, w, 0.4, bias=b, inverted=inverted)
    expected = x @ dropconnect(key, w, 0.4, inverted=inverted) + b
    np.testing.assert_array_equal(y, expected)
    assert y.shape == batch + (4,)
    y_nobias = dropconnect_dense(key, x, w, 0.4, inverted=inverted)
    np.testing.assert_array_equal(
        y_nobias, x @ dropconnect(key, w, 0.4, inverted=inverted)
    )


@pytest.mark.parametrize("inverted", [True, False])
def test_dense_per_example_row_is_dropconnect_with_folded_key(inverted):
    x, w, b = _data((9,))
    key = K(5)
    y = dropconnect_dense(
        key, x, w, 0.3, bias=b, per_example=True, chunk_size=4, inverted=inverted
    )
    # Row n of the batched (vmap-ed) matmul vs an unbatched one: equal up to the
    # summation order XLA picks, hence the float32 rounding bound.
    for n in range(9):
        wn = dropconnect(jax.random.fold_in(key, n), w, 0.3, inverted=inverted)
        assert_matmul_close(y[n], x[n] @ wn + b, x[n], wn, bias=b)


def test_dense_per_example_independent_of_chunk_size():
    x, w, b = _data((11,), n_in=7, n_out=5)
    key = K(8)
    ref = dropconnect_dense(key, x, w, 0.5, bias=b, per_example=True)
    # Chunks change the batch size of the vmap-ed matmuls (and so, possibly, the
    # summation order): the masks must agree, the products up to rounding. The
    # masks are read back exactly through one-hot rows (one product per output).
    w_scaled = w / keep_probability(0.5)
    eye = jnp.tile(jnp.eye(7), (2, 1))[:11]
    ref_masks = dropconnect_dense(key, eye, jnp.ones_like(w), 0.5, per_example=True)
    for chunk in (1, 3, 10, 11, 100):
        y = dropconnect_dense(
            key, x, w, 0.5, bias=b, per_example=True, chunk_size=chunk
        )
        assert_matmul_close(y, ref, x, w_scaled, bias=b, err_msg=f"chunk={chunk}")
        masks = dropconnect_dense(
            key, eye, jnp.ones_like(w), 0.5, per_example=True, chunk_size=chunk
        )
        np.testing.assert_array_equal(masks, ref_masks, err_msg=f"chunk={chunk}")
    # Batch dimensions are flattened row-major into example indices.
    y3 = dropconnect_dense(
        key, x[:10].reshape(2, 5, 7), w, 0.5, bias=b, per_example=True, chunk_size=3
    )
    assert_matmul_close(y3.reshape(10, 5), ref[:10], x[:10], w_scaled, bias=b)


def test_dense_per_example_masks_differ_across_examples():
    # Identical inputs: any difference between rows comes from the masks.
    w = jax.random.normal(K(1), (16, 8))
    x = jnp.ones((64, 16))
    y = np.asarray(dropconnect_dense(K(2), x, w, 0.5, per_example=True, chunk_size=16))
    distinct = {row.tobytes() for row in y}
    assert len(distinct) == 64
    shared = np.asarray(dropconnect_dense(K(2), x, w, 0.5))
    assert len({row.tobytes() for row in shared}) == 1


def test_dense_per_example_masks_keep_rate_and_independence():
    """Read the masks back with one-hot inputs and w = 1: y[n] = M_n[j, :] / p."""
    n_in, n_out, reps, rate = 32, 64, 64, 0.3
    p = keep_probability(rate)
    x = jnp.tile(jnp.eye(n_in), (reps, 1))  # example n reads row n % n_in
    y = dropconnect_dense(K(4), x, jnp.ones((n_in, n_out)), rate, per_example=True)
    masks = np.asarray(y) * p > 0.5
    n = masks.size
    assert abs(masks.mean() - p) <= 4 * math.sqrt(p * (1 - p) / n)
    # Examples n and n + n_in read the same kernel row through independent masks:
    # they agree with probability p^2 + (1 - p)^2.
    a, b = masks[:-n_in], masks[n_in:]
    agree = np.mean(a == b)
    q = p**2 + (1 - p) ** 2
    assert abs(agree - q) <= 4 * math.sqrt(q * (1 - q) / a.size)


@pytest.mark.parametrize("per_example", [False, True])
def test_dense_expectation_over_keys_equals_dense_layer(per_example):
    x, w, b = _data((), n_in=10, n_out=3)
    rate, n = 0.4, 20_000
    p = keep_probability(rate)
    if per_example:
        xs = jnp.broadcast_to(x, (n, 10))
        ys = dropconnect_dense(K(3), xs, w, rate, bias=b, per_example=True)
    else:
        keys = jax.random.split(K(3), n)
        ys = jax.vmap(lambda k: dropconnect_dense(k, x, w, rate, bias=b))(keys)
    a = np.asarray(x, np.float64)[:, None] * np.asarray(w, np.float64) / p
    var, _ = _sum_moments(a, p)
    mean = np.asarray(x @ w + b, np.float64)
    err = np.abs(np.asarray(ys, np.float64).mean(0) - mean)
    assert np.all(err <= 4 * np.sqrt(var / n)), (err, np.sqrt(var / n))


def test_dense_rate_zero_one_and_deterministic():
    x, w, b = _data()
    for per_example in (False, True):
        np.testing.assert_array_equal(
            dropconnect_dense(None, x, w, 0.0, bias=b, per_example=per_example),
            x @ w + b,
        )
        np.testing.assert_array_equal(
            dropconnect_dense(None, x, w, 1.0, bias=b, per_example=per_example),
            x @ jnp.zeros_like(w) + b,
        )
        np.testing.assert_array_equal(
            dropconnect_dense(
                None, x, w, 0.5, bias=b, per_example=per_example, deterministic=True
            ),
            x @ w + b,
        )
    p = keep_probability(0.3)
    np.testing.assert_allclose(
        dropconnect_dense(None, x, w, 0.3, bias=b, inverted=False, deterministic=True),
        p * (x @ w) + b,
        rtol=1e-5,
        atol=1e-6,
    )


def test_dense_empty_batch():
    x = jnp.zeros((0, 5))
    w = jnp.ones((5, 2))
    assert dropconnect_dense(K(0), x, w, 0.5, per_example=True).shape == (0, 2)


# ----------------------------------------------------------------------------
# moments and inference
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("inverted", [True, False])
def test_moments_formulas(inverted):
    x, w, b = _data((3,))
    rate = 0.3
    p = keep_probability(rate)
    mean, var = dropconnect_moments(x, w, rate, bias=b, inverted=inverted)
    xw, x2w2 = np.asarray(x @ w), np.asarray((x**2) @ (w**2))
    if inverted:
        np.testing.assert_allclose(mean, xw + b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, rate / (1 - rate) * x2w2, rtol=1e-5)
    else:
        np.testing.assert_allclose(mean, p * xw + b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, p * (1 - p) * x2w2, rtol=1e-5)
    # rate 0: no noise; rate 1: the layer outputs the bias exactly.
    mean0, var0 = dropconnect_moments(x, w, 0.0, bias=b, inverted=inverted)
    np.testing.assert_allclose(mean0, x @ w + b, rtol=1e-6)
    np.testing.assert_array_equal(var0, 0.0)
    mean1, var1 = dropconnect_moments(x, w, 1.0, bias=b, inverted=inverted)
    np.testing.assert_array_equal(mean1, jnp.broadcast_to(b, mean1.shape))
    np.testing.assert_array_equal(var1, 0.0)
    np.testing.assert_array_equal(
        mean1, dropconnect_dense(K(0), x, w, 1.0, bias=b, inverted=inverted)
    )


@pytest.mark.parametrize("inverted", [True, False])
@pytest.mark.parametrize("rate", [0.2, 0.7])
def test_moments_match_monte_carlo(inverted, rate):
    """20000 independent per-example masks of one input vs the analytic moments."""
    x, w, b = _data((), n_in=12, n_out=3, seed=2)
    n = 20_000
    p = keep_probability(rate)
    ys = dropconnect_dense(
        K(9),
        jnp.broadcast_to(x, (n, 12)),
        w,
        rate,
        bias=b,
        per_example=True,
        inverted=inverted,
    )
    mean, var = dropconnect_moments(x, w, rate, bias=b, inverted=inverted)
    scale = 1 / p if inverted else 1.0
    c = np.asarray(x, np.float64)[:, None] * np.asarray(w, np.float64) * scale
    var_exact, mu4 = _sum_moments(c, p)
    np.testing.assert_allclose(var, var_exact, rtol=1e-5)
    _check_sample_moments(ys, np.asarray(mean, np.float64), var_exact, mu4)


def test_moments_match_monte_carlo_shared_mask_over_keys():
    x, w, b = _data((), n_in=8, n_out=2, seed=3)
    n, rate = 20_000, 0.5
    keys = jax.random.split(K(1), n)
    ys = jax.vmap(lambda k: dropconnect_dense(k, x, w, rate, bias=b, inverted=False))(
        keys
    )
    mean, var = dropconnect_moments(x, w, rate, bias=b, inverted=False)
    c = np.asarray(x, np.float64)[:, None] * np.asarray(w, np.float64)
    _, mu4 = _sum_moments(c, keep_probability(rate))
    _check_sample_moments(
        ys, np.asarray(mean, np.float64), np.asarray(var, np.float64), mu4
    )


def _normal_cdf(z):
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def test_inference_matches_gaussian_expectation_of_relu():
    x, w, b = _data((2,), n_in=6, n_out=3, seed=4)
    rate, z = 0.5, 20_000
    mean, var = dropconnect_moments(x, w, rate, bias=b)
    mu, s = np.asarray(mean, np.float64), np.sqrt(np.asarray(var, np.float64))
    # E[relu(u)] for u ~ N(mu, s^2) is mu Phi(mu/s) + s phi(mu/s).
    t = mu / s
    exact = mu * _normal_cdf(t) + s * np.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)
    r = dropconnect_inference(
        K(6), x, w, rate, jax.nn.relu, bias=b, num_samples=z, chunk_size=5000
    )
    assert r.shape == mean.shape
    # sd(relu(u)) <= s.
    assert np.all(np.abs(np.asarray(r) - exact) <= 4 * s / math.sqrt(z)), (r, exact)
    # Differs from the mean-field relu(E[u]) wherever the Gaussian straddles 0.
    assert np.all(np.asarray(r) > np.maximum(mu, 0.0))


def test_inference_without_noise_is_activation_of_mean():
    x, w, b = _data((3,))
    r = dropconnect_inference(K(0), x, w, 0.0, jnp.tanh, bias=b, num_samples=7)
    np.testing.assert_allclose(r, jnp.tanh(x @ w + b), rtol=1e-6, atol=1e-7)
    g = jax.grad(
        lambda w: jnp.sum(
            dropconnect_inference(K(0), x, w, 0.0, jnp.tanh, num_samples=3)
        )
    )(w)
    assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------
# dropconnect_params
# ----------------------------------------------------------------------------


def _mlp_params():
    k1, k2 = jax.random.split(K(0))
    return {
        "dense1": {"kernel": jax.random.normal(k1, (4, 8)), "bias": jnp.ones(8)},
        "dense2": {"kernel": jax.random.normal(k2, (8, 4)), "bias": jnp.ones(4)},
    }


def test_params_mask_selects_leaves_and_keys_fold_leaf_index():
    params = _mlp_params()
    mask = jax.tree_util.tree_map(lambda p: p.ndim == 2, params)
    key = K(3)
    out = dropconnect_params(key, params, 0.5, mask=mask)
    leaves, _ = jax.tree_util.tree_flatten(params)
    out_leaves, _ = jax.tree_util.tree_flatten(out)
    for i, (leaf, o) in enumerate(zip(leaves, out_leaves, strict=True)):
        if leaf.ndim == 2:
            np.testing.assert_array_equal(
                o, dropconnect(jax.random.fold_in(key, i), leaf, 0.5)
            )
        else:
            assert o is leaf
    # A callable mask and mask_by_ndim give the same result.
    out_fn = dropconnect_params(key, params, 0.5, mask=lambda p: mask)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out_fn, out)
    from jaxreg.penalties import mask_by_ndim

    out_ndim = dropconnect_params(key, params, 0.5, mask=mask_by_ndim(params))
    jax.tree_util.tree_map(np.testing.assert_array_equal, out_ndim, out)


def test_params_leaves_get_independent_masks():
    params = [jnp.ones((100, 100)), jnp.ones((100, 100))]
    a, b = dropconnect_params(K(1), params, 0.5)
    agree = float(jnp.mean((a != 0) == (b != 0)))
    assert abs(agree - 0.5) <= 4 * math.sqrt(0.25 / 10_000)


def test_params_mask_none_drops_every_leaf_and_deterministic():
    params = _mlp_params()
    # Over 8 keys every leaf (the smallest has 4 elements) has dropped and kept
    # elements; for a correct sampler a 4-element leaf fails with prob. 2**-31.
    outs = [dropconnect_params(K(2 + i), params, 0.5) for i in range(8)]
    for leaves in zip(*map(jax.tree_util.tree_leaves, outs), strict=True):
        assert 0 < float(jnp.mean(jnp.stack(leaves) == 0)) < 1
    same = dropconnect_params(None, params, 0.5, deterministic=True)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, params)
    p = keep_probability(0.5)
    classic = dropconnect_params(None, params, 0.5, inverted=False, deterministic=True)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, p * b), classic, params
    )


def test_params_training_step_gradients_vanish_on_dropped_weights():
    params = _mlp_params()
    mask = jax.tree_util.tree_map(lambda p: p.ndim == 2, params)
    x = jax.random.normal(K(5), (16, 4))

    def model(params, x):
        h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
        return h @ params["dense2"]["kernel"] + params["dense2"]["bias"]

    def loss(params, key):
        dropped = dropconnect_params(key, params, 0.5, mask=mask)
        return jnp.mean(model(dropped, x) ** 2)

    key = K(6)
    grads = jax.jit(jax.grad(loss))(params, key)
    dropped = dropconnect_params(key, params, 0.5, mask=mask)
    for name in ("dense1", "dense2"):
        zero = dropped[name]["kernel"] == 0
        assert np.all(np.asarray(grads[name]["kernel"])[np.asarray(zero)] == 0)
        assert np.any(np.asarray(grads[name]["kernel"])[~np.asarray(zero)] != 0)


def test_params_weight_drop_rnn_scan_shares_mask_over_time():
    """AWD-LSTM style: drop the recurrent kernel once, reuse it at every step."""
    w_hh = jax.random.normal(K(1), (6, 6)) * 0.5
    w_xh = jax.random.normal(K(2), (3, 6))
    xs = jax.random.normal(K(3), (10, 3))
    key = K(4)

    def run(params, key):
        p = dropconnect_params(key, params, 0.4, mask={"w_hh": True, "w_xh": False})

        def step(h, x):
            h = jnp.tanh(x @ p["w_xh"] + h @ p["w_hh"])
            return h, h

        return jax.lax.scan(step, jnp.zeros(6), xs)[1]

    params = {"w_hh": w_hh, "w_xh": w_xh}
    hs = run(params, key)
    dropped = dropconnect(jax.random.fold_in(key, 0), w_hh, 0.4)
    h, loop = jnp.zeros(6), []
    for x in xs:
        h = jnp.tanh(x @ w_xh + h @ dropped)
        loop.append(h)
    np.testing.assert_allclose(hs, jnp.stack(loop), rtol=1e-6, atol=1e-6)
    # jit may fuse the steps' matmuls and sums differently from eager: rounding.
    np.testing.assert_allclose(jax.jit(run)(params, key), hs, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------
# grad, jit, vmap, dtype
# ----------------------------------------------------------------------------


def test_check_grads_at_fixed_key():
    x, w, b = _data((4,), n_in=3, n_out=2)
    key = K(1)
    kw = dict(modes=("fwd", "rev"), atol=1e-2, rtol=1e-2, eps=1e-3)
    # Each function is jitted once so the finite differences reuse one compilation.
    check_grads(jax.jit(lambda w: dropconnect(key, w, 0.3)), (w,), order=2, **kw)
    for per_example in (False, True):
        f = jax.jit(
            lambda x, w, b, pe=per_example: dropconnect_dense(
                key, x, w, 0.3, bias=b, per_example=pe, chunk_size=3
            )
        )
        check_grads(f, (x, w, b), order=1, **kw)
    check_grads(
        jax.jit(lambda x, w, b: dropconnect_moments(x, w, 0.3, bias=b)),
        (x, w, b),
        order=2,
        **kw,
    )
    check_grads(
        jax.jit(
            lambda x, w: dropconnect_inference(
                key, x, w, 0.3, jnp.tanh, num_samples=8, chunk_size=3
            )
        ),
        (x, w),
        order=1,
        **kw,
    )
    check_grads(
        jax.jit(
            lambda p: dropconnect_params(key, p, 0.3, mask={"k": True, "b": False})
        ),
        ({"k": w, "b": b},),
        order=1,
        **kw,
    )


def test_dense_per_example_gradients_use_each_examples_mask():
    # Reference: the same layer written with the explicit per-example kernels of
    # the documented semantics (autodiff through `dropconnect`). The gradients
    # are sums of at most 6 float32 products of O(1) terms, so they agree to a
    # few float32 roundings (atol 1e-5); also under vmap over keys.
    x, w, _ = _data((6,), n_in=5, n_out=4)
    rate = 0.3

    def loss(k, x, w):
        y = dropconnect_dense(k, x, w, rate, per_example=True, chunk_size=4)
        return jnp.sum(jnp.sin(y))

    def loss_ref(k, x, w):
        kernels = jnp.stack(
            [dropconnect(jax.random.fold_in(k, n), w, rate) for n in range(6)]
        )
        return jnp.sum(jnp.sin(jnp.einsum("ni,nio->no", x, kernels)))

    grad = jax.jit(jax.grad(loss, argnums=(1, 2)))
    grad_ref = jax.jit(jax.grad(loss_ref, argnums=(1, 2)))
    keys = jax.random.split(K(5), 2)
    batched = jax.vmap(grad, in_axes=(0, None, None))(keys, x, w)
    for i in range(2):
        for got, want, g_b in zip(
            grad(keys[i], x, w), grad_ref(keys[i], x, w), batched, strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(g_b[i], want, rtol=1e-5, atol=1e-5)


def test_jit_equals_eager():
    x, w, b = _data((7,))
    key = K(2)
    cases = [  # elementwise: bit for bit
        (lambda k, x, w, b: dropconnect(k, w, 0.3), "dropconnect"),
        (
            lambda k, x, w, b: dropconnect_params(k, {"w": w, "b": b}, 0.3),
            "params",
        ),
    ]
    matmul_cases = [
        (lambda k, x, w, b: dropconnect_dense(k, x, w, 0.3, bias=b), "shared"),
        (
            lambda k, x, w, b: dropconnect_dense(
                k, x, w, 0.3, bias=b, per_example=True, chunk_size=3
            ),
            "per-example",
        ),
    ]
    for f, name in cases:
        jax.tree_util.tree_map(
            lambda a, b, name=name: np.testing.assert_array_equal(a, b, err_msg=name),
            jax.jit(f)(key, x, w, b),
            f(key, x, w, b),
        )
    # The layers contain matmuls, which jit may sum in another order than eager
    # (and every CPU its own way): equal up to the float32 rounding bound.
    w_scaled = w / keep_probability(0.3)
    for f, name in matmul_cases:
        assert_matmul_close(
            jax.jit(f)(key, x, w, b),
            f(key, x, w, b),
            x,
            w_scaled,
            bias=b,
            err_msg=name,
        )
    mean, var = dropconnect_moments(x, w, 0.3, bias=b)
    jit_mean, jit_var = jax.jit(dropconnect_moments, static_argnums=2)(
        x, w, 0.3, bias=b
    )
    assert_matmul_close(jit_mean, mean, x, w, bias=b)
    scale = (1 - keep_probability(0.3)) / keep_probability(0.3)
    assert_matmul_close(jit_var, var, x**2, scale * w**2)


def test_traced_rate_under_jit():
    w = jax.random.normal(K(0), (30, 20))
    f = jax.jit(lambda k, w, r: dropconnect(k, w, r))
    # 0.5 is exact in float32, so the traced threshold equals the static one.
    np.testing.assert_array_equal(f(K(1), w, 0.5), dropconnect(K(1), w, 0.5))
    x = jnp.ones((4, 30))
    g = jax.jit(lambda k, x, w, r: dropconnect_dense(k, x, w, r, per_example=True))
    assert_matmul_close(
        g(K(1), x, w, 0.5),
        dropconnect_dense(K(1), x, w, 0.5, per_example=True),
        x,
        2 * w,
    )
    # The masks themselves agree exactly (one-hot rows read them back).
    eye, ones = jnp.eye(30)[:4], jnp.ones_like(w)
    np.testing.assert_array_equal(
        g(K(1), eye, ones, 0.5),
        dropconnect_dense(K(1), eye, ones, 0.5, per_example=True),
    )
    np.testing.assert_array_equal(f(K(1), w, 1.0), jnp.zeros_like(w))


def test_vmap_over_keys_and_inputs():
    x, w, b = _data((5,))
    keys = jax.random.split(K(3), 4)
    # A vmap-ed matmul may be summed in another order than the unbatched one
    # (it is on AMD EPYC: differences of 2e-7), so the layers' outputs agree up
    # to the float32 rounding bound, and their masks (read back through one-hot
    # rows: one product per output) bit for bit.
    w2 = 2 * w  # bounds the kept weights' magnitude at rate 0.5
    eye, ones = jnp.eye(5)[:5], jnp.ones_like(w)
    for per_example in (False, True):

        def layer(k, x, w, b=None, per_example=per_example):
            return dropconnect_dense(k, x, w, 0.5, bias=b, per_example=per_example)

        batched = jax.vmap(lambda k, layer=layer: layer(k, x, w, b))(keys)
        masks = jax.vmap(lambda k, layer=layer: layer(k, eye, ones))(keys)
        for i in range(4):
            assert_matmul_close(batched[i], layer(keys[i], x, w, b), x, w2, bias=b)
            np.testing.assert_array_equal(masks[i], layer(keys[i], eye, ones))
    # With one key, mapping the shared-mask layer over examples == one batched call.
    mapped = jax.vmap(lambda xi: dropconnect_dense(K(3), xi, w, 0.5, bias=b))(x)
    full = dropconnect_dense(K(3), x, w, 0.5, bias=b)
    assert_matmul_close(mapped, full, x, w2, bias=b)
    means = jax.vmap(lambda xi: dropconnect_moments(xi, w, 0.5)[0])(x)
    np.testing.assert_allclose(means, dropconnect_moments(x, w, 0.5)[0], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtypes(dtype):
    x, w, b = _data((4,), dtype=dtype)
    y = dropconnect(K(0), w, 0.3)
    assert y.dtype == dtype
    # The mask is decided in integer space; scaling happens in float32, rounded once.
    np.testing.assert_array_equal(
        y, dropconnect(K(0), w.astype(jnp.float32), 0.3).astype(dtype)
    )
    for per_example in (False, True):
        out = dropconnect_dense(K(0), x, w, 0.3, bias=b, per_example=per_example)
        assert out.dtype == dtype
    np.testing.assert_array_equal(
        dropconnect_dense(K(0), x, w, 0.3, bias=b), x @ dropconnect(K(0), w, 0.3) + b
    )
    mean, var = dropconnect_moments(x, w, 0.3, bias=b)
    assert mean.dtype == var.dtype == dtype
    out = dropconnect_params(K(0), {"w": w}, 0.3)
    assert out["w"].dtype == dtype
    assert (
        dropconnect_inference(K(0), x, w, 0.3, jax.nn.relu, num_samples=4).dtype
        == dtype
    )


def test_every_prng_impl_and_legacy_keys(key_impl):
    x, w, b = _data((9,))
    key = jax.random.key(0, impl=key_impl)
    ref = dropconnect_dense(key, x, w, 0.5, bias=b, per_example=True, chunk_size=2)
    # Chunk-size invariance holds for every PRNG implementation: rbg-family keys
    # (not reproducible under vmap) are first turned into a threefry key.
    base = key
    if key_impl != "threefry2x32":
        data = jax.random.bits(key, (2,), jnp.uint32)
        base = jax.random.wrap_key_data(data, impl="threefry2x32")
    for n in range(9):
        wn = dropconnect(jax.random.fold_in(base, n), w, 0.5)
        assert_matmul_close(ref[n], x[n] @ wn + b, x[n], wn, bias=b)
    assert_matmul_close(
        dropconnect_dense(key, x, w, 0.5, bias=b, per_example=True, chunk_size=4),
        ref,
        x,
        2 * w,
        bias=b,
    )
    if key_impl != "unsafe_rbg":  # raw (4,) data is read as rbg
        raw = jax.random.key_data(key)
        np.testing.assert_array_equal(
            dropconnect_dense(raw, x, w, 0.5, bias=b, per_example=True, chunk_size=2),
            ref,
        )
        np.testing.assert_array_equal(
            dropconnect(raw, w, 0.5), dropconnect(key, w, 0.5)
        )


# ----------------------------------------------------------------------------
# sharding
# ----------------------------------------------------------------------------

_SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxreg

    assert jax.device_count() == 8, jax.devices()
    COLLECTIVE = re.compile(
        r"all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter"
    )
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), (32, 64))
    w = jax.random.normal(jax.random.key(2), (64, 128))
    b = jax.random.normal(jax.random.key(3), (128,))
    mesh1 = Mesh(np.array(jax.devices()), ("d",))
    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    results = {}

    def run(name, f, args, shardings, ref=None):
        # ref: the unsharded result, or (for layers with a matmul, whose float
        # summation order XLA may change with the layout) the same-layout matmul
        # of the kernel dropped WITHOUT sharding: then equality means identical masks.
        ref = f(*args) if ref is None else ref(*args)
        placed = [a if s is None else jax.device_put(a, s)
                  for a, s in zip(args, shardings)]
        jf = jax.jit(f)
        out = jf(*placed)
        hlo = jf.lower(*placed).compile().as_text()
        diff = np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))
        results[name] = {
            "equal": bool(np.array_equal(np.asarray(out), np.asarray(ref))),
            "max_err": float(diff.max()),
            "collectives": sorted(set(COLLECTIVE.findall(hlo))),
        }

    dc = lambda k, w: jaxreg.dropconnect(k, w, 0.3)
    for name, mesh, spec in [
        ("w_rows", mesh1, P("d", None)),
        ("w_cols", mesh1, P(None, "d")),
        ("w_2d", mesh2, P("a", "b")),
        ("w_2d_t", mesh2, P("b", "a")),
    ]:
        run("dropconnect/" + name, dc, (key, w), (None, NamedSharding(mesh, spec)))

    dense = lambda k, x, w, b: jaxreg.dropconnect_dense(k, x, w, 0.3, bias=b)
    rep1 = NamedSharding(mesh1, P())
    layouts = {
        "x_batch": (None, NamedSharding(mesh1, P("d", None)), rep1, rep1),
        "w_cols": (None, rep1, NamedSharding(mesh1, P(None, "d")),
                   NamedSharding(mesh1, P("d"))),
        "2d": (None, NamedSharding(mesh2, P("a", None)),
               NamedSharding(mesh2, P(None, "b")), NamedSharding(mesh2, P("b"))),
    }
    for name, sh in layouts.items():
        def same_layout_matmul(k, x, w, b, sh=sh):
            wd = jaxreg.dropconnect(k, w, 0.3)  # unsharded mask
            placed = [jax.device_put(a, s) for a, s in zip((x, wd, b), sh[1:])]
            return jax.jit(lambda x, w, b: x @ w + b)(*placed)
        run("dense/" + name, dense, (key, x, w, b), sh, ref=same_layout_matmul)

    per = lambda k, x, w, b: jaxreg.dropconnect_dense(
        k, x, w, 0.3, bias=b, per_example=True, chunk_size=8)
    run("per_example/x_batch", per, (key, x, w, b), layouts["x_batch"])
    # Mask bits alone (one-hot rows read the per-example masks back) must agree.
    eye = jnp.tile(jnp.eye(64), (2, 1))
    ones = jnp.ones((64, 128))
    zero = jnp.zeros(128)
    run("per_example_masks/x_batch", per, (key, eye, ones, zero), layouts["x_batch"])
    print(json.dumps(results))
    """
)


def test_sharding_invariance_and_no_collectives():
    out = run_on_8_cpu_devices(_SHARDING_SCRIPT)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == 9
    # per_example/x_batch multiplies random rows by per-example kernels in
    # batches whose size the layout changes, so XLA may sum in another order:
    # the float32 bound 2 (K + 1) eps (|x| @ |w| / p + |b|) with K = 64, p = 0.7
    # (|x|, |w|, |b| < 6 for these normal draws; the masks, read back exactly
    # through one-hot rows, are per_example_masks).
    bound = 2 * 65 * np.finfo(np.float32).eps * (64 * 36 / 0.7 + 6)
    for name, r in results.items():
        if name == "per_example/x_batch":
            assert r["max_err"] <= bound, f"{name}: {r['max_err']} > {bound}"
        else:
            assert r["equal"], f"{name}: sharded != unsharded"
        if not name.startswith("per_example"):
            assert r["collectives"] == [], f"{name}: {r['collectives']}"


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------


def test_shape_mismatch_messages_show_both_shapes():
    x, w = jnp.ones((4, 3)), jnp.ones((5, 2))
    for f in (
        lambda: dropconnect_dense(K(0), x, w, 0.5),
        lambda: dropconnect_dense(K(0), x, w, 0.5, per_example=True),
        lambda: dropconnect_moments(x, w, 0.5),
        lambda: dropconnect_inference(K(0), x, w, 0.5, jnp.tanh),
    ):
        with pytest.raises(ValueError, match=r"x\.shape=\(4, 3\).*w\.shape=\(5, 2\)"):
            f()
    with pytest.raises(ValueError, match=r"w\.shape=\(3,\)"):
        dropconnect_dense(K(0), x, jnp.ones(3), 0.5)
    with pytest.raises(ValueError, match=r"bias\.shape=\(3,\).*w\.shape=\(3, 2\)"):
        dropconnect_dense(K(0), x, jnp.ones((3, 2)), 0.5, bias=jnp.ones(3))
    with pytest.raises(ValueError, match=r"x\.shape=\(\)"):
        dropconnect_moments(jnp.float32(1.0), jnp.ones((3, 2)), 0.5)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_out_of_range(rate):
    x, w, _ = _data()
    for f in (
        lambda: dropconnect(K(0), w, rate),
        lambda: dropconnect(None, w, rate, deterministic=True),
        lambda: dropconnect_dense(K(0), x, w, rate),
        lambda: dropconnect_dense(K(0), x, w, rate, per_example=True),
        lambda: dropconnect_moments(x, w, rate),
        lambda: dropconnect_inference(K(0), x, w, rate, jnp.tanh),
        lambda: dropconnect_params(K(0), {"w": w}, rate),
    ):
        with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\]; got rate="):
            f()


def test_params_mask_with_another_structure():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    with pytest.raises(
        ValueError, match=r"same tree structure.*\n  mask:.*\n  params:"
    ):
        dropconnect_params(K(0), params, 0.5, mask={"kernel": True})
    with pytest.raises(ValueError, match="same tree structure"):
        dropconnect_params(K(0), params, 0.5, mask=[True, False])
    with pytest.raises(TypeError, match=r"Python bools.*got int 1 at 'bias'"):
        dropconnect_params(K(0), params, 0.5, mask={"kernel": True, "bias": 1})
    # Non-float leaves are skipped (issue 14, class 1), as by penalties and
    # transforms: returned unchanged, selected or not.
    step = jnp.int32(3)
    out = dropconnect_params(K(0), {"w": jnp.ones(2), "step": step}, 0.5)
    assert out["step"] is step


def test_other_bad_inputs():
    x, w, b = _data()
    with pytest.raises(TypeError, match="`w` must have a floating dtype"):
        dropconnect(K(0), jnp.ones((2, 2), jnp.int32), 0.5)
    with pytest.raises(TypeError, match="`x` must have a floating dtype"):
        dropconnect_dense(K(0), jnp.ones((2, 5), jnp.int32), w, 0.5)
    with pytest.raises(ValueError, match="`key` is None"):
        dropconnect_dense(None, x, w, 0.5)
    with pytest.raises(ValueError, match="`key` is None"):
        dropconnect_dense(None, x, w, 0.5, per_example=True)
    with pytest.raises(ValueError, match="`key` is None"):
        dropconnect_params(None, {"w": w}, 0.5)
    with pytest.raises(ValueError, match="batch of keys.*vmap"):
        dropconnect_dense(jax.random.split(K(0), 2), x, w, 0.5, per_example=True)
    with pytest.raises(ValueError, match="`chunk_size` must be >= 1; got chunk_size=0"):
        dropconnect_dense(K(0), x, w, 0.5, per_example=True, chunk_size=0)
    with pytest.raises(
        TypeError, match="`chunk_size` must be a Python int; got float 2.0"
    ):
        dropconnect_dense(K(0), x, w, 0.5, per_example=True, chunk_size=2.0)
    with pytest.raises(TypeError, match="`per_example` must be a Python bool"):
        dropconnect_dense(K(0), x, w, 0.5, per_example=1)
    with pytest.raises(TypeError, match="`inverted` must be a Python bool"):
        dropconnect(K(0), w, 0.5, inverted="yes")
    with pytest.raises(
        ValueError, match="`num_samples` must be >= 1; got num_samples=0"
    ):
        dropconnect_inference(K(0), x, w, 0.5, jnp.tanh, num_samples=0)
    with pytest.raises(TypeError, match="`activation` must be a callable"):
        dropconnect_inference(K(0), x, w, 0.5, "relu")


def test_public_names_exported():
    for name in (
        "dropconnect",
        "dropconnect_dense",
        "dropconnect_inference",
        "dropconnect_moments",
        "dropconnect_params",
    ):
        assert name in jaxreg.__all__ and callable(getattr(jaxreg, name))
