"""Bad and edge-case inputs across the pure-function API, organised by class.

The classes are those of issue 14: (1) non-float leaves in parameter trees, (2)
norms that would overflow or underflow, (3) non-finite or out-of-domain
hyperparameters, (4) shapes and axes, (5) misuse of the early-stopping state.
Keras parity of early stopping (class 6) lives in ``test_stopping.py``. Each test
asserts the specified behaviour for every function the class applies to, so a
function added to a class later belongs in its parameter list.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg

KEY = jax.random.key(0)
INF = float("inf")
NAN = float("nan")


def _is_float(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


# ---------------------------------------------------------------------------
# Class 1: non-float leaves are skipped, the same way, by every penalty,
# transform and dropconnect_params, in every pytree flavour.
# ---------------------------------------------------------------------------


def _linen_tree():
    """A linen-style variable dict with an int step counter and a bool flag."""
    rng = np.random.default_rng(0)
    return {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(rng.normal(size=(3, 4)) * 2, jnp.float32),
                "bias": jnp.asarray(rng.normal(size=4), jnp.float32),
            }
        },
        "step": jnp.array(3, jnp.int32),
        "flag": jnp.array([True, False]),
    }


def _nnx_state():
    """``nnx.state(model)`` of a model with an int and a bool Variable."""
    from flax import nnx

    class Count(nnx.Variable):
        pass

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 4, rngs=rngs)
            self.step = Count(jnp.array(3, jnp.int32))
            self.flag = nnx.Variable(jnp.array([True, False]))

    return nnx.state(Net(nnx.Rngs(0)))


def _equinox_params():
    """``eqx.filter(module, eqx.is_array)`` of a module with int and bool fields
    (and an activation function, a non-array leaf that the filter drops)."""
    import equinox as eqx

    class Layer(eqx.Module):
        weight: jax.Array
        bias: jax.Array
        step: jax.Array
        flag: jax.Array
        activation: object

    rng = np.random.default_rng(1)
    layer = Layer(
        weight=jnp.asarray(rng.normal(size=(3, 4)) * 2, jnp.float32),
        bias=jnp.asarray(rng.normal(size=4), jnp.float32),
        step=jnp.array(3, jnp.int32),
        flag=jnp.array([True, False]),
        activation=jax.nn.relu,
    )
    return eqx.filter(layer, eqx.is_array)


FLAVOURS = {"linen": _linen_tree, "nnx": _nnx_state, "equinox": _equinox_params}


def _updates_for(flavour, params):
    """Gradients as each framework gives them: zeros of the leaf's own dtype for
    the non-float leaves (linen, nnx), None for them (Equinox's filter_grad)."""
    rng = np.random.default_rng(2)

    def one(p):
        if _is_float(p):
            return jnp.asarray(rng.normal(size=p.shape), p.dtype)
        return None if flavour == "equinox" else jnp.zeros_like(p)

    return jax.tree.map(one, params)


TRANSFORMS = {
    "add_l1": lambda: jaxreg.add_l1(0.1),
    "add_l2": lambda: jaxreg.add_l2(0.1),
    "add_penalty": lambda: jaxreg.add_penalty(
        functools.partial(jaxreg.group_lasso, axis=-1), 0.1
    ),
    "l1_prox": lambda: jaxreg.l1_prox(0.5, 1.0),
    "elastic_net_prox": lambda: jaxreg.elastic_net_prox(0.5, 1.0, l1_ratio=0.3),
    "group_lasso_prox": lambda: jaxreg.group_lasso_prox(0.5, 1.0, axis=-1),
    "max_norm_constraint": lambda: jaxreg.max_norm_constraint(1.0, axis=-1),
    "unit_norm_constraint": lambda: jaxreg.unit_norm_constraint(axis=-1),
    "min_max_norm_constraint": lambda: jaxreg.min_max_norm_constraint(
        0.5, 1.0, axis=-1
    ),
    "non_neg_constraint": jaxreg.non_neg_constraint,
    "project": lambda: jaxreg.project(jnp.tanh),
}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_class1_transforms_skip_int_and_bool_leaves(flavour):
    params = FLAVOURS[flavour]()
    updates = _updates_for(flavour, params)
    leaves = jax.tree.leaves(params)
    floats = [p for p in leaves if _is_float(p)]
    assert len(floats) == 2 and len(leaves) == 4  # kernel, bias, step, flag
    float_updates = [u for u in jax.tree.leaves(updates) if _is_float(u)]
    for name, make in TRANSFORMS.items():
        tx = make()
        out, _ = tx.update(updates, tx.init(params), params)
        assert jax.tree.structure(out) == jax.tree.structure(updates), name
        # Non-float leaves: the update passes through untouched (the same object).
        for u, o in zip(
            jax.tree.leaves(updates, is_leaf=lambda x: x is None),
            jax.tree.leaves(out, is_leaf=lambda x: x is None),
            strict=True,
        ):
            if u is None or not _is_float(u):
                assert o is u, name
        # Float leaves: exactly what the transform gives on the floats alone.
        ref = make()
        expected, _ = ref.update(float_updates, ref.init(floats), floats)
        got = [o for o in jax.tree.leaves(out) if _is_float(o)]
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_class1_penalties_and_dropconnect_skip_int_and_bool_leaves(flavour):
    params = FLAVOURS[flavour]()
    floats = [p for p in jax.tree.leaves(params) if _is_float(p)]
    for penalty in (
        jaxreg.l1,
        jaxreg.l2,
        jaxreg.elastic_net,
        functools.partial(jaxreg.group_lasso, axis=-1),
    ):
        np.testing.assert_allclose(penalty(params), penalty(floats), rtol=1e-6)
        # A mask that selects every leaf (the non-float ones too) changes nothing.
        every = jax.tree.map(lambda _: True, params)
        np.testing.assert_allclose(
            penalty(params, mask=every), penalty(floats), rtol=1e-6
        )
    out = jaxreg.dropconnect_params(KEY, params, 0.5)
    for p, o in zip(jax.tree.leaves(params), jax.tree.leaves(out), strict=True):
        if _is_float(p):
            o, p = np.asarray(o), np.asarray(p)
            assert ((o == 0) | (o == 2 * p)).all()  # each weight dropped or kept
        else:
            assert o is p


def test_class1_l1_prox_never_moves_a_step_counter():
    params = {"w": jnp.array([2.0, -0.1]), "step": jnp.array(3)}
    updates = {"w": jnp.zeros(2), "step": jnp.array(0)}
    for tx in (jaxreg.l1_prox(1.0, 1.0), jaxreg.elastic_net_prox(1.0, 1.0)):
        state = tx.init(params)
        p = params
        for _ in range(3):
            u, state = tx.update(updates, state, p)
            p = optax.apply_updates(p, u)
        assert int(p["step"]) == 3 and p["step"].dtype == params["step"].dtype


def test_class1_add_penalty_with_int_leaves_and_float0_gradients():
    # The penalty gradient is taken with respect to the float leaves only; the
    # float0 gradient jax.grad(allow_int=True) gives an int leaf passes through.
    params = {"w": jnp.array([1.0, -2.0]), "step": jnp.array(3)}
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2), allow_int=True)(params)
    for tx in (jaxreg.add_l2(0.5), jaxreg.add_penalty(jaxreg.l2, 0.5)):
        u, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(u["w"], 2.5 * params["w"], rtol=1e-7)
        assert u["step"] is grads["step"]


