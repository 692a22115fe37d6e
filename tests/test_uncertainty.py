"""Tests for jaxreg.uncertainty: MC-dropout predictive mean and variance.

Statistical checks use 4-sigma bounds from the exact moments of the dropout
masks (false-alarm probability about 6e-5 per check); keys are fixed.
"""

import json
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import run_on_8_cpu_devices
from jax.test_util import check_grads

import jaxreg
from jaxreg import dropout, keep_probability, mc_dropout_predict

K = jax.random.key


def _linear_setup(n_in=16, seed=0):
    kx, kw = jax.random.split(K(seed))
    x = jax.random.normal(kx, (n_in,))
    w = jax.random.normal(kw, (n_in,))
    return x, w


def _explicit(fn, key, args, num_samples):
    """Statistics of fn over jax.random.split(key, T), in float64 NumPy."""
    keys = jax.random.split(key, num_samples)
    ys = [jax.tree_util.tree_map(np.asarray, fn(k, *args)) for k in keys]
    stacked = jax.tree_util.tree_map(lambda *a: np.stack(a).astype(np.float64), *ys)
    mean = jax.tree_util.tree_map(lambda y: y.mean(0), stacked)
    var = jax.tree_util.tree_map(lambda y: y.var(0), stacked)
    return mean, var


def _inverted_dropout_linear_moments(x, w, rate):
    """Exact sigma^2 and mu_4 of y = sum_j w_j x_j m_j / p, m_j ~ Bernoulli(p)."""
    p = keep_probability(rate)
    c = np.asarray(x, np.float64) * np.asarray(w, np.float64) / p
    q = p * (1 - p)
    var = q * np.sum(c**2)
    mu4 = q * (1 - 6 * q) * np.sum(c**4) + 3 * var**2
    return var, mu4


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 25, 100, 1000])
def test_equals_explicit_statistics_over_split_keys(chunk_size):
    x, w = _linear_setup()

    # A pytree output, including a 2-tuple (which must not confuse the merging).
    def fn(k, x):
        h = dropout(k, x, 0.3)
        return {"y": h @ w, "pair": (h[:3], jnp.tanh(h))}

    mean, var = mc_dropout_predict(fn, K(1), x, num_samples=100, chunk_size=chunk_size)
    e_mean, e_var = _explicit(fn, K(1), (x,), 100)
    assert jax.tree_util.tree_structure(mean) == jax.tree_util.tree_structure(e_mean)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5),
        (mean, var),
        (e_mean, e_var),
    )


def test_linear_model_matches_analytic_variance():
    """fn = inverted dropout on the inputs, then linear:
    E[y] = w.x and Var[y] = sum_j w_j^2 x_j^2 (1 - p) / p."""
    x, w = _linear_setup()
    rate, n = 0.3, 20_000
    p = keep_probability(rate)
    fn = lambda k, x: dropout(k, x, rate) @ w  # noqa: E731
    mean, var = mc_dropout_predict(fn, K(2), x, num_samples=n, chunk_size=2000)
    sigma2, mu4 = _inverted_dropout_linear_moments(x, w, rate)
    np.testing.assert_allclose(
        sigma2, np.sum((np.asarray(w) * np.asarray(x)) ** 2) * (1 - p) / p, rtol=1e-6
    )
    assert abs(float(mean) - float(x @ w)) <= 4 * math.sqrt(sigma2 / n)
    e_v = (n - 1) / n * sigma2
    sd_v = math.sqrt((n - 1) ** 2 / n**3 * mu4 - (n - 1) * (n - 3) / n**3 * sigma2**2)
    assert abs(float(var) - e_v) <= 4 * sd_v, (float(var), sigma2, sd_v)


