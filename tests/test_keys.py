"""PRNG keys: typed and legacy keys of every implementation, and key errors.

Every public stochastic function validates its key with the same rules, so the
error tests run over all of them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg
from jaxreg._keys import as_key

IMPLS = ["threefry2x32", "rbg", "unsafe_rbg"]

X2 = jnp.ones((4, 6))
X4 = jnp.ones((2, 6, 6, 3))

# Every stochastic entry point, called with a key and a non-trivial rate.
STOCHASTIC = {
    "keep_mask": lambda k: jaxreg.keep_mask(k, (4, 6), 0.5),
    "dropout": lambda k: jaxreg.dropout(k, X2, 0.5),
    "dropout_classic": lambda k: jaxreg.dropout(k, X2, 0.5, inverted=False),
    "spatial_dropout": lambda k: jaxreg.spatial_dropout(k, X4, 0.5),
    "gaussian_dropout": lambda k: jaxreg.gaussian_dropout(k, X2, 0.5),
    "gaussian_noise": lambda k: jaxreg.gaussian_noise(k, X2, 0.5),
    "alpha_dropout": lambda k: jaxreg.alpha_dropout(k, X2, 0.5),
    "drop_path": lambda k: jaxreg.drop_path(k, X2, 0.5),
    "drop_path_batch": lambda k: jaxreg.drop_path(k, X2, 0.5, mode="batch"),
    "dropblock": lambda k: jaxreg.dropblock(k, X4, 0.5, block_size=3),
    "zoneout": lambda k: jaxreg.zoneout(k, X2, 2 * X2, 0.5),
}


def _legacy(seed, impl):
    return jax.random.PRNGKey(seed, impl=impl)


# --- accepted keys -----------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_typed_key_is_returned_unchanged(impl):
    key = jax.random.key(3, impl=impl)
    out = as_key(key)
    assert out is key


@pytest.mark.parametrize("impl", IMPLS)
def test_legacy_key_is_wrapped_as_scalar_typed_key(impl):
    raw = _legacy(3, impl)
    assert raw.dtype == jnp.uint32
    out = as_key(raw)
    assert jnp.issubdtype(out.dtype, jax.dtypes.prng_key)
    assert out.shape == ()
    # the key data survives the wrapping
    np.testing.assert_array_equal(jax.random.key_data(out), raw)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_legacy_and_typed_key_give_the_same_mask(impl):
    typed = jax.random.key(5, impl=impl)
    raw = _legacy(5, impl)
    np.testing.assert_array_equal(
        jaxreg.keep_mask(typed, (64, 33), 0.5), jaxreg.keep_mask(raw, (64, 33), 0.5)
    )


def test_numpy_legacy_key_is_accepted():
    raw = np.asarray(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(
        jaxreg.keep_mask(raw, (100,), 0.5),
        jaxreg.keep_mask(jax.random.PRNGKey(1), (100,), 0.5),
    )


def _same_and_different(fn, make):
    a, b = fn(make(0)), fn(make(0))
    np.testing.assert_array_equal(a, b)  # same key, same output
    # Different keys, different outputs. Some functions draw few coins (drop_path
    # with mode="batch" draws one), so look for a difference among 20 keys: for a
    # correct sampler all 20 agree with probability <= 2**-19.
    assert any(not np.array_equal(a, fn(make(seed))) for seed in range(1, 21))


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_every_function_accepts_typed_and_legacy_keys(name):
    # All functions share one key check; each runs with both key kinds.
    fn = STOCHASTIC[name]
    _same_and_different(fn, jax.random.key)
    _same_and_different(fn, jax.random.PRNGKey)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("legacy", [False, True], ids=["typed", "legacy"])
@pytest.mark.parametrize("name", ["keep_mask", "dropout", "dropblock"])
def test_every_key_implementation_works(name, impl, legacy):
    if legacy:
        _same_and_different(STOCHASTIC[name], lambda s: _legacy(s, impl))
    else:
        _same_and_different(STOCHASTIC[name], lambda s: jax.random.key(s, impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("legacy", [False, True], ids=["typed", "legacy"])
def test_keys_work_under_jit(impl, legacy):
    key = _legacy(2, impl) if legacy else jax.random.key(2, impl=impl)
    f = jax.jit(lambda k, x: jaxreg.dropout(k, x, 0.3))
    np.testing.assert_array_equal(f(key, X2), jaxreg.dropout(key, X2, 0.3))


@pytest.mark.parametrize("impl", IMPLS)
def test_legacy_key_keep_rate(impl):
    # A wrapped legacy key of each implementation produces a correct Bernoulli mask:
    # 10^6 draws, 4-sigma binomial bound.
    n, rate = 10**6, 0.3
    kept = int(jaxreg.keep_mask(_legacy(7, impl), (n,), rate).sum())
    sigma = np.sqrt(n * rate * (1 - rate))
    assert abs(kept - n * (1 - rate)) < 4 * sigma


def test_default_impl_rbg_legacy_keys(monkeypatch):
    # With jax_default_prng_impl = unsafe_rbg, jax.random.PRNGKey makes (4,) keys
    # of that implementation and they are wrapped as such.
    previous = jax.config.jax_default_prng_impl
    try:
        jax.config.update("jax_default_prng_impl", "unsafe_rbg")
        raw = jax.random.PRNGKey(0)
        assert raw.shape == (4,)
        key = as_key(raw)
        assert "unsafe_rbg" in str(jax.random.key_impl(key))
        np.testing.assert_array_equal(
            jaxreg.keep_mask(raw, (50,), 0.5),
            jaxreg.keep_mask(jax.random.wrap_key_data(raw), (50,), 0.5),
        )
    finally:
        jax.config.update("jax_default_prng_impl", previous)


# --- key errors --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_missing_key_says_how_to_pass_one(name):
    with pytest.raises(ValueError, match=r"`key` is None.*jax\.random\.key\(0\)"):
        STOCHASTIC[name](None)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
@pytest.mark.parametrize("legacy", [False, True], ids=["typed", "legacy"])
def test_batched_key_says_use_vmap(name, legacy):
    keys = jax.random.split(jax.random.PRNGKey(0) if legacy else jax.random.key(0), 3)
    shape = r"\(3, 2\)" if legacy else r"\(3,\)"
    with pytest.raises(ValueError, match=rf"`key` is a batch of .*{shape}.*jax\.vmap"):
        STOCHASTIC[name](keys)


NOT_KEYS = {
    "int": (3, r"got int 3"),
    "float": (0.5, r"got float 0\.5"),
    "str": ("seed", r"got str 'seed'"),
    "float_array": (jnp.zeros(2), r"shape \(2,\) and dtype float32"),
    "int32_array": (jnp.zeros(2, jnp.int32), r"shape \(2,\) and dtype int32"),
    "uint32_bad_shape": (jnp.zeros(3, jnp.uint32), r"shape \(3,\) and dtype uint32"),
    "uint32_scalar": (jnp.uint32(7), r"shape \(\) and dtype uint32"),
    "numpy_float": (np.zeros(2), r"shape \(2,\) and dtype float64"),
    "list": ([0, 1], r"got list \[0, 1\]"),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
@pytest.mark.parametrize("bad", sorted(NOT_KEYS))
def test_non_key_object_is_a_type_error(name, bad):
    value, shown = NOT_KEYS[bad]
    with pytest.raises(TypeError, match=rf"`key` must be a JAX PRNG key.*{shown}"):
        STOCHASTIC[name](value)


def test_key_error_uses_the_given_argument_name():
    with pytest.raises(ValueError, match=r"`rng` is None, but we sample"):
        as_key(None, name="rng", why="we sample")
    with pytest.raises(TypeError, match=r"`rng` must be a JAX PRNG key"):
        as_key(1.5, name="rng")


def test_key_may_be_none_on_the_deterministic_path():
    x = jnp.arange(6.0).reshape(2, 3)
    x4 = jnp.ones((1, 4, 4, 2))
    for fn, arg in [
        (jaxreg.dropout, x),
        (jaxreg.gaussian_dropout, x),
        (jaxreg.alpha_dropout, x),
        (jaxreg.drop_path, x),
        (jaxreg.spatial_dropout, x4),
        (jaxreg.dropblock, x4),
    ]:
        np.testing.assert_array_equal(fn(None, arg, 0.5, deterministic=True), arg)
    np.testing.assert_array_equal(
        jaxreg.gaussian_noise(None, x, 1.0, deterministic=True), x
    )
    out = jaxreg.zoneout(None, x, x + 1, 0.5, deterministic=True)
    np.testing.assert_allclose(out, x + 0.5)