def test_class1_errors_name_the_leaf_and_the_mask_argument():
    params = _linen_tree()
    updates = _updates_for("linen", params)
    leaf = r"leaf 'params/Dense_0/bias' of shape \(4,\); exclude it with `mask`"
    for tx in (
        jaxreg.max_norm_constraint(1.0, axis=1),
        jaxreg.unit_norm_constraint(axis=(0, 1)),
        jaxreg.group_lasso_prox(0.1, 0.1, axis=1),
        jaxreg.add_penalty(functools.partial(jaxreg.group_lasso, axis=1), 0.1),
    ):
        with pytest.raises(ValueError, match=rf"`axis`=.*rank 1.*{leaf}"):
            tx.update(updates, tx.init(params), params)
    with pytest.raises(
        ValueError, match=r"needs 2-D kernels; leaf 'params/Dense_0/bias' has shape"
    ):
        jaxreg.orthogonal(params)

    def picky(w):
        if w.ndim != 2:
            raise ValueError(f"`w` must be 2-D; got shape {w.shape}.")
        return w

    tx = jaxreg.project(picky)
    with pytest.raises(ValueError, match=rf"must be 2-D; got shape \(4,\)\. \({leaf}"):
        tx.update(updates, tx.init(params), params)
    # The mask that excludes the leaf makes all of them work.
    tx = jaxreg.max_norm_constraint(1.0, axis=1, mask=jaxreg.mask_by_ndim)
    tx.update(updates, tx.init(params), params)


