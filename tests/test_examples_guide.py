"""Smoke tests for the guide scripts of pages 5-7 (tiny ``--quick`` configurations).

Each script's ``main`` runs end to end on a few minibatches and writes its figure;
besides that, the building blocks each page's reading relies on are checked
(locked masks, the 1-D DropBlock view, the variance shift, the exactness of the
sharded dropout masks, DropConnect inference).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _helpers import load_example as _load

from examples.helpers import models

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- convergence
def test_first_step_counts_steps_until_threshold():
    conv = _load("guide_convergence")
    curve = np.array([[3.0, 2.0, 0.5, 0.4], [3.0, 3.0, 3.0, 3.0]])
    assert conv.first_step(curve, curve <= 0.5, 40) == [120, None]
    assert conv.fmt_steps([120, 160]) == "140 (120-160)"
    assert conv.fmt_steps([120, None]) == "not reached (1/2 seeds)"


def test_convergence_quick(tmp_path):
    conv = _load("guide_convergence")
    summary = conv.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "convergence.json").read_text())
    assert saved["table"] == summary["table"]
    r = saved["results"]["0.5"]
    assert np.asarray(r["fit_loss"]).shape == (1, 2)  # 1 seed, 2 epochs
    assert r["ms_per_step_3_seeds"] > 0


# ------------------------------------------------------------------------- RNN
def test_gru_variants_share_the_inference_path():
    rnn = _load("guide_rnn")
    params = rnn.init_gru(0, 8)
    x = jax.random.normal(jax.random.key(0), (5, 40))
    ref = rnn.gru_apply(params, x, None, variant="none", rate=0.3, train=False)
    for variant in rnn.VARIANTS[1:-1]:  # the dropout variants: identity at eval
        out = rnn.gru_apply(params, x, None, variant=variant, rate=0.3, train=False)
        np.testing.assert_array_equal(out, ref)
    zone = rnn.gru_apply(params, x, None, variant="zoneout", rate=0.3, train=False)
    assert not np.allclose(zone, ref)  # zoneout's inference is an expectation


def _reference_gru(params, x, masks):
    """A GRU whose recurrent input at step t is ``h * masks[t]`` (no jaxreg)."""
    n = params["u"].shape[0]
    h = jnp.zeros((x.shape[0], n))
    for t in range(x.shape[1]):
        gx = x[:, t, None] * params["w"] + params["b"]
        gh = (h * masks[t]) @ params["u"]
        z = jax.nn.sigmoid(gx[:, :n] + gh[:, :n])
        r = jax.nn.sigmoid(gx[:, n : 2 * n] + gh[:, n : 2 * n])
        h = (1 - z) * jnp.tanh(gx[:, 2 * n :] + r * gh[:, 2 * n :]) + z * h
    return h @ params["out_w"] + params["out_b"]


def test_gru_locked_mask_is_shared_across_time_and_per_step_is_not():
    import jaxreg

    rnn = _load("guide_rnn")
    params = rnn.init_gru(0, 16)
    key = jax.random.key(3)
    x = jax.random.normal(jax.random.key(1), (4, 40))
    ones = jnp.ones((4, 16))
    # jaxreg.dropout(k, ones, rate) is the scaled mask that key k gives.
    locked_mask = jaxreg.dropout(key, ones, 0.5)
    step_masks = [
        jaxreg.dropout(jax.random.fold_in(key, t), ones, 0.5) for t in range(40)
    ]
    assert not all(bool(jnp.all(m == step_masks[0])) for m in step_masks[1:])
    locked = rnn.gru_apply(
        params, x, key, variant="locked (recurrent input)", rate=0.5, train=True
    )
    per_step = rnn.gru_apply(
        params, x, key, variant="per-step (recurrent input)", rate=0.5, train=True
    )
    np.testing.assert_allclose(
        locked, _reference_gru(params, x, [locked_mask] * 40), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        per_step, _reference_gru(params, x, step_masks), rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(locked, per_step, atol=1e-3)


def test_rnn_quick(tmp_path):
    rnn = _load("guide_rnn")
    summary = rnn.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "rnn.png").stat().st_size > 10_000
    assert set(summary["results"]) == {"locked (recurrent input)", "zoneout"}


# ------------------------------------------------------------------------- CNN
def test_cnn_dropblock_1d_drops_runs_of_block_size():
    cnn = _load("guide_cnn")
    h = jnp.ones((64, 40, 8))
    y = np.asarray(cnn.regularize(jax.random.key(0), h, method="dropblock", rate=0.2))
    dropped = y == 0
    assert 0.15 < dropped.mean() < 0.25  # 20480 cells (correlated in runs of 5)
    np.testing.assert_allclose(y[~dropped], 1 / (1 - 0.2), rtol=1e-6)
    # Every maximal run of dropped positions away from the borders is >= 5 long.
    short = 0
    for row in dropped.transpose(0, 2, 1).reshape(-1, 40):
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if start > 0 and stop < 40 and stop - start < 5:
                short += 1
    assert short == 0
    spatial = np.asarray(
        cnn.regularize(jax.random.key(0), h, method="spatial", rate=0.5)
    )
    assert np.all(spatial == spatial[:, :1, :])  # constant along the length


def test_cnn_quick(tmp_path):
    cnn = _load("guide_cnn")
    summary = cnn.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "cnn.png").stat().st_size > 10_000
    assert set(summary["results"]) == {"dropout 0.3", "spatial 0.3", "dropblock 0.3"}


# ------------------------------------------------------------------ batch norm
def test_batchnorm_quick_measures_a_variance_shift(tmp_path):
    bn = _load("guide_batchnorm")
    summary = bn.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "batchnorm.png").stat().st_size > 10_000
    shift = np.asarray(
        summary["results"]["dropout 0.5 everywhere"]["variance_shift_per_layer"]
    )
    # BN1 sees the raw inputs (no dropout before it): train and test variances
    # differ only by the train/test split.
    assert 0.8 < shift[0, 0] < 1.25
    # BN2 sees dropped-out activations: Var_train = E[h^2]/p - E[h]^2 > Var(h).
    assert shift[0, 1] > 1.5


def test_batchnorm_train_mode_normalizes_each_batch():
    bn = _load("guide_batchnorm")
    params = bn.init_bn_mlp(0, (40, 32, 32, 10))
    x = jax.random.normal(jax.random.key(0), (256, 40))
    _, stats, inputs = bn.bn_mlp_apply(params, x, config=bn.CONFIGS["no dropout"])
    for (mean, var), h in zip(stats, inputs, strict=True):
        np.testing.assert_allclose(mean, h.mean(0), rtol=1e-6)
        np.testing.assert_allclose(var, h.var(0), rtol=1e-6)
    # Eval mode with the batch's own statistics reproduces train mode exactly.
    logits, *_ = bn.bn_mlp_apply(params, x, config=bn.CONFIGS["no dropout"])
    again, *_ = bn.bn_mlp_apply(params, x, config=bn.CONFIGS["no dropout"], stats=stats)
    np.testing.assert_array_equal(logits, again)


# --------------------------------------------------------------- sharded (8 devs)
def test_sharded_training_quick_matches_single_device(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.sharded_training",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "sharding.json").read_text())
    r = saved["results"]["4x2"]
    assert r["masks_equal"] is True  # bit for bit
    assert r["dropout_collectives"] == {}  # masks are generated shard-locally
    assert "all-reduce" in r["step_collectives"]  # gradients are reduced
    assert r["max_rel_dloss"] < 1e-5  # the page's stated tolerance
    assert (tmp_path / "sharding.png").stat().st_size > 10_000


# ----------------------------------------------------------------- DropConnect
def test_dropconnect_inference_rules_agree_at_rate_zero():
    dc = _load("guide_dropconnect")
    params = models.init_mlp(0, dc.SIZES)
    x = jax.random.normal(jax.random.key(0), (8, 40))
    mean_rule = jax.nn.softmax(models.mlp_apply(params, x))
    key = jax.random.key(1)
    mm = dc.moment_matching_probs(params, x, key, 0.0, 3)
    mc = dc.mc_probs(params, x, key, 0.0, 3)
    np.testing.assert_allclose(mm, mean_rule, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mc, mean_rule, rtol=1e-5, atol=1e-6)
    # At rate 0.5 the rules differ, and each still returns probabilities.
    mm = dc.moment_matching_probs(params, x, key, 0.5, 50)
    mc = dc.mc_probs(params, x, key, 0.5, 50)
    np.testing.assert_allclose(mm.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(mc.sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(mm, mean_rule, atol=1e-3)
    acc, nll = dc.scores(mean_rule, jnp.argmax(mean_rule, -1))
    assert float(acc) == 1.0
    np.testing.assert_allclose(nll, -np.log(np.max(mean_rule, -1)).mean(), rtol=1e-5)


def test_dropconnect_quick(tmp_path):
    dc = _load("guide_dropconnect")
    summary = dc.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "dropconnect.png").stat().st_size > 10_000
    assert set(summary["inference"]) == {"mean rule", "moment matching", "MC"}
    assert set(summary["inference"]["MC"]) == {"1", "3"}
    assert summary["step_cost_ms"]["DropConnect"] > 0
