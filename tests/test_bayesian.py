"""Tests for jaxreg.bayesian: concrete dropout and sparse variational dropout."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxreg

KEY = jax.random.key(0)


def _logit(p):
    return float(np.log(p) - np.log1p(-p))


# ------------------------------------------------------------------ concrete dropout
def test_concrete_deterministic_is_identity_and_needs_no_key():
    x = jax.random.normal(KEY, (4, 5))
    y = jaxreg.concrete_dropout(None, x, jnp.asarray(1.3), deterministic=True)
    assert y is x or bool((y == x).all())


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_concrete_drop_probability_is_exactly_p(p, temperature):
    # z = sigmoid((logit p + L) / t) with L logistic; P(z > 1/2) = P(L > -logit p)
    # = p for every temperature. The output is below half the kept value exactly
    # when z > 1/2. 4-sigma binomial bound at n = 10^6.
    n = 1_000_000
    y = jaxreg.concrete_dropout(
        KEY, jnp.ones((n,)), jnp.asarray(_logit(p)), temperature=temperature
    )
    frac = float(jnp.mean(y < 0.5 / (1 - p)))
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(frac - p) < 4 * sigma, (frac, p, sigma)


def test_concrete_low_temperature_is_nearly_binary():
    p = 0.25
    y = jaxreg.concrete_dropout(
        KEY, jnp.ones((100_000,)), jnp.asarray(_logit(p)), temperature=1e-3
    )
    scaled = np.asarray(y) * (1 - p)  # 0 (dropped) or 1 (kept) in the limit
    near = (np.abs(scaled) < 1e-2) | (np.abs(scaled - 1) < 1e-2)
    assert near.mean() > 0.99


def test_concrete_gradient_wrt_rate_is_real():
    def f(x, logit):
        return jnp.sum(jnp.sin(jaxreg.concrete_dropout(KEY, x, logit)))

    with jax.enable_x64(True):  # finite differences in float64
        x64 = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
        check_grads(  # jitted: one compiled program per derivative, not per op
            jax.jit(lambda lg: f(x64, lg)),
            (jnp.asarray(-1.0, jnp.float64),),
            order=2,
            modes=("fwd", "rev"),
            eps=1e-6,
        )
    x = jax.random.normal(jax.random.key(1), (3, 4))
    g = jax.grad(f, argnums=1)(x, jnp.asarray(-1.0))
    assert bool(jnp.isfinite(g)) and float(g) != 0.0


def test_concrete_gradient_wrt_input_and_per_feature_rates():
    def f(x, logits):
        return jnp.sum(jaxreg.concrete_dropout(KEY, x, logits, temperature=0.3) ** 2)

    with jax.enable_x64(True):  # finite differences in float64
        x = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
        logits = jnp.asarray([-2.0, -1.0, 0.0, 1.0], jnp.float64)
        check_grads(f, (x, logits), order=1, modes=("rev",))
    x = jax.random.normal(jax.random.key(1), (3, 4))
    logits = jnp.asarray([-2.0, -1.0, 0.0, 1.0])
    g = jax.grad(f, argnums=1)(x, logits)
    assert g.shape == (4,) and bool(jnp.all(g != 0))


def test_concrete_same_key_same_output_different_keys_differ():
    x = jnp.ones((1000,))
    a = jaxreg.concrete_dropout(KEY, x, jnp.asarray(0.0))
    b = jaxreg.concrete_dropout(KEY, x, jnp.asarray(0.0))
    c = jaxreg.concrete_dropout(jax.random.key(1), x, jnp.asarray(0.0))
    assert bool((a == b).all())
    assert not bool((a == c).all())


def test_concrete_legacy_key_and_jit_equals_eager_and_vmap():
    x = jax.random.normal(KEY, (8, 3))
    legacy = jax.random.PRNGKey(3)
    eager = jaxreg.concrete_dropout(legacy, x, jnp.asarray(-1.0))
    jitted = jax.jit(lambda k, x, lg: jaxreg.concrete_dropout(k, x, lg))(
        legacy, x, jnp.asarray(-1.0)
    )
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    keys = jax.random.split(KEY, 5)
    out = jax.vmap(lambda k: jaxreg.concrete_dropout(k, x, jnp.asarray(-1.0)))(keys)
    assert out.shape == (5, 8, 3)
    np.testing.assert_allclose(
        out[2], jaxreg.concrete_dropout(keys[2], x, jnp.asarray(-1.0)), rtol=1e-6
    )


def test_concrete_traced_temperature_under_jit():
    x = jnp.ones((10,))
    f = jax.jit(lambda t: jaxreg.concrete_dropout(KEY, x, 0.0, temperature=t))
    np.testing.assert_allclose(
        f(0.2), jaxreg.concrete_dropout(KEY, x, 0.0, temperature=0.2), rtol=1e-6
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_concrete_dtype_and_shape_preserved(dtype):
    x = jnp.ones((2, 3, 4), dtype)
    y = jaxreg.concrete_dropout(KEY, x, jnp.asarray(-2.0))
    assert y.shape == x.shape and y.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


def test_concrete_bad_inputs():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="temperature"):
        jaxreg.concrete_dropout(KEY, x, 0.0, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        jaxreg.concrete_dropout(KEY, x, 0.0, temperature=float("nan"))
    with pytest.raises(TypeError, match="logit_p"):
        jaxreg.concrete_dropout(KEY, x, jnp.asarray(1))
    with pytest.raises(ValueError, match="logit_p.*broadcast"):
        jaxreg.concrete_dropout(KEY, x, jnp.zeros(4))
    with pytest.raises(ValueError, match="logit_p.*enlarge"):
        jaxreg.concrete_dropout(KEY, x, jnp.zeros((5, 1, 3)))
    with pytest.raises(ValueError, match="`key` is None"):
        jaxreg.concrete_dropout(None, x, 0.0)
    with pytest.raises(ValueError, match="batch of keys"):
        jaxreg.concrete_dropout(jax.random.split(KEY, 2), x, 0.0)
    with pytest.raises(TypeError, match="deterministic"):
        jaxreg.concrete_dropout(KEY, x, 0.0, deterministic=1)
    with pytest.raises(TypeError, match="`x`"):
        jaxreg.concrete_dropout(KEY, jnp.ones(3, jnp.int32), 0.0)


def _reg(weights, logit, k, lw, lp):
    p = 1 / (1 + np.exp(-logit))
    sq = sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in weights)
    return lw * sq / (1 - p) + lp * k * (p * np.log(p) + (1 - p) * np.log(1 - p))


@pytest.mark.parametrize("logit", [-3.0, -0.5, 0.0, 2.0])
def test_concrete_regularizer_matches_formula(logit):
    w = jax.random.normal(KEY, (6, 3))
    b = jnp.arange(3.0)
    r = jaxreg.concrete_dropout_regularizer(
        {"w": w, "b": b},
        jnp.asarray(logit),
        input_dim=6,
        weight_regularizer=1e-3,
        dropout_regularizer=2e-2,
    )
    np.testing.assert_allclose(r, _reg([w, b], logit, 6, 1e-3, 2e-2), rtol=1e-5)


def test_concrete_regularizer_gradients_and_entropy_minimum_at_half():
    w = jax.random.normal(KEY, (6, 3))

    def f(w, logit):
        return jaxreg.concrete_dropout_regularizer(
            w, logit, input_dim=6, weight_regularizer=1e-2, dropout_regularizer=0.1
        )

    check_grads(f, (w, jnp.asarray(-1.0)), order=1, modes=("rev",))
    # The dropout (entropy) term alone is minimised at p = 1/2 (logit 0).
    g = jax.grad(lambda lg: f(jnp.zeros((6, 3)), lg))
    assert abs(float(g(jnp.asarray(0.0)))) < 1e-7
    assert float(g(jnp.asarray(-1.0))) < 0 < float(g(jnp.asarray(1.0)))
    # The weight term always pushes p down (towards keeping).
    gw = jax.grad(
        lambda lg: jaxreg.concrete_dropout_regularizer(
            w, lg, input_dim=6, weight_regularizer=1e-2, dropout_regularizer=0.0
        )
    )
    assert float(gw(jnp.asarray(0.3))) > 0


def test_concrete_regularizer_extreme_rates_are_finite():
    for logit in (-30.0, 30.0):
        r = jaxreg.concrete_dropout_regularizer(
            jnp.zeros(2),
            jnp.asarray(logit),
            input_dim=2,
            weight_regularizer=1.0,
            dropout_regularizer=1.0,
        )
        assert bool(jnp.isfinite(r))


def test_concrete_regularizer_bad_inputs():
    w = jnp.ones((2, 2))
    kw = dict(input_dim=2, weight_regularizer=1.0, dropout_regularizer=1.0)
    with pytest.raises(ValueError, match="input_dim"):
        jaxreg.concrete_dropout_regularizer(w, 0.0, **{**kw, "input_dim": 0})
    with pytest.raises(TypeError, match="input_dim"):
        jaxreg.concrete_dropout_regularizer(w, 0.0, **{**kw, "input_dim": 2.0})
    with pytest.raises(TypeError, match="input_dim"):
        jaxreg.concrete_dropout_regularizer(w, 0.0, **{**kw, "input_dim": True})
    with pytest.raises(ValueError, match="weight_regularizer"):
        jaxreg.concrete_dropout_regularizer(w, 0.0, **{**kw, "weight_regularizer": -1})
    with pytest.raises(ValueError, match="dropout_regularizer"):
        jaxreg.concrete_dropout_regularizer(
            w, 0.0, **{**kw, "dropout_regularizer": float("nan")}
        )
    with pytest.raises(ValueError, match="logit_p.*scalar"):
        jaxreg.concrete_dropout_regularizer(w, jnp.zeros(2), **kw)
    with pytest.raises(ValueError, match="weights"):
        jaxreg.concrete_dropout_regularizer({}, 0.0, **kw)
    with pytest.raises(TypeError, match="weights"):
        jaxreg.concrete_dropout_regularizer(jnp.ones(2, jnp.int32), 0.0, **kw)


def test_concrete_dropout_learns_a_rate_by_gradient_descent():
    # Only the regularizer acts: the dropout term pulls p to 1/2, a heavy weight
    # term pulls it down; the stationary point solves
    # lw * ||W||^2 * p/(1-p)... checked numerically against a fine grid.
    w = jnp.ones((4, 4))

    def r(lg):
        return jaxreg.concrete_dropout_regularizer(
            w, lg, input_dim=4, weight_regularizer=0.01, dropout_regularizer=0.1
        )

    logit = jnp.asarray(_logit(0.1))
    step = jax.jit(lambda lg: lg - 0.5 * jax.grad(r)(lg))
    for _ in range(500):
        logit = step(logit)
    grid = jnp.linspace(-6, 6, 120001)
    best = grid[jnp.argmin(jax.vmap(r)(grid))]
    assert abs(float(logit) - float(best)) < 1e-3
    assert 0.1 < float(jax.nn.sigmoid(logit)) < 0.5


# ------------------------------------------------------ sparse variational dropout
def test_log_alpha_formula():
    w = jnp.asarray([[1.0, -0.5], [0.0, 2.0]])
    ls2 = jnp.asarray([[0.0, -1.0], [-3.0, 1.0]])
    expected = np.asarray(ls2) - np.log(np.asarray(w) ** 2 + 1e-8)
    np.testing.assert_allclose(jaxreg.sparse_vd_log_alpha(w, ls2), expected, rtol=1e-6)


def test_kl_matches_paper_approximation_and_is_positive_decreasing():
    la = jnp.linspace(-20.0, 20.0, 401)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    a = np.exp(np.asarray(la, np.float64))
    neg_kl = k1 / (1 + np.exp(-(k2 + k3 * np.log(a)))) - 0.5 * np.log1p(1 / a) - k1
    per = jax.vmap(lambda v: jaxreg.sparse_vd_kl(v[None]))(la)
    np.testing.assert_allclose(per, -neg_kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jaxreg.sparse_vd_kl(la), -neg_kl.sum(), rtol=1e-4)
    assert bool(jnp.all(per > 0)) and bool(jnp.all(jnp.diff(per) < 0))
    # pytree input sums over leaves
    tree = {"a": la[:100], "b": [la[100:]]}
    np.testing.assert_allclose(
        jaxreg.sparse_vd_kl(tree), jaxreg.sparse_vd_kl(la), rtol=1e-5
    )


def test_kl_approximation_tracks_the_true_kl_up_to_a_constant():
    # True KL(q || log-uniform) = C - 0.5 log a + E log|1 + sqrt(a) e|, e ~ N(0,1)
    # (Molchanov et al. eq. 13). The fit's error is below 0.009 (their section 4.2),
    # so true - approx is constant up to 0.018 + Monte-Carlo error (4 sigma).
    eps = jax.random.normal(KEY, (2_000_000,))
    rows = []
    for la in np.linspace(-3.0, 5.0, 9):
        s = math.exp(la / 2)
        vals = jnp.log(jnp.abs(1 + s * eps))
        true_up_to_c = -0.5 * la + float(vals.mean())
        approx = float(jaxreg.sparse_vd_kl(jnp.asarray([la])))
        rows.append((true_up_to_c - approx, float(vals.std()) / math.sqrt(eps.size)))
    diffs = np.asarray([d for d, _ in rows])
    se = max(s for _, s in rows)
    assert diffs.max() - diffs.min() < 0.018 + 8 * se, diffs


def test_kl_gradients():
    la = jnp.asarray([-3.0, 0.0, 2.0, 5.0])
    check_grads(jaxreg.sparse_vd_kl, (la,), order=1, modes=("fwd", "rev"))
    w = jnp.asarray([0.5, -1.0])
    ls2 = jnp.asarray([-2.0, -4.0])
    check_grads(
        lambda w, s: jaxreg.sparse_vd_kl(jaxreg.sparse_vd_log_alpha(w, s)),
        (w, ls2),
        order=1,
        modes=("rev",),
    )


def test_prune_and_pruned_fraction():
    w = jnp.asarray([[1.0, 0.01], [0.1, -2.0]])
    ls2 = jnp.zeros((2, 2))  # log alpha = -log w^2: [0, 9.2], [4.6, -1.39]
    np.testing.assert_array_equal(
        jaxreg.sparse_vd_prune(w, ls2), jnp.asarray([[1.0, 0.0], [0.0, -2.0]])
    )
    np.testing.assert_array_equal(
        jaxreg.sparse_vd_prune(w, ls2, threshold=5.0),
        jnp.asarray([[1.0, 0.0], [0.1, -2.0]]),
    )
    np.testing.assert_array_equal(
        jaxreg.sparse_vd_prune(w, ls2, threshold=float("inf")), w
    )
    la = jaxreg.sparse_vd_log_alpha(w, ls2)
    assert float(jaxreg.sparse_vd_pruned_fraction(la)) == 0.5
    assert float(jaxreg.sparse_vd_pruned_fraction(la, threshold=5.0)) == 0.25
    # pytree: weighted by size, 2 of 4 plus 3 of 6 -> 5 / 10
    tree = [la, jnp.asarray([10.0, 10.0, 10.0, 0.0, 0.0, 0.0])]
    assert float(jaxreg.sparse_vd_pruned_fraction(tree)) == 0.5


def test_dense_deterministic_is_pruned_mean():
    k1, k2, k3 = jax.random.split(KEY, 3)
    x = jax.random.normal(k1, (7, 5))
    w = jax.random.normal(k2, (5, 3))
    ls2 = jax.random.uniform(k3, (5, 3), minval=-6.0, maxval=4.0)
    b = jnp.asarray([0.5, -1.0, 2.0])
    y = jaxreg.sparse_vd_dense(None, x, w, ls2, bias=b, deterministic=True)
    expected = x @ jaxreg.sparse_vd_prune(w, ls2) + b
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    la = jaxreg.sparse_vd_log_alpha(w, ls2)
    assert 0 < float(jaxreg.sparse_vd_pruned_fraction(la)) < 1  # real pruning
    y_all = jaxreg.sparse_vd_dense(
        None, x, w, ls2, bias=b, deterministic=True, threshold=float("inf")
    )
    np.testing.assert_allclose(y_all, x @ w + b, rtol=1e-6, atol=1e-6)


def test_dense_local_reparameterization_moments():
    # Output mean x @ w + b and variance (x^2) @ exp(log_sigma2) per unit,
    # checked over n = 40000 keys with 4-sigma bounds on the mean and the variance.
    n = 40_000
    x = jnp.asarray([[1.0, -2.0, 0.5]])
    w = jnp.asarray([[0.3, -1.0], [0.5, 0.2], [1.0, 0.0]])
    ls2 = jnp.log(jnp.asarray([[0.1, 0.5], [0.2, 0.05], [1.0, 2.0]]))
    b = jnp.asarray([0.1, 0.2])
    keys = jax.random.split(KEY, n)
    ys = jax.vmap(lambda k: jaxreg.sparse_vd_dense(k, x, w, ls2, bias=b)[0])(keys)
    mu = np.asarray(x @ w + b)[0]
    var = np.asarray((x**2) @ jnp.exp(ls2))[0] + 1e-8
    m = np.asarray(ys.mean(0))
    v = np.asarray(ys.var(0, ddof=1))
    assert np.all(np.abs(m - mu) < 4 * np.sqrt(var / n)), (m, mu)
    assert np.all(np.abs(v - var) < 4 * var * np.sqrt(2 / (n - 1))), (v, var)
    # Independent noise per output unit and per example.
    c = np.corrcoef(np.asarray(ys).T)[0, 1]
    assert abs(c) < 4 / np.sqrt(n)


def test_dense_gradients_jit_vmap_and_dtypes():
    k1, k2 = jax.random.split(KEY)
    x = jax.random.normal(k1, (4, 3))
    w = jax.random.normal(k2, (3, 2))
    ls2 = jnp.full((3, 2), -2.0)

    def f(w, ls2):
        return jnp.sum(jnp.tanh(jaxreg.sparse_vd_dense(KEY, x, w, ls2)))

    check_grads(f, (w, ls2), order=1, modes=("rev",))
    eager = jaxreg.sparse_vd_dense(KEY, x, w, ls2)
    jitted = jax.jit(lambda k: jaxreg.sparse_vd_dense(k, x, w, ls2))(KEY)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)
    per_example = jax.vmap(
        lambda k, xi: jaxreg.sparse_vd_dense(k, xi, w, ls2), in_axes=(0, 0)
    )(jax.random.split(KEY, 4), x)
    assert per_example.shape == (4, 2)
    y16 = jaxreg.sparse_vd_dense(KEY, x.astype(jnp.bfloat16), w, ls2)
    assert y16.dtype == jnp.bfloat16 and y16.shape == (4, 2)


def test_sparse_vd_bad_inputs():
    x = jnp.ones((2, 3))
    w = jnp.ones((3, 4))
    s = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match="log_sigma2"):
        jaxreg.sparse_vd_log_alpha(w, jnp.zeros((4, 3)))
    with pytest.raises(TypeError, match="`w`"):
        jaxreg.sparse_vd_log_alpha(jnp.ones((3, 4), jnp.int32), s)
    with pytest.raises(ValueError, match="`x`.*d_in=3"):
        jaxreg.sparse_vd_dense(KEY, jnp.ones((2, 5)), w, s)
    with pytest.raises(ValueError, match="`w`.*matrix"):
        jaxreg.sparse_vd_dense(KEY, x, jnp.ones(3), jnp.zeros(3))
    with pytest.raises(ValueError, match="bias"):
        jaxreg.sparse_vd_dense(KEY, x, w, s, bias=jnp.ones(3))
    with pytest.raises(ValueError, match="`key` is None"):
        jaxreg.sparse_vd_dense(None, x, w, s)
    with pytest.raises(TypeError, match="deterministic"):
        jaxreg.sparse_vd_dense(KEY, x, w, s, deterministic="yes")
    with pytest.raises(ValueError, match="threshold"):
        jaxreg.sparse_vd_prune(w, s, threshold=float("nan"))
    with pytest.raises(TypeError, match="threshold"):
        jaxreg.sparse_vd_pruned_fraction(s, threshold="3")
    with pytest.raises(ValueError, match="log_alpha.*empty"):
        jaxreg.sparse_vd_pruned_fraction([])
    with pytest.raises(ValueError, match="log_alpha.*empty"):
        jaxreg.sparse_vd_kl({})
    with pytest.raises(TypeError, match="log_alpha"):
        jaxreg.sparse_vd_kl(jnp.ones(2, jnp.int32))
