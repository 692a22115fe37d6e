"""Keys per layer, call site and step (``jaxreg.derive_key``, ``jaxreg.layer_keys``).

The specification: a key is a pure function of (key, path); distinct paths give
distinct, independent keys; indices may be traced (``scan``/``vmap`` over layers,
a step counter under ``jit``); the kind of key (typed or legacy, any
implementation) is preserved. Key data are integers, so equalities are exact.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial

import jaxreg
from jaxreg import derive_key, layer_keys

BASE = jax.random.key(2024)
SITES = ("attn", "mlp", "drop_path")


def _data(key) -> tuple[int, ...]:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_keys_are_distinct_across_steps_sites_and_layers():
    keys = {}
    for step, site, layer in itertools.product(range(4), SITES, range(8)):
        step_key = derive_key(BASE, step)
        keys[(step, site, layer)] = _data(derive_key(step_key, site, layer))
    assert len(set(keys.values())) == len(keys) == 4 * 3 * 8
    # ... and distinct from the step keys and the base key themselves.
    others = {_data(BASE)} | {_data(derive_key(BASE, s)) for s in range(4)}
    assert not others & set(keys.values())


def test_the_naive_patterns_collide_where_derive_key_does_not():
    # fold_in(key, step + layer) repeats across steps; derive_key(key, step, layer)
    # does not: the path is folded element by element.
    naive = {_data(jax.random.fold_in(BASE, s + i)) for s in range(3) for i in range(3)}
    assert len(naive) == 5  # 9 (step, layer) pairs, 5 distinct keys
    derived = {_data(derive_key(BASE, s, i)) for s in range(3) for i in range(3)}
    assert len(derived) == 9


def test_path_structure_matters():
    cases = [
        ("a",),
        ("a", 0),
        (0, "a"),
        ("a", 1),
        ("b", 0),
        (0,),
        (0, 0),
        ("a", "a"),
        ("",),
    ]
    datas = [_data(derive_key(BASE, *path)) for path in cases]
    assert len(set(datas)) == len(cases)


def test_same_inputs_same_key_eager_and_jit():
    a = derive_key(BASE, "attn", 3)
    b = derive_key(jax.random.key(2024), "attn", 3)
    c = jax.jit(lambda k, i: derive_key(k, "attn", i))(BASE, 3)
    assert _data(a) == _data(b) == _data(c)
    assert _data(derive_key(BASE)) == _data(BASE)  # empty path: the key itself


def test_index_kinds_agree():
    ref = _data(derive_key(BASE, "mlp", 5))
    for index in (5, np.int64(5), np.uint32(5), jnp.int32(5), jnp.uint8(5)):
        assert _data(derive_key(BASE, "mlp", index)) == ref


def test_traced_layer_index_in_scan_matches_eager():
    def body(carry, i):
        return carry, jax.random.key_data(derive_key(BASE, "drop_path", i))

    _, scanned = jax.jit(lambda: jax.lax.scan(body, 0, jnp.arange(6)))()
    eager = np.stack(
        [
            np.asarray(jax.random.key_data(derive_key(BASE, "drop_path", i)))
            for i in range(6)
        ]
    )
    np.testing.assert_array_equal(scanned, eager)


def test_scan_over_layers_gives_each_layer_its_own_mask():
    rate, n = 0.5, 4096

    def body(h, i):
        mask = jaxreg.keep_mask(derive_key(BASE, "dropout", i), (n,), rate)
        return h, mask

    _, masks = jax.lax.scan(body, 0, jnp.arange(5))
    masks = np.asarray(masks)
    for i, j in itertools.combinations(range(5), 2):
        # Independent layers agree on each unit with probability 1/2.
        assert_binomial(int((masks[i] == masks[j]).sum()), n, 0.5)


def test_traced_step_index_under_jit():
    @jax.jit
    def step_key(step):
        return jax.random.key_data(derive_key(derive_key(BASE, step), "mlp", 0))

    datas = {tuple(np.asarray(step_key(s)).tolist()) for s in range(10)}
    assert len(datas) == 10


def test_layer_keys_matches_derive_key_and_vmap():
    keys = layer_keys(BASE, 5, "attn")
    assert keys.shape == (5,)
    for i in range(5):
        assert _data(keys[i]) == _data(derive_key(BASE, "attn", i))
    vmapped = jax.vmap(lambda i: derive_key(BASE, "attn", i))(jnp.arange(5))
    np.testing.assert_array_equal(
        jax.random.key_data(vmapped), jax.random.key_data(keys)
    )
    # Without a path, layer i's key is derive_key(key, i), and sites derive from it.
    plain = layer_keys(BASE, 3)
    assert _data(derive_key(plain[2], "attn")) == _data(derive_key(BASE, 2, "attn"))


def test_key_kinds_and_implementations(key_impl):
    typed = jax.random.key(7, impl=key_impl)
    out = derive_key(typed, "mlp", 1)
    assert jnp.issubdtype(out.dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(out) == jax.random.key_impl(typed)
    legacy = jax.random.key_data(typed)
    raw = derive_key(legacy, "mlp", 1)
    assert raw.dtype == jnp.uint32 and raw.shape == legacy.shape
    if key_impl != "unsafe_rbg":  # a raw (4,) key is read as rbg unless configured
        np.testing.assert_array_equal(raw, jax.random.key_data(out))
    raws = layer_keys(legacy, 3, "mlp")
    assert raws.shape == (3, *legacy.shape) and raws.dtype == jnp.uint32
    # The result works as a key for every jaxreg function.
    assert jaxreg.keep_mask(raw, (8,), 0.5).shape == (8,)


@pytest.mark.parametrize(
    "path, err, match",
    [
        ((1.0,), TypeError, r"path element 0 is float 1\.0"),
        (("a", True), TypeError, r"path element 1 is bool True"),
        ((None,), TypeError, r"path element 0 is NoneType"),
        ((-1,), ValueError, r"\[0, 2\*\*31\); path element 0 is -1"),
        ((2**31,), ValueError, r"path element 0 is 2147483648"),
        ((jnp.int32(-3),), ValueError, r"path element 0 is -3"),
        (
            (jnp.arange(3),),
            ValueError,
            r"must be scalars; path element 0 has shape \(3,\)",
        ),
        (
            (jnp.float32(2.0),),
            TypeError,
            r"integer dtype; path element 0 has dtype float32",
        ),
    ],
)
def test_bad_path_elements(path, err, match):
    with pytest.raises(err, match=match):
        derive_key(BASE, *path)


def test_bad_keys_and_layer_counts():
    with pytest.raises(ValueError, match="`key` is None"):
        derive_key(None, "a")
    with pytest.raises(ValueError, match="batch of keys"):
        derive_key(jax.random.split(BASE, 2), "a")
    with pytest.raises(TypeError, match="`key` must be a JAX PRNG key"):
        derive_key(3, "a")
    with pytest.raises(
        ValueError, match=r"`num_layers` must be >= 1; got num_layers=0"
    ):
        layer_keys(BASE, 0)
    with pytest.raises(
        TypeError, match=r"`num_layers` must be a Python int; got float 2\.0"
    ):
        layer_keys(BASE, 2.0)
