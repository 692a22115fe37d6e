"""The deep-model examples: ``deep_models.py`` (scan over layers), ``rdrop.py``
and ``transformer_lm.py`` (attention dropout).

Each script's ``main`` runs end to end in its ``--quick`` configuration (one
compilation of the whole training program for every configuration), and the
wiring the guide page relies on is checked: the scanned rates reach their
layers (rate 1 drops every block, rate 0 is the inference path), the R-Drop
objective is the paper's, and the calibration error is computed as defined.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from _helpers import load_example as _load


def test_deep_models_quick(tmp_path):
    deep = _load("deep_models")
    summary = deep.main(["--quick", "--out", str(tmp_path)])
    assert summary["compilations"] == 1  # rates, keys and alpha are traced inputs
    for name in ("deep_models.png", "deep_models_calibration.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    saved = json.loads((tmp_path / "deep_models.json").read_text())
    assert saved["table"] == summary["table"]
    linear = saved["results"]["drop path, linear"]
    np.testing.assert_allclose(linear["rates"], [0.0, 0.15, 0.3], rtol=1e-6)
    assert np.asarray(linear["test_acc"]).shape == (1, 2)  # 1 seed, 2 epochs


def test_scanned_rates_and_keys_reach_their_layers():
    deep = _load("deep_models")
    params = deep.init_params(jax.random.key(0), depth=4, width=8, hidden=16)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 40)), jnp.float32)
    key = jax.random.key(1)
    inference = deep.apply(params, x)
    # Rate 0 in every layer is the inference path; rate 1 drops every branch.
    np.testing.assert_array_equal(
        deep.apply(params, x, rates=jnp.zeros(4), key=key), inference
    )
    no_blocks = x @ params["embed"]["w"] + params["embed"]["b"]
    no_blocks = no_blocks @ params["head"]["w"] + params["head"]["b"]
    np.testing.assert_allclose(
        deep.apply(params, x, rates=jnp.ones(4), key=key), no_blocks, rtol=1e-6
    )


def test_expected_calibration_error():
    deep = _load("deep_models")
    labels = np.zeros(1000, int)
    # Confidence 0.8 on class 0 while class 0 is right 80% of the time: ECE 0.
    probs = np.tile([0.8, 0.2], (1000, 1))
    labels[800:] = 1
    assert deep.expected_calibration_error(probs, labels) < 1e-9
    # Always 0.9 confident, right half of the time: ECE 0.4.
    labels[500:] = 1
    probs = np.tile([0.9, 0.1], (1000, 1))
    np.testing.assert_allclose(deep.expected_calibration_error(probs, labels), 0.4)


def test_rdrop_quick(tmp_path):
    rdrop = _load("rdrop")
    summary = rdrop.main(["--quick", "--out", str(tmp_path)])
    assert summary["compilations"] == 1  # alpha is a traced input
    saved = json.loads((tmp_path / "rdrop.json").read_text())
    assert saved["table"] == summary["table"] and len(saved["results"]) == 2


def test_rdrop_objective_is_two_nlls_plus_the_consistency_term():
    rdrop = _load("rdrop")
    params = rdrop.init_mlp(jax.random.key(0), (64, 16, 10))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 8))
    key = jax.random.key(3)
    k1, k2 = jax.random.split(key)
    z1 = rdrop.mlp(params, x, rate=0.3, key=k1)
    z2 = rdrop.mlp(params, x, rate=0.3, key=k2)
    assert not np.allclose(z1, z2)  # the two passes use different masks
    base = rdrop.loss_fn(params, key, x, y, rate=0.3, alpha=0.0)
    full = rdrop.loss_fn(params, key, x, y, rate=0.3, alpha=2.0)
    kl = rdrop.jaxreg.losses.rdrop_loss(z1, z2).mean()
    assert float(kl) > 0
    np.testing.assert_allclose(full - base, 2.0 * kl, rtol=1e-5)


def test_transformer_lm_quick(tmp_path):
    lm = _load("transformer_lm")
    summary = lm.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert (tmp_path / "transformer_lm.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "transformer_lm.json").read_text())
    assert saved["table"] == summary["table"]
    for result in saved["results"].values():
        val = np.asarray(result["val_loss"])
        assert val.shape == (1, 2)  # 1 seed, 2 evaluations
        # Below the loss of a uniform guess over the 128 characters.
        assert np.all(np.isfinite(val)) and np.all(val < np.log(lm.VOCAB))


def test_transformer_lm_dropout_wiring():
    lm = _load("transformer_lm")
    model = lm.TransformerLM(width=16, heads=2, layers=1, context=8, rate=0.5)
    plain = lm.TransformerLM(width=16, heads=2, layers=1, context=8, rate=0.0)
    tokens = jnp.arange(16).reshape(2, 8) % lm.VOCAB
    params = model.init(jax.random.key(0), tokens)
    # The dropout model at inference is the model without dropout.
    np.testing.assert_array_equal(
        model.apply(params, tokens), plain.apply(params, tokens)
    )
    a, b = (
        model.apply(params, tokens, deterministic=False, rngs={"dropout": k})
        for k in (jax.random.key(1), jax.random.key(2))
    )
    assert not np.array_equal(a, b)
    # Causal: changing the last character changes no earlier prediction.
    changed = tokens.at[:, -1].set(0)
    np.testing.assert_array_equal(
        plain.apply(params, changed)[:, :-1], plain.apply(params, tokens)[:, :-1]
    )
    train, val = lm.load_text(1000, 500)
    assert train.shape == (1000,) and val.shape == (500,)
    assert train.max() < lm.VOCAB and val.max() < lm.VOCAB