def test_class1_mask_means_the_same_for_penalties_transforms_and_dropconnect():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    prefix = {"dense": True}
    for mask in (prefix, lambda p: prefix, {"dense": {"kernel": True, "bias": True}}):
        assert float(jaxreg.l1(params, mask=mask)) == 6.0
        tx = jaxreg.add_l1(1.0, mask=mask)
        u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        assert all(bool((leaf == 1).all()) for leaf in jax.tree.leaves(u))
        out = jaxreg.dropconnect_params(KEY, params, 1.0, mask=mask)
        assert all(bool((leaf == 0).all()) for leaf in jax.tree.leaves(out))
    bad = {"dense": {"kernel": 1, "bias": True}}
    message = r"`mask` leaves must be Python bools.*got int 1 at 'dense/kernel'"
    for call in (
        lambda: jaxreg.l1(params, mask=bad),
        lambda: jaxreg.add_l1(1.0, mask=bad),
        lambda: jaxreg.dropconnect_params(KEY, params, 0.5, mask=bad),
    ):
        with pytest.raises(TypeError, match=message):
            call()
    other = {"dense": {"kernel": True}}
    message = r"`mask` must have the same tree structure as `params`.*\n  mask:"
    for call in (
        lambda: jaxreg.l1(params, mask=other),
        lambda: jaxreg.add_l1(1.0, mask=other).init(params),
        lambda: jaxreg.dropconnect_params(KEY, params, 0.5, mask=other),
    ):
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------------
# Class 2: norms are computed with scaling; projections stay exact at 1e-30 and
# 1e30 in float32 and bfloat16, gradients stay finite.
# ---------------------------------------------------------------------------

SCALES = [1e-30, 1e30]
DTYPES = [jnp.float32, jnp.bfloat16]


def _weights(scale, dtype, shape=(6, 3)):
    w = np.random.default_rng(3).normal(size=shape) * scale
    return jnp.asarray(w, jnp.float32).astype(dtype)


def _norms64(w, axis=0):
    w = np.asarray(w, np.float64)
    return np.sqrt((w**2).sum(axis=axis))


def _eps(dtype):
    return float(jnp.finfo(dtype).eps)


def _transformed(tx, w):
    """The transform applied to the stepped weights ``w`` (from params 0).

    Starting from 0 keeps ``apply_updates`` exact; from params of another
    magnitude it rounds the result relative to the larger of the two.
    """
    params = jnp.zeros_like(w)
    return optax.apply_updates(params, tx.update(w, tx.init(params), params)[0])


# name -> (projection of w, norm of every column afterwards given the input norms)
PROJECTIONS = {
    "max_norm": (
        lambda w: jaxreg.max_norm(w, 1.5),
        lambda n: np.minimum(n, 1.5),
    ),
    "unit_norm": (jaxreg.unit_norm, lambda n: np.ones_like(n)),
    "min_max_norm": (
        lambda w: jaxreg.min_max_norm(w, 0.5, 2.0),
        lambda n: np.clip(n, 0.5, 2.0),
    ),
    "max_norm_constraint": (
        lambda w: _transformed(jaxreg.max_norm_constraint(1.5), w),
        lambda n: np.minimum(n, 1.5),
    ),
    "unit_norm_constraint": (
        lambda w: _transformed(jaxreg.unit_norm_constraint(), w),
        lambda n: np.ones_like(n),
    ),
    "min_max_norm_constraint": (
        lambda w: _transformed(jaxreg.min_max_norm_constraint(0.5, 2.0), w),
        lambda n: np.clip(n, 0.5, 2.0),
    ),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_class2_projections_are_exact_at_extreme_scales(name, scale, dtype):
    project, target = PROJECTIONS[name]
    w = _weights(scale, dtype)
    out = project(w)
    assert out.dtype == dtype
    assert np.isfinite(np.asarray(out, np.float32)).all()
    # The norm reaches the target up to the rounding of the output to its dtype
    # (each entry within half an ulp: the norm within eps(dtype) relative).
    np.testing.assert_allclose(
        _norms64(out), target(_norms64(w)), rtol=4 * _eps(dtype), atol=0
    )
    # Directions are preserved (unit vectors agree to the same rounding).
    before = np.asarray(w, np.float64) / _norms64(w)
    after = np.asarray(out, np.float64) / _norms64(out)
    np.testing.assert_allclose(after, before, rtol=0, atol=2 * _eps(dtype))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["max_norm", "unit_norm", "min_max_norm"])