def test_variance_tends_to_zero_with_rate():
    x, w = _linear_setup(n_in=64, seed=1)
    n = 4000
    estimates = []
    for rate in (0.3, 0.03, 0.003):
        fn = lambda k, x, r=rate: dropout(k, x, r) @ w  # noqa: E731
        _, var = mc_dropout_predict(fn, K(3), x, num_samples=n, chunk_size=1000)
        sigma2, mu4 = _inverted_dropout_linear_moments(x, w, rate)
        e_v = (n - 1) / n * sigma2
        sd_v = math.sqrt(
            (n - 1) ** 2 / n**3 * mu4 - (n - 1) * (n - 3) / n**3 * sigma2**2
        )
        assert abs(float(var) - e_v) <= 4 * sd_v, (rate, float(var), sigma2)
        estimates.append(float(var))
    assert estimates[0] > estimates[1] > estimates[2] > 0
    fn0 = lambda k, x: dropout(k, x, 0.0) @ w  # noqa: E731
    mean0, var0 = mc_dropout_predict(fn0, K(3), x, num_samples=n, chunk_size=1000)
    # No noise: every sample equals w.x; only float rounding of the mean remains.
    assert float(var0) <= (1e-6 * abs(float(x @ w))) ** 2
    np.testing.assert_allclose(mean0, x @ w, rtol=1e-6)


def test_single_sample_has_zero_variance():
    x, w = _linear_setup()
    fn = lambda k, x: dropout(k, x, 0.5) * w  # noqa: E731
    mean, var = mc_dropout_predict(fn, K(0), x, num_samples=1)
    np.testing.assert_array_equal(mean, fn(jax.random.split(K(0), 1)[0], x))
    np.testing.assert_array_equal(var, 0.0)


def test_check_grads_at_fixed_key():
    x, w = _linear_setup(n_in=4)
    fn = lambda k, x, w: jnp.tanh(dropout(k, x, 0.4) * w)  # noqa: E731
    for chunk_size in (None, 3):
        check_grads(
            lambda x, w, c=chunk_size: mc_dropout_predict(
                fn, K(1), x, w, num_samples=10, chunk_size=c
            ),
            (x, w),
            order=1,
            modes=("fwd", "rev"),
            atol=1e-2,
            rtol=1e-2,
            eps=1e-3,
        )


def test_jit_equals_eager_and_vmap_over_inputs():
    x, w = _linear_setup()
    fn = lambda k, x: dropout(k, x, 0.3) @ w  # noqa: E731
    eager = mc_dropout_predict(fn, K(4), x, num_samples=50, chunk_size=7)
    jitted = jax.jit(
        lambda k, x: mc_dropout_predict(fn, k, x, num_samples=50, chunk_size=7)
    )(K(4), x)
    # Same samples; a fused program may round the running statistics differently.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        jitted,
        eager,
    )
    xs = jnp.stack([x, 2 * x, -x])
    mapped = jax.vmap(
        lambda x: mc_dropout_predict(fn, K(4), x, num_samples=50, chunk_size=7)
    )(xs)
    for i in range(3):
        single = mc_dropout_predict(fn, K(4), xs[i], num_samples=50, chunk_size=7)
        np.testing.assert_allclose(mapped[0][i], single[0], rtol=1e-6)
        np.testing.assert_allclose(mapped[1][i], single[1], rtol=1e-5)


def test_low_precision_and_integer_outputs_accumulate_in_float32():
    x, w = _linear_setup()
    fn = lambda k, x: dropout(k, x.astype(jnp.bfloat16), 0.3)  # noqa: E731
    mean, var = mc_dropout_predict(fn, K(5), x, num_samples=64, chunk_size=10)
    assert mean.dtype == var.dtype == jnp.float32
    e_mean, e_var = _explicit(fn, K(5), (x,), 64)
    np.testing.assert_allclose(mean, e_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, e_var, rtol=1e-4, atol=1e-5)
    count = lambda k, x: jnp.sum(jaxreg.keep_mask(k, (100,), 0.5))  # noqa: E731
    mean, var = mc_dropout_predict(count, K(6), x, num_samples=30)
    assert mean.dtype == jnp.float32 and 0 < float(mean) < 100


