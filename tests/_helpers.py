"""Scaffolding shared by several test files (no tests here).

Import it as ``from _helpers import ...``: pytest puts ``tests/`` on ``sys.path``.
"""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg


def digits(n_train=None):
    """sklearn's digits, standardized, split 75/25 (stratified, seed 0).

    Returns ``(x_train, y_train, x_test, y_test)`` as jax arrays; ``n_train`` keeps
    only the first ``n_train`` training examples.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    return jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te)


def run_on_8_cpu_devices(script: str) -> subprocess.CompletedProcess:
    """Run ``python -c script`` with 8 simulated CPU devices (XLA_FLAGS must be
    set before jax is imported, hence the subprocess); output is captured."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def fold_key(base, *path):
    """``base`` folded with each integer of ``path`` in turn (a key per test case)."""
    key = base
    for i in path:
        key = jax.random.fold_in(key, i)
    return key


def assert_binomial(kept, n, p):
    """Assert a Binomial(n, p) count lies within 4 standard deviations of n * p."""
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * p) < 4 * sigma, (
        f"kept {kept} of {n}, expected {n * p:.1f} +- 4*{sigma:.1f}"
    )


# The activations jaxreg.dropout(activation=...) fuses: name -> the function an
# unfused reference applies first (flax.linen and flax.nnx export these objects).
FUSABLE = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
}
# Each fusable activation given by name, then as the function object, with the
# function the unfused reference applies: ``(activation, f)`` pairs.
FUSED_CASES = [(n, f) for n, f in FUSABLE.items()] + [(f, f) for f in FUSABLE.values()]
FUSED_IDS = [n for n in FUSABLE] + [f"fn-{n}" for n in FUSABLE]
# Pre-activations in [-1, 1]: the fused backward pass reads the derivative off the
# output (tanh' = (1 + y)(1 - y)), which agrees with JAX's own rule to rtol 1e-6
# away from saturation (up to ~5e-6 for tanh at |x| ~ 2.5, where both are correct
# to ~8 float32 ulps of 1 in absolute terms).
X_PRE = jax.random.uniform(jax.random.key(11), (4, 6, 6, 3), minval=-1.0, maxval=1.0)


def activation_sized(vjp, x):
    """The leaves of a ``jax.vjp`` closure with as many elements as ``x``."""
    return [leaf for leaf in jax.tree_util.tree_leaves(vjp) if np.size(leaf) == x.size]


def check_fused_grads(fused, unfused, f, *, inverted, activation):
    """A fused ``Dropout(activation=...)`` differentiates as ``f`` then dropout.

    ``fused(x, key)`` and ``unfused(x, key)`` apply a framework's Dropout at rate
    0.3 with and without ``activation`` (``f`` is that activation as a function).
    Gradients agree with the unfused module to rtol 1e-6 (see ``X_PRE``), some
    units are dropped and some kept, and the fused module's gradients are exactly
    those of the pure function it calls.
    """
    key = jax.random.key(5)
    w = jax.random.normal(jax.random.key(6), X_PRE.shape)

    def grad(apply):
        return jax.grad(lambda x: jnp.sum(apply(x) * w))(X_PRE)

    g = grad(lambda x: fused(x, key))
    g_unfused = grad(lambda x: unfused(f(x), key))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_unfused), rtol=1e-6)
    assert bool(jnp.any(g == 0)) and bool(jnp.any(g != 0))  # dropped and kept
    g_pure = grad(
        lambda x: jaxreg.dropout(key, x, 0.3, inverted=inverted, activation=activation)
    )
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_pure))


def check_fused_residuals(fused, unfused):
    """The backward pass of a fused ``Dropout(activation="tanh")`` keeps its output.

    ``fused(x, key)`` / ``unfused(x, key)`` as above. The only activation-sized
    residual of the fused module is its output (which the next layer keeps
    anyway); neither tanh(x) nor x nor a mask is stored. tanh then dropout keeps
    two activation-sized arrays besides its output, one of them tanh(x).
    """
    key = jax.random.key(8)
    x = jax.random.normal(jax.random.key(9), (32, 64))
    y, vjp = jax.vjp(lambda x: fused(x, key), x)
    kept = activation_sized(vjp, x)
    assert len(kept) == 1
    np.testing.assert_array_equal(np.asarray(kept[0]), np.asarray(y))
    y_unfused, vjp_unfused = jax.vjp(lambda x: unfused(jnp.tanh(x), key), x)
    kept = activation_sized(vjp_unfused, x)
    assert len(kept) == 2
    assert not any(bool(jnp.array_equal(leaf, y_unfused)) for leaf in kept)
    assert any(bool(jnp.array_equal(leaf, jnp.tanh(x))) for leaf in kept)


def load_example(name: str):
    """The example script ``examples/<name>.py``, imported from the ``examples``
    package (pytest puts the repository root on ``sys.path``)."""
    import importlib

    return importlib.import_module(f"examples.{name}")


F32_EPS = float(np.finfo(np.float32).eps)


def assert_matmul_close(actual, expected, x, w, *, bias=None, err_msg=""):
    """Assert two float32 evaluations of ``x @ w (+ bias)`` agree up to rounding.

    XLA may sum a dot product in another order when it is batched (``vmap``),
    chunked, sharded, jitted or run on another CPU, so such results are compared
    with a tolerance, never bit for bit. Each evaluation of a ``K``-term dot
    product is within ``K * eps * (|x| @ |w|)`` of the exact value (the standard
    worst-case bound for recursive summation, Higham, "Accuracy and Stability of
    Numerical Algorithms", 2002, section 3.1); adding ``bias`` costs one more
    rounding. Two evaluations therefore differ by at most twice that; ``w`` may be
    any kernel at least as large in magnitude as the one used (e.g. the kernel
    before dropping, divided by the keep probability).
    """
    x = np.abs(np.asarray(x, np.float64))
    w = np.abs(np.asarray(w, np.float64))
    k = w.shape[0]
    size = x @ w + (0.0 if bias is None else np.abs(np.asarray(bias, np.float64)))
    tol = 2 * (k + 1) * F32_EPS * size
    diff = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    assert np.all(diff <= tol), (
        f"{err_msg} max |difference| {diff.max():.3g} exceeds the float32 "
        f"rounding bound (largest {tol.max():.3g})"
    )