def test_class2_projection_gradients_are_finite_and_correct(name, scale):
    project, _ = PROJECTIONS[name]
    w = _weights(scale, jnp.float32)
    cot = jnp.asarray(np.random.default_rng(4).normal(size=w.shape), jnp.float32)
    grad = jax.grad(lambda w: jnp.sum(project(w) * cot))
    g = grad(w)
    assert np.isfinite(np.asarray(g)).all()
    if name == "max_norm" and scale < 1:  # inside the bound: the identity map
        np.testing.assert_array_equal(g, cot)
        return
    # Projected onto a fixed norm, the map is homogeneous of degree 0: for the
    # same weights scaled by 2**-j (exactly) into the range around 1e3 or 1e-3,
    # the gradient is 2**j times larger.
    j = round(math.log2(scale)) + (-10 if scale > 1 else 10)
    g1 = grad(w * jnp.float32(2.0**-j))
    np.testing.assert_allclose(
        np.asarray(g, np.float64) * 2.0**j, g1, rtol=1e-6, atol=1e-6 * np.abs(g1).max()
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("scale", SCALES)
def test_class2_group_lasso_penalty_prox_and_orthogonal(scale, dtype):
    w = _weights(scale, dtype)
    n = _norms64(w)  # column norms (axis=0 groups)
    value = jaxreg.group_lasso(w, axis=0)
    np.testing.assert_allclose(value, math.sqrt(6) * n.sum(), rtol=1e-6)
    g = jax.grad(lambda w: jaxreg.group_lasso(w, axis=0))(w.astype(jnp.float32))
    np.testing.assert_allclose(
        g, math.sqrt(6) * np.asarray(w, np.float64) / n, rtol=2e-6, atol=1e-7
    )
    # Block soft-thresholding with t = half the smallest group's threshold scale:
    # no group is zeroed, each shrinks by 1 - t sqrt(6) / |w_g|.
    t = 0.5 * n.min() / math.sqrt(6)
    out = _transformed(jaxreg.group_lasso_prox(t, 1.0, axis=0), w)
    expected = np.asarray(w, np.float64) * (1 - t * math.sqrt(6) / n)
    np.testing.assert_allclose(
        np.asarray(out, np.float64), expected, rtol=4 * _eps(dtype), atol=0
    )
    # The orthogonality penalty is scale-free: the same value as for the same
    # weights scaled (exactly) by a power of two into the range around 1.
    unit = w * jnp.asarray(2.0 ** -round(math.log2(scale)), dtype)
    for mode in ("rows", "columns"):
        np.testing.assert_allclose(
            jaxreg.orthogonal(w, mode=mode),
            jaxreg.orthogonal(unit, mode=mode),
            rtol=1e-6,
        )
    go = jax.grad(jaxreg.orthogonal)(w.astype(jnp.float32))
    assert np.isfinite(np.asarray(go)).all()


@settings(max_examples=25, deadline=None)
@given(
    j=st.integers(-100, 100),
    k=st.integers(-100, 100),
    seed=st.integers(0, 2**16),
)
def test_class2_projection_is_invariant_under_power_of_two_scaling(j, k, seed):
    """Property: a slice that exceeds the bound lands on the same point, bit for
    bit, whatever power of two it was scaled by (the scaling is exact)."""
    w = np.random.default_rng(seed).uniform(1.0, 8.0, size=(4, 3))
    wj = jnp.asarray(w * 2.0**j, jnp.float32)
    wk = jnp.asarray(w * 2.0**k, jnp.float32)
    c = 1e-31  # below every slice norm (>= 2**-100)
    np.testing.assert_array_equal(jaxreg.max_norm(wj, c), jaxreg.max_norm(wk, c))


# ---------------------------------------------------------------------------
# Class 3: non-finite or out-of-domain hyperparameters.
# ---------------------------------------------------------------------------

X = jnp.ones((4, 3))
Y1H = jax.nn.one_hot(jnp.arange(4), 4)

# (name shown in the error, call with one bad value)
CONCRETE = [
    ("stddev", lambda v: jaxreg.gaussian_noise(KEY, X, v)),
    ("alpha", lambda v: jaxreg.mixup(KEY, X, Y1H, alpha=v)),
    ("alpha", lambda v: jaxreg.cutmix(KEY, X, Y1H, alpha=v)),
    ("min_value", lambda v: jaxreg.min_max_norm(X, v, v)),
    ("max_value", lambda v: jaxreg.min_max_norm(X, 0.0, v)),
    ("max_value", lambda v: jaxreg.max_norm(X, v)),
    ("max_value", lambda v: jaxreg.max_norm_constraint(v)),
    ("min_value", lambda v: jaxreg.min_max_norm_constraint(v, v)),
    ("strength", lambda v: jaxreg.add_l1(v)),
    ("strength", lambda v: jaxreg.add_l2(v)),
    ("strength", lambda v: jaxreg.add_penalty(jaxreg.l2, v)),
    ("learning_rate", lambda v: jaxreg.l1_prox(0.1, v)),
    ("strength", lambda v: jaxreg.group_lasso_prox(v, 0.1)),
    ("l1_ratio", lambda v: jaxreg.elastic_net_prox(0.1, 0.1, l1_ratio=v)),
    ("l1_ratio", lambda v: jaxreg.elastic_net(X, l1_ratio=v)),
    ("temperature", lambda v: jaxreg.concrete_dropout(KEY, X, 0.0, temperature=v)),
    (
        "weight_regularizer",
        lambda v: jaxreg.concrete_dropout_regularizer(
            X, 0.0, input_dim=3, weight_regularizer=v, dropout_regularizer=0.1
        ),
    ),
    ("min_delta", lambda v: jaxreg.early_stopping(1, min_delta=v)),
    ("baseline", lambda v: jaxreg.early_stopping(1, baseline=v)),
]


@pytest.mark.parametrize("value", [INF, -INF, NAN], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("name, call", CONCRETE, ids=[n for n, _ in CONCRETE])
def test_class3_non_finite_concrete_hyperparameters_are_rejected(name, call, value):
    with pytest.raises(ValueError, match=rf"`{name}` must .*got {name}=-?(inf|nan)"):
        call(value)


def test_class3_module_fields_use_the_same_checkers():
    from flax import nnx

    import jaxreg.linen
    import jaxreg.nnx

    with pytest.raises(ValueError, match=r"`l1` must be finite; got l1=inf"):
        jaxreg.linen.ActivityRegularization(l1=INF)
    with pytest.raises(ValueError, match=r"`stddev` must be finite; got stddev=inf"):
        jaxreg.nnx.GaussianNoise(INF, rngs=nnx.Rngs(0))


def test_class3_traced_out_of_domain_values_are_clipped_never_nan():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 3)), jnp.float32)
    alphas = (-1.0, INF)

    @jax.jit  # one compilation: every value below is traced
    def run(v):
        return {
            # gaussian_dropout behaves like dropout: < 0 acts as 0, > 1 as 1.
            "gaussian_dropout_neg": jaxreg.gaussian_dropout(KEY, x, v["neg"]),
            "gaussian_dropout_big": jaxreg.gaussian_dropout(KEY, x, v["big"]),
            "dropout_neg": jaxreg.dropout(KEY, x, v["neg"]),
            "gaussian_noise_neg": jaxreg.gaussian_noise(KEY, x, v["neg"]),
            # Norm bounds: a negative max_value acts as 0, a rate above 1 as 1.
            "max_norm_neg": jaxreg.max_norm(x, v["neg"]),
            "min_max_rate_big": jaxreg.min_max_norm(x, 0.5, 1.0, rate=v["big"]),
            # A temperature of 0 gives hard (Bernoulli) masks, finite.
            "concrete_t0": jaxreg.concrete_dropout(KEY, x, -1.0, temperature=v["zero"]),
            # Mixing with alpha <= 0 or inf.
            "mix": [
                mix(KEY, x, Y1H, alpha=a)
                for a in v["alphas"]
                for mix in (jaxreg.mixup, jaxreg.cutmix)
            ],
        }

    f32 = jnp.float32
    out = run(
        {
            "neg": f32(-0.5),
            "big": f32(1.5),
            "zero": f32(0.0),
            "alphas": [f32(a) for a in alphas],
        }
    )
    np.testing.assert_array_equal(out["gaussian_dropout_neg"], x)
    np.testing.assert_array_equal(out["dropout_neg"], x)
    np.testing.assert_array_equal(out["gaussian_dropout_big"], jnp.zeros_like(x))
    np.testing.assert_array_equal(out["gaussian_noise_neg"], x)
    np.testing.assert_array_equal(out["max_norm_neg"], jnp.zeros_like(x))
    np.testing.assert_allclose(
        out["min_max_rate_big"], jaxreg.min_max_norm(x, 0.5, 1.0), rtol=1e-6
    )
    assert np.isfinite(np.asarray(out["concrete_t0"])).all()
    assert len(out["mix"]) == 2 * len(alphas)
    for xm, ym in out["mix"]:  # finite, and the labels still sum to one
        assert np.isfinite(np.asarray(xm)).all()
        np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)


