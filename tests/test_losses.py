"""Label smoothing from integer labels and the R-Drop consistency term.

References are computed in a different order than the functions under test
(optax's one-hot formula, Keras, float64 NumPy), so values are compared with a
tolerance derived from float32 rounding: a sum of ``K`` terms of magnitude at
most ``M`` carries an error below ``K * M * eps32`` per side, hence
``tol = 4 * K * eps32 * (1 + M)``. Exact equalities are asserted where the
maths gives them bit for bit (symmetry, zero at equal logits, masked entries).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxreg.losses import rdrop_loss, smoothed_cross_entropy

EPS32 = float(np.finfo(np.float32).eps)
K = 7


def _tol(logits) -> float:
    z = np.asarray(logits, np.float64)
    spread = np.max(z.max(-1) - z.min(-1))
    return 4 * z.shape[-1] * EPS32 * (1 + spread + np.log(z.shape[-1]))


def _data(shape=(16,), k=K, scale=3.0, seed=0):
    # NumPy draws: test data need no JAX PRNG (whose eager compiles are slow).
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((*shape, k))).astype(np.float32)
    labels = rng.integers(0, k, shape).astype(np.int32)
    return jnp.asarray(logits), jnp.asarray(labels)


@jax.jit
def _optax_reference(logits, labels, alpha, where=None):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), alpha)
    return optax.softmax_cross_entropy(logits, targets, where=where)


# ------------------------------------------------------------------------ smoothing
@pytest.mark.parametrize("shape", [(16,), (3, 5), ()])
def test_matches_optax_one_hot_formula(shape):
    logits, labels = _data(shape)
    for alpha in (0.0, 0.1, 0.5, 1.0):
        ours = smoothed_cross_entropy(logits, labels, alpha)
        ref = _optax_reference(logits, labels, alpha)
        assert ours.shape == shape and ours.dtype == jnp.float32
        np.testing.assert_allclose(ours, ref, rtol=0, atol=_tol(logits))


def test_alpha_zero_is_the_integer_label_cross_entropy():
    logits, labels = _data((32,), scale=10.0)
    ours = smoothed_cross_entropy(logits, labels, 0.0)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=_tol(logits))


def test_large_logits_keep_float32_accuracy():
    # The shift by the row maximum keeps the terms small, as log_softmax does.
    logits, labels = _data((8,), scale=1.0)
    logits = logits + 1e4
    ours = smoothed_cross_entropy(logits, labels, 0.2)
    ref = _optax_reference(logits, labels, 0.2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=_tol(logits - 1e4))


def test_gradient_is_softmax_minus_smoothed_target():
    logits, labels = _data((6,))
    alpha = 0.3
    grad = jax.grad(lambda z: smoothed_cross_entropy(z, labels, alpha).sum())(logits)
    target = (1 - alpha) * jax.nn.one_hot(labels, K) + alpha / K
    np.testing.assert_allclose(grad, jax.nn.softmax(logits) - target, atol=4 * EPS32)
    with jax.enable_x64(True):  # finite differences in float64
        z64 = logits[:3].astype(jnp.float64)
        check_grads(
            jax.jit(lambda z: smoothed_cross_entropy(z, labels[:3], alpha)),
            (z64,),
            order=1,
            modes=["rev"],
        )


def test_traced_alpha_gradient():
    logits, labels = _data((4,))

    def loss(alpha):
        return smoothed_cross_entropy(logits, labels, alpha).sum()

    # d loss / d alpha = sum(lse - ... ) = sum(log p_y - mean_k log p_k).
    log_p = jax.nn.log_softmax(logits)
    expected = jnp.sum(
        jnp.take_along_axis(log_p, labels[:, None], -1)[:, 0] - log_p.mean(-1)
    )
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(0.2), expected, rtol=1e-5)


def test_example_mask_matches_optax_and_isolates_bad_rows():
    logits, labels = _data((10,))
    where = jnp.arange(10) % 3 != 0
    ours = smoothed_cross_entropy(logits, labels, 0.1, where=where)
    ref = _optax_reference(logits, labels, 0.1, where=where)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=_tol(logits))
    np.testing.assert_array_equal(ours[~where], 0.0)
    # Left-out rows may hold NaN/inf: no effect on the value, zero gradient.
    poisoned = logits.at[0].set(jnp.nan).at[3, 2].set(jnp.inf)
    val, grad = jax.value_and_grad(
        lambda z: smoothed_cross_entropy(z, labels, 0.1, where=where, reduction="sum")
    )(poisoned)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[~where], 0.0)
    np.testing.assert_allclose(val, ours.sum(), rtol=1e-6)


def test_example_mask_broadcasts():
    logits, labels = _data((4, 5))
    where = jnp.array([True, False, True, True, False])  # broadcasts over axis 0
    ours = smoothed_cross_entropy(logits, labels, 0.2, where=where)
    np.testing.assert_array_equal(ours[:, ~where], 0.0)
    full = smoothed_cross_entropy(logits, labels, 0.2)
    np.testing.assert_array_equal(ours[:, where], full[:, where])


def test_class_mask_matches_optax_with_smoothing_over_included_classes():
    logits, labels = _data((12,))
    where = jnp.ones((12, K), bool).at[:, -2:].set(False)  # e.g. padded vocabulary
    where = where.at[5].set(False)  # a row with no class: loss 0
    labels = labels.at[1].set(K - 1)  # a label outside the included classes
    logits = jnp.where(where, logits, -jnp.inf)  # padding logits may be -inf
    ours = smoothed_cross_entropy(logits, labels, 0.1, where=where)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, K), 0.1, where=where)
    ref = optax.softmax_cross_entropy(logits, targets, where=where)
    finite = jnp.where(where, logits, 0.0)
    np.testing.assert_allclose(
        ours, jnp.where(where.any(-1), ref, 0.0), atol=_tol(finite)
    )
    assert float(ours[5]) == 0.0
    grad = jax.grad(
        lambda z: smoothed_cross_entropy(z, labels, 0.1, where=where).sum()
    )(logits)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[~where], 0.0)


def test_reductions():
    logits, labels = _data((4, 6))
    where = jnp.asarray(np.random.default_rng(1).random((4, 6)) < 0.6)
    per = smoothed_cross_entropy(logits, labels, 0.1, where=where)
    total = smoothed_cross_entropy(logits, labels, 0.1, where=where, reduction="sum")
    mean = smoothed_cross_entropy(logits, labels, 0.1, where=where, reduction="mean")
    tol = _tol(logits) * per.size
    np.testing.assert_allclose(total, per.sum(), atol=tol)
    np.testing.assert_allclose(mean, per.sum() / where.sum(), atol=tol)
    nothing = smoothed_cross_entropy(
        logits, labels, 0.1, where=jnp.zeros((4, 6), bool), reduction="mean"
    )
    assert float(nothing) == 0.0
    plain = smoothed_cross_entropy(logits, labels, 0.1, reduction="mean")
    np.testing.assert_allclose(
        plain, smoothed_cross_entropy(logits, labels, 0.1).mean(), atol=tol
    )


def test_jit_vmap_and_dtypes():
    logits, labels = _data((8,))
    eager = smoothed_cross_entropy(logits, labels, 0.1)
    jitted = jax.jit(smoothed_cross_entropy)(logits, labels, 0.1)
    np.testing.assert_allclose(jitted, eager, atol=_tol(logits))
    batched = jax.vmap(lambda z, y: smoothed_cross_entropy(z, y, 0.1))(
        logits.reshape(2, 4, K), labels.reshape(2, 4)
    )
    np.testing.assert_allclose(batched.reshape(-1), eager, atol=_tol(logits))
    for dtype in (jnp.bfloat16, jnp.float16):
        low = smoothed_cross_entropy(logits.astype(dtype), labels, 0.1)
        assert low.dtype == dtype
        ref = _optax_reference(logits.astype(dtype).astype(jnp.float32), labels, 0.1)
        np.testing.assert_allclose(low.astype(jnp.float32), ref, rtol=1e-2)


def test_traced_out_of_range_label_gives_nan():
    logits, labels = _data((3,))
    f = jax.jit(smoothed_cross_entropy)
    for bad in (K, -1):
        out = f(logits, labels.at[1].set(bad), 0.1)
        assert np.isnan(out[1]) and np.all(np.isfinite(out[jnp.array([0, 2])]))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (
            {"labels": jnp.zeros(4)},
            TypeError,
            r"`labels` must hold integer class indices; got dtype float32",
        ),
        ({"labels": jnp.zeros(4, bool)}, TypeError, r"got dtype bool"),
        (
            {"labels": jnp.array([0, 1, 7, 2])},
            ValueError,
            r"\[0, 7\) for 7 classes; got labels\[2\]=7",
        ),
        ({"labels": jnp.array([0, -1, 2, 2])}, ValueError, r"got labels\[1\]=-1"),
        ({"labels": jnp.zeros(5, int)}, ValueError, r"shape \(4,\) .*got shape \(5,\)"),
        ({"labels": "cat"}, TypeError, r"integer class indices; got str"),
        ({"alpha": 1.5}, ValueError, r"`alpha` must lie in \[0, 1\]; got alpha=1\.5"),
        ({"alpha": -0.1}, ValueError, r"alpha=-0\.1"),
        ({"alpha": float("nan")}, ValueError, r"alpha=nan"),
        ({"alpha": "0.1"}, TypeError, r"`alpha` must be a real scalar"),
        ({"alpha": jnp.array([0.1, 0.2])}, ValueError, r"`alpha` must be a scalar"),
        (
            {"logits": jnp.zeros((4, K), int)},
            TypeError,
            r"`logits` must have a floating dtype",
        ),
        (
            {"where": jnp.ones(4)},
            TypeError,
            r"`where` must be a boolean array.*float32",
        ),
        (
            {"where": jnp.ones(3, bool)},
            ValueError,
            r"`where` of shape \(3,\) does not broadcast",
        ),
        ({"reduction": "avg"}, ValueError, r"reduction='avg'"),
    ],
)
def test_smoothing_bad_inputs(kwargs, err, match):
    logits, labels = _data((4,))
    args = {"logits": logits, "labels": labels, "alpha": 0.1} | kwargs
    alpha = args.pop("alpha")
    with pytest.raises(err, match=match):
        smoothed_cross_entropy(args.pop("logits"), args.pop("labels"), alpha, **args)


def test_single_example_label_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\) for 3 classes; got labels=3\."):
        smoothed_cross_entropy(jnp.zeros(3), jnp.int32(3), 0.1)


def test_scalar_logits_are_an_error():
    with pytest.raises(ValueError, match=r"non-empty class axis .* got shape \(\)"):
        smoothed_cross_entropy(jnp.float32(1.0), jnp.int32(0), 0.1)


# ---------------------------------------------------------------------------- Keras
@pytest.fixture(scope="module")
def keras():
    os.environ["KERAS_BACKEND"] = "jax"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was already imported with another backend")
    return keras


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.4])
def test_keras_categorical_label_smoothing_parity(keras, alpha):
    # Keras' sparse loss has no label_smoothing: its categorical one does, on
    # one-hot labels, with the same targets y (1 - alpha) + alpha / K.
    logits, labels = _data((16,))
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=alpha, reduction=None
    )
    ref = np.asarray(loss(np.asarray(jax.nn.one_hot(labels, K)), np.asarray(logits)))
    ours = smoothed_cross_entropy(logits, labels, alpha)
    np.testing.assert_allclose(ours, ref, atol=_tol(logits))
    mean = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=alpha)
    keras_mean = float(mean(np.asarray(jax.nn.one_hot(labels, K)), np.asarray(logits)))
    np.testing.assert_allclose(
        smoothed_cross_entropy(logits, labels, alpha, reduction="mean"),
        keras_mean,
        atol=_tol(logits),
    )


def test_keras_sparse_ignore_class_is_where(keras):
    logits, labels = _data((20,))
    pad = 3
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=pad
    )
    ref = float(loss(np.asarray(labels), np.asarray(logits)))
    ours = smoothed_cross_entropy(
        logits, labels, 0.0, where=labels != pad, reduction="mean"
    )
    np.testing.assert_allclose(ours, ref, atol=_tol(logits))


# --------------------------------------------------------------------------- R-Drop
def _rdrop_reference(z1, z2):
    """0.5 (KL(P1||P2) + KL(P2||P1)) in float64, from the definition."""
    lp1 = jax.nn.log_softmax(np.asarray(z1, np.float64))
    lp2 = jax.nn.log_softmax(np.asarray(z2, np.float64))
    lp1, lp2 = np.asarray(lp1), np.asarray(lp2)
    kl12 = np.sum(np.exp(lp1) * (lp1 - lp2), -1)
    kl21 = np.sum(np.exp(lp2) * (lp2 - lp1), -1)
    return 0.5 * (kl12 + kl21)


def test_rdrop_matches_the_definition():
    z1, _ = _data((3, 5), seed=1)
    z2, _ = _data((3, 5), seed=2)
    ours = rdrop_loss(z1, z2)
    assert ours.shape == (3, 5) and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, _rdrop_reference(z1, z2), rtol=1e-5, atol=_tol(z1))
    assert np.all(ours > 0)
    # The authors' code sums both KL terms over everything and halves the total.
    np.testing.assert_allclose(
        rdrop_loss(z1, z2, reduction="sum"), _rdrop_reference(z1, z2).sum(), rtol=1e-5
    )
    np.testing.assert_allclose(
        rdrop_loss(z1, z2, reduction="mean"), ours.mean(), rtol=1e-6
    )


def test_rdrop_exact_symmetry_and_zero():
    z1, _ = _data((8,), seed=3)
    z2, _ = _data((8,), seed=4)
    np.testing.assert_array_equal(rdrop_loss(z1, z2), rdrop_loss(z2, z1))
    np.testing.assert_array_equal(rdrop_loss(z1, z1), 0.0)
    # Zero is the minimum: the gradient vanishes there, exactly.
    g1, g2 = jax.grad(lambda a, b: rdrop_loss(a, b).sum(), argnums=(0, 1))(z1, z1)
    np.testing.assert_array_equal(g1, 0.0)
    np.testing.assert_array_equal(g2, 0.0)
    # Softmax is shift-invariant per row, so is the loss.
    shifted = rdrop_loss(z1 + 5.0, z2 - 2.0)
    np.testing.assert_allclose(shifted, rdrop_loss(z1, z2), atol=_tol(z1 + 5.0))


def test_rdrop_gradients():
    z1, _ = _data((3,), k=4, seed=5)
    z2, _ = _data((3,), k=4, seed=6)
    with jax.enable_x64(True):  # finite differences in float64
        z64 = (z1.astype(jnp.float64), z2.astype(jnp.float64))
        check_grads(jax.jit(rdrop_loss), z64, order=1, modes=["fwd", "rev"])
    # Gradient of the symmetric KL w.r.t. z1: 0.5 (p1 - p2) + 0.5 p1 * (d - <d>_p1),
    # d = log p1 - log p2 (differentiating both KL terms through the softmax).
    p1, p2 = jax.nn.softmax(z1), jax.nn.softmax(z2)
    d = jnp.log(p1) - jnp.log(p2)
    expected = 0.5 * (p1 - p2) + 0.5 * p1 * (d - jnp.sum(p1 * d, -1, keepdims=True))
    grad = jax.grad(lambda a: rdrop_loss(a, z2).sum())(z1)
    np.testing.assert_allclose(grad, expected, atol=16 * EPS32)


def test_rdrop_where_and_poisoned_rows():
    z1, _ = _data((6,), seed=7)
    z2, _ = _data((6,), seed=8)
    where = jnp.array([True, False, True, True, False, True])
    ours = rdrop_loss(z1, z2, where=where)
    np.testing.assert_array_equal(ours[~where], 0.0)
    np.testing.assert_array_equal(ours[where], rdrop_loss(z1, z2)[where])
    mean = rdrop_loss(z1, z2, where=where, reduction="mean")
    np.testing.assert_allclose(mean, ours.sum() / 4, rtol=1e-6)
    bad = z1.at[1].set(jnp.nan)
    val, grad = jax.value_and_grad(
        lambda a: rdrop_loss(a, z2, where=where, reduction="sum")
    )(bad)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[1], 0.0)


def test_rdrop_jit_vmap_dtype():
    z1, _ = _data((4,), seed=9)
    z2, _ = _data((4,), seed=10)
    np.testing.assert_allclose(
        jax.jit(rdrop_loss)(z1, z2), rdrop_loss(z1, z2), atol=_tol(z1)
    )
    batched = jax.vmap(rdrop_loss)(z1[:, None], z2[:, None])
    np.testing.assert_allclose(batched[:, 0], rdrop_loss(z1, z2), atol=_tol(z1))
    low = rdrop_loss(z1.astype(jnp.bfloat16), z2.astype(jnp.bfloat16))
    assert low.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "a, b, kwargs, err, match",
    [
        (
            jnp.zeros((2, 3)),
            jnp.zeros((2, 4)),
            {},
            ValueError,
            r"same shape; got logits1.shape=\(2, 3\) and logits2.shape=\(2, 4\)",
        ),
        (
            jnp.zeros((2, 3), int),
            jnp.zeros((2, 3)),
            {},
            TypeError,
            r"`logits1` must have a floating dtype",
        ),
        (
            jnp.zeros((2, 3)),
            [[0.0] * 3] * 2,
            {},
            TypeError,
            r"`logits2` must be an array of floating dtype",
        ),
        (
            jnp.float32(0),
            jnp.float32(0),
            {},
            ValueError,
            r"`logits1` must have a non-empty class axis",
        ),
        (
            jnp.zeros((2, 3)),
            jnp.zeros((2, 3)),
            {"reduction": "batch"},
            ValueError,
            r"reduction='batch'",
        ),
        (
            jnp.zeros((2, 3)),
            jnp.zeros((2, 3)),
            {"where": jnp.ones(2, int)},
            TypeError,
            r"got dtype int32",
        ),
        (
            jnp.zeros((2, 3)),
            jnp.zeros((2, 3)),
            {"where": jnp.ones(5, bool)},
            ValueError,
            r"does not broadcast to \(2,\)",
        ),
    ],
)
def test_rdrop_bad_inputs(a, b, kwargs, err, match):
    with pytest.raises(err, match=match):
        rdrop_loss(a, b, **kwargs)