def test_every_prng_impl_and_legacy_keys(key_impl):
    x, w = _linear_setup()
    rate, n = 0.3, 4000
    fn = lambda k, x: dropout(k, x, rate) @ w  # noqa: E731
    key = jax.random.key(0, impl=key_impl)
    mean, var = mc_dropout_predict(fn, key, x, num_samples=n, chunk_size=1000)
    sigma2, mu4 = _inverted_dropout_linear_moments(x, w, rate)
    assert abs(float(mean) - float(x @ w)) <= 4 * math.sqrt(sigma2 / n)
    sd_v = math.sqrt((n - 1) ** 2 / n**3 * mu4 - (n - 1) * (n - 3) / n**3 * sigma2**2)
    assert abs(float(var) - (n - 1) / n * sigma2) <= 4 * sd_v
    if key_impl == "threefry2x32":
        # vmap over threefry keys reproduces the loop over the split keys exactly.
        e_mean, e_var = _explicit(fn, key, (x,), 40)
        a = mc_dropout_predict(fn, key, x, num_samples=40, chunk_size=7)
        np.testing.assert_allclose(a[0], e_mean, rtol=1e-5)
        np.testing.assert_allclose(a[1], e_var, rtol=1e-4)
    if key_impl != "unsafe_rbg":
        # A raw (4,)-word key is read as rbg (raw data cannot tell unsafe_rbg
        # apart), so only threefry and rbg raw keys reproduce their typed key.
        a = mc_dropout_predict(fn, key, x, num_samples=9, chunk_size=4)
        raw = jax.random.key_data(key)
        b = mc_dropout_predict(fn, raw, x, num_samples=9, chunk_size=4)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


_SHARDING_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxreg

    mesh = Mesh(np.array(jax.devices()), ("d",))
    x = jax.random.normal(jax.random.key(1), (32, 16))
    w = jax.random.normal(jax.random.key(2), (16, 8))

    def f(key, x):
        # Elementwise model (no matmul): the samples are the same for every
        # layout; the statistics are sums over the samples.
        fn = lambda k, x: jnp.tanh(jaxreg.dropout(k, x, 0.3) * 2.0 + 1.0)
        return jaxreg.mc_dropout_predict(fn, key, x, num_samples=20, chunk_size=6)

    # Both jitted; the only difference is the input's layout.
    ref = jax.jit(f)(jax.random.key(0), x)
    xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
    out = jax.jit(f)(jax.random.key(0), xs)
    print(json.dumps([float(np.abs(a - b).max()) for a, b in zip(out, ref)]))
    """
)


def test_sharded_inputs_give_the_same_statistics():
    out = run_on_8_cpu_devices(_SHARDING_SCRIPT)
    assert out.returncode == 0, out.stderr
    mean_err, var_err = json.loads(out.stdout.strip().splitlines()[-1])
    # The per-device loops may contract a*b+c into fused multiply-adds
    # differently (XLA:CPU decides per loop shape), so the T = 20 sample sums
    # agree up to rounding: float32 bound 2 T eps max|term|, with |tanh| <= 1 for
    # the mean and squared deviations <= 4 for the variance.
    eps = np.finfo(np.float32).eps
    assert mean_err <= 2 * 20 * eps
    assert var_err <= 2 * 20 * eps * 4


def test_bad_inputs():
    x, w = _linear_setup()
    fn = lambda k, x: dropout(k, x, 0.3) @ w  # noqa: E731
    for bad in (0, -3):
        with pytest.raises(
            ValueError, match=f"`num_samples` must be >= 1; got num_samples={bad}"
        ):
            mc_dropout_predict(fn, K(0), x, num_samples=bad)
    for bad in (2.0, True, None):
        with pytest.raises(TypeError, match="`num_samples` must be a Python int"):
            mc_dropout_predict(fn, K(0), x, num_samples=bad)
    with pytest.raises(ValueError, match="`chunk_size` must be >= 1; got chunk_size=0"):
        mc_dropout_predict(fn, K(0), x, num_samples=4, chunk_size=0)
    with pytest.raises(TypeError, match="`chunk_size` must be a Python int"):
        mc_dropout_predict(fn, K(0), x, num_samples=4, chunk_size=1.5)
    with pytest.raises(TypeError, match="`fn` must be a callable"):
        mc_dropout_predict("model", K(0), x, num_samples=4)
    with pytest.raises(ValueError, match="batch of keys.*vmap"):
        mc_dropout_predict(fn, jax.random.split(K(0), 3), x, num_samples=4)
    with pytest.raises(ValueError, match="`key` is None"):
        mc_dropout_predict(fn, None, x, num_samples=4)
    with pytest.raises(TypeError):
        mc_dropout_predict(fn, K(0), x)  # num_samples is required


def test_exported():
    assert "mc_dropout_predict" in jaxreg.__all__