def test_class3_traced_negative_strength_or_learning_rate_acts_as_zero():
    params = {"w": jnp.asarray(np.random.default_rng(6).normal(size=(4, 3)))}
    grads = {"w": jnp.ones((4, 3))}
    cases = [
        (jaxreg.add_l1, {"strength": -0.5}),
        (jaxreg.l1_prox, {"strength": 0.5, "learning_rate": -1.0}),
        (jaxreg.elastic_net_prox, {"strength": -0.5, "learning_rate": 1.0}),
    ]
    txs = [optax.inject_hyperparams(f)(**{k: 0.1 for k in kw}) for f, kw in cases]
    states = [tx.init(params) for tx in txs]
    for state, (_, kwargs) in zip(states, cases, strict=True):
        state.hyperparams.update({k: jnp.float32(v) for k, v in kwargs.items()})

    @jax.jit
    def run(states):
        return [
            tx.update(grads, s, params)[0] for tx, s in zip(txs, states, strict=True)
        ]

    for out in run(states):  # the incoming updates, untouched (up to rounding)
        np.testing.assert_allclose(out["w"], grads["w"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("logit", [80.0, 89.0, 1e4])
def test_class3_concrete_dropout_never_overflows_to_nan(logit):
    x = jnp.array([[0.0, 1.0, -2.0], [3.0, 0.5, 0.0]])
    for temperature in (0.1, 1.0):
        f = functools.partial(jaxreg.concrete_dropout, KEY, x, temperature=temperature)
        y = f(jnp.float32(logit))
        g = jax.grad(lambda lg, f=f: jnp.sum(f(lg)))(jnp.float32(logit))
        assert np.isfinite(np.asarray(y)).all() and np.isfinite(float(g))
        # The value is x * sigmoid(-z) / (1 - p), from the same uniforms, in
        # float64: (1 + e^l) / (1 + e^z) with z = (l + log u - log(1 - u)) / t.
        tiny = jnp.finfo(jnp.float32).tiny
        u = np.asarray(
            jax.random.uniform(KEY, x.shape, jnp.float32, minval=tiny, maxval=1.0),
            np.float64,
        )
        z = (logit + np.log(u) - np.log1p(-u)) / temperature
        log_factor = np.logaddexp(0, logit) - np.logaddexp(0, z)
        expected = np.asarray(x, np.float64) * np.exp(log_factor)
        # z is rounded to float32, so the exponent carries an error of about
        # eps32 * |z|: the tolerance grows with the logit.
        rtol = 8 * _eps(jnp.float32) * (abs(logit) + 30) / temperature
        np.testing.assert_allclose(y, expected, rtol=rtol, atol=1e-30)
    reg = lambda lg, w: jaxreg.concrete_dropout_regularizer(  # noqa: E731
        w, lg, input_dim=3, weight_regularizer=1e-2, dropout_regularizer=1e-2
    )
    for w in (jnp.zeros((3, 2)), jnp.full((3, 2), 1e-3)):
        value = reg(jnp.float32(logit), w)
        grads = jax.grad(reg, argnums=(0, 1))(jnp.float32(logit), w)
        assert not np.isnan(float(value))
        assert not any(np.isnan(np.asarray(gr)).any() for gr in grads)


def test_class3_sparse_vd_dense_with_huge_variance_and_zero_input_is_not_nan():
    x = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    w = jnp.ones((2, 3))
    ls2 = jnp.full((2, 3), 100.0)
    y = jaxreg.sparse_vd_dense(KEY, x, w, ls2)
    assert not np.isnan(np.asarray(y)).any()
    # Without input only the 1e-8 floor of the variance remains.
    assert (np.abs(np.asarray(y[0])) < 1e-3).all()


# ---------------------------------------------------------------------------
# Class 4: shapes and axes, checked by one checker that names the argument and
# echoes the value passed.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, error, shown",
    [
        ((2.5, 3), TypeError, r"got float 2\.5 in shape=\(2\.5, 3\)"),
        ((2.0, 3), TypeError, r"got float 2\.0 in shape=\(2\.0, 3\)"),
        ("12", TypeError, r"got str '12'"),
        ((True, 3), TypeError, r"got bool True in shape=\(True, 3\)"),
        (5, TypeError, r"got int 5"),
        (None, TypeError, r"got NoneType None"),
        ((2, -1), ValueError, r"negative sizes; got shape=\(2, -1\)"),
    ],
)
def test_class4_keep_mask_shape(shape, error, shown):
    with pytest.raises(error, match=rf"`shape` must .*{shown}"):
        jaxreg.keep_mask(KEY, shape, 0.5)


def test_class4_keep_mask_accepts_int_sequences():
    for shape in ([2, 3], (np.int64(2), 3), np.array([2, 3])):
        assert jaxreg.keep_mask(KEY, shape, 0.5).shape == (2, 3)


# axis value, error type, regex of the message (the same for every function)
BAD_AXES = [
    ((), ValueError, r"`axis` must name at least one axis; got axis=\(\)"),
    (1.0, TypeError, r"`axis` must be an int or a tuple of ints; got float 1\.0"),
    (
        (0, 1.0),
        TypeError,
        r"`axis` must be an int or a tuple of ints; got float 1\.0 in axis=\(0, 1\.0\)",
    ),
    ("0", TypeError, r"`axis` must be an int or a tuple of ints; got str '0'"),
    (None, TypeError, r"`axis` must be an int or a tuple of ints; got NoneType"),
    ((1, 1), ValueError, r"`axis` repeats an axis; got axis=\(1, 1\)"),
]

AXIS_USERS = {
    "max_norm": lambda a: jaxreg.max_norm(X, 1.0, axis=a),
    "unit_norm": lambda a: jaxreg.unit_norm(X, axis=a),
    "min_max_norm": lambda a: jaxreg.min_max_norm(X, 0.0, 1.0, axis=a),
    "group_lasso": lambda a: jaxreg.group_lasso(X, axis=a),
    "max_norm_constraint": lambda a: jaxreg.max_norm_constraint(1.0, axis=a),
    "unit_norm_constraint": lambda a: jaxreg.unit_norm_constraint(axis=a),
    "min_max_norm_constraint": lambda a: jaxreg.min_max_norm_constraint(
        0.0, 1.0, axis=a
    ),
    "group_lasso_prox": lambda a: jaxreg.group_lasso_prox(0.1, 0.1, axis=a),
}


@pytest.mark.parametrize(
    "axis, error, shown", BAD_AXES, ids=[repr(a) for a, *_ in BAD_AXES]
)
def test_class4_bad_axis_gives_the_same_message_everywhere(axis, error, shown):
    for call in AXIS_USERS.values():
        # The transforms raise when they are built, not at their first update.
        with pytest.raises(error, match=shown):
            call(axis)


def test_class4_axis_out_of_range_echoes_the_value_passed():
    for call in (
        lambda: jaxreg.max_norm(X, 1.0, axis=-3),
        lambda: jaxreg.group_lasso(X, axis=-3),
    ):
        with pytest.raises(ValueError, match=r"`axis`=-3 is out of range .*rank 2"):
            call()
    with pytest.raises(ValueError, match=r"`axis`=\(0, 5\) has axis 5, out of range"):
        jaxreg.unit_norm(X, axis=(0, 5))
    with pytest.raises(ValueError, match=r"`axis` repeats an axis; got axis=\(1, -1\)"):
        jaxreg.unit_norm(X, axis=(1, -1))
    x4 = jnp.ones((2, 3, 3, 2))
    for axis in (0, -4):
        with pytest.raises(
            ValueError, match=rf"`channel_axis`={axis} is the batch axis \(axis 0"
        ):
            jaxreg.spatial_dropout(KEY, x4, 0.5, channel_axis=axis)
    with pytest.raises(ValueError, match=r"`broadcast_dims`=\(0, 7\) has axis 7"):
        jaxreg.dropout(KEY, x4, 0.5, broadcast_dims=(0, 7))


@pytest.mark.parametrize("shape", [(2, 0, 3), (2, 5, 0, 3)])
def test_class4_augmentations_on_an_empty_spatial_axis(shape):
    x = jnp.ones(shape)
    y = jax.nn.one_hot(jnp.arange(2), 2)
    xm, ym = jaxreg.cutmix(KEY, x, y, alpha=1.0)
    assert xm.shape == shape
    np.testing.assert_array_equal(ym, y)  # nothing to cut: lambda = 1, no NaN
    assert jaxreg.cutout(KEY, x, size=2).shape == shape
    assert jaxreg.random_shift(KEY, x, max_shift=1).shape == shape
    xm, ym = jaxreg.mixup(KEY, x, y, alpha=1.0)
    assert xm.shape == shape and np.isfinite(np.asarray(ym)).all()


def test_class4_int_arguments_and_choices_share_one_checker():
    x4 = jnp.ones((1, 4, 4, 1))
    # NumPy ints are ints everywhere.
    assert jaxreg.dropblock(KEY, x4, 0.1, block_size=np.int64(2)).shape == x4.shape
    assert jaxreg.early_stopping(np.int32(2)).init().step == 0
    for call, name, value in [
        (lambda v: jaxreg.dropblock(KEY, x4, 0.1, block_size=v), "block_size", 2.0),
        (lambda v: jaxreg.early_stopping(v), "patience", 1.5),
        (lambda v: jaxreg.mask_by_ndim(X, min_ndim=v), "min_ndim", True),
        (lambda v: jaxreg.cutout(KEY, X[..., None], size=v), "size", 1.5),
        (
            lambda v: jaxreg.mc_dropout_predict(lambda k: k, KEY, num_samples=v),
            "num_samples",
            "4",
        ),
    ]:
        with pytest.raises(TypeError, match=rf"`{name}` must be a Python int; got "):
            call(value)
    for call, choices in [
        (lambda m: jaxreg.drop_path(KEY, X, 0.5, mode=m), "'row' or 'batch'"),
        (lambda m: jaxreg.orthogonal(X, mode=m), "'rows' or 'columns'"),
        (lambda m: jaxreg.early_stopping(1, mode=m), "'min' or 'max'"),
        (
            lambda m: jaxreg.random_shift(KEY, X, max_shift=1, mode=m),
            "one of 'constant', 'edge', 'wrap', 'reflect'",
        ),
    ]:
        with pytest.raises(
            ValueError, match=rf"`mode` must be {choices}; got mode='x'"
        ):
            call("x")


# ---------------------------------------------------------------------------
# Class 5: misuse of the early-stopping state.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric, shown",
    [
        (None, "NoneType None"),
        (1 + 2j, r"complex \(1\+2j\)"),
        (True, "bool True"),
        ("0.5", "str '0.5'"),
    ],
)
def test_class5_metric_must_be_a_real_number(metric, shown):
    es = jaxreg.early_stopping(2)
    with pytest.raises(
        TypeError, match=rf"`metric` must be a real scalar.*got {shown}"
    ):
        es.update(es.init(), metric)
    with pytest.raises(TypeError, match=r"`metric` must be a real number; got dtype"):
        es.update(es.init(), jnp.complex64(1.0))
    with pytest.raises(ValueError, match=r"`metric` must be a scalar; got an array"):
        es.update(es.init(), jnp.ones(2))


def test_class5_swapped_arguments_and_foreign_states():
    es = jaxreg.early_stopping(2)
    state = es.init()
    with pytest.raises(
        TypeError,
        match=r"`state` must be the EarlyStoppingState.*got float 0\.5 \(the arguments look swapped\)",
    ):
        es.update(0.5, state)
    with pytest.raises(
        TypeError, match=r"`state` must be the EarlyStoppingState.*got dict"
    ):
        es.update({"step": 0}, 0.5)
    kb = jaxreg.early_stopping(2, keep_best=True)
    with pytest.raises(
        ValueError, match=r"`state` comes from an early_stopping with keep_best=False"
    ):
        kb.update(state, 0.5, {"w": jnp.ones(2)})
    with pytest.raises(
        ValueError, match=r"keep_best=True, but this one has keep_best=False"
    ):
        es.update(kb.init({"w": jnp.ones(2)}), 0.5)


def test_class5_keep_best_params_must_match_those_given_to_init():
    es = jaxreg.early_stopping(2, keep_best=True)
    state = es.init({"w": jnp.ones(2), "b": jnp.zeros(())})
    with pytest.raises(
        ValueError, match=r"`params` leaf 'w' has shape \(3,\).*shape \(2,\)"
    ):
        es.update(state, 0.5, {"w": jnp.ones(3), "b": jnp.zeros(())})
    with pytest.raises(
        ValueError, match=r"`params` leaf 'b' has shape \(\) and dtype int32"
    ):
        es.update(state, 0.5, {"w": jnp.ones(2), "b": jnp.zeros((), jnp.int32)})
    with pytest.raises(
        ValueError,
        match=r"`params` must have the tree structure of the params given to `init`",
    ):
        es.update(state, 0.5, {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"needs the current params"):
        es.update(state, 0.5)
    # Under jit the same checks run at trace time.
    with pytest.raises(ValueError, match=r"`params` leaf 'w' has shape \(3,\)"):
        jax.jit(es.update)(state, 0.5, {"w": jnp.ones(3), "b": jnp.zeros(())})
