"""Smoke tests for the main study and the guide scripts of pages 1-4.

Each script's ``main`` runs a tiny ``--quick`` configuration end to end and must
write its figure(s); the shared helpers in ``examples.helpers`` that the
numbers rely on (batched hyper-parameters, run selection, tables) are checked
against exact expectations.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import load_example as _load

import jaxreg
from examples.helpers import datasets, models, reporting, training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: pathlib.Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One MNIST-1D cache for the module (generation takes seconds)."""
    return tmp_path_factory.mktemp("mnist1d")


@pytest.fixture(scope="module")
def data(cache):
    return datasets.load_mnist1d(cache)


# ------------------------------------------------------------------- helpers
def test_mnist1d_shapes_and_cache(cache, data):
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert set(np.unique(data.y_train)) == set(range(10))
    files = list(pathlib.Path(cache).glob("mnist1d_*.npz"))
    assert len(files) == 1
    again = datasets.load_mnist1d(cache)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    fit, val = data.split_validation(500)
    assert len(fit.y_train) == 3500 and len(val.y_test) == 500
    np.testing.assert_array_equal(val.x_test, data.x_train[3500:])


def test_markdown_table_and_mean_spread():
    assert reporting.mean_spread([0.5, 0.7]) == "60.0 ± 14.1"
    table = reporting.markdown_table([{"a": "1", "bb": "x"}, {"a": "22", "bb": "y"}])
    assert table.splitlines() == [
        "| a  | bb |",
        "|----|----|",
        "| 1  | x  |",
        "| 22 | y  |",
    ]


def test_batched_hparams_equal_separate_runs(data):
    """One program over several hyper-parameter values == separate programs."""
    small = datasets.Data(
        data.x_train[:400], data.y_train[:400], data.x_test[:200], data.y_test[:200]
    )

    def fwd(p, x, k, hp):
        return models.mlp_apply(
            p, x, key=k, hidden=lambda kk, h, i: jaxreg.dropout(kk, h, hp["rate"])
        )

    def opt(hp):
        return optax.chain(jaxreg.add_l2(hp["l2"]), optax.adam(1e-2))

    kw = dict(sizes=(40, 16, 10), epochs=2, batch_size=100, progress=False)
    both = training.train(
        "both",
        small,
        optimizer=opt,
        train_logits=fwd,
        seeds=[0, 0],
        hparams={"rate": np.array([0.0, 0.0]), "l2": np.array([0.0, 1e-2])},
        **kw,
    )
    plain = training.train(
        "plain",
        small,
        optimizer=optax.adam(1e-2),
        train_logits=lambda p, x, k: models.mlp_apply(p, x),
        seeds=[0],
        **kw,
    )
    # Rate 0 and L2 strength 0 are exact no-ops: run 0 is plain Adam.
    np.testing.assert_allclose(both.test_acc[0], plain.test_acc[0], atol=1e-6)
    np.testing.assert_allclose(
        both.params[1]["w"][0], plain.params[1]["w"][0], rtol=1e-5, atol=1e-6
    )
    # The L2 run differs, and select() keeps the per-run arrays aligned.
    assert not np.allclose(both.params[1]["w"][1], plain.params[1]["w"][0])
    sel = both.select([1], "l2")
    assert sel.name == "l2" and sel.test_acc.shape == (1, 2)
    np.testing.assert_array_equal(sel.params[0]["b"][0], both.params[0]["b"][1])
    with pytest.raises(ValueError, match="one entry per run"):
        training.train(
            "bad",
            small,
            optimizer=opt,
            train_logits=fwd,
            seeds=[0, 1, 2],
            hparams={"rate": np.zeros(2), "l2": np.zeros(3)},
            **kw,
        )


def test_early_stopping_freezes_and_restores_best(data):
    small = datasets.Data(
        data.x_train[:600], data.y_train[:600], data.x_test[:200], data.y_test[:200]
    )
    fit, val = small.split_validation(200)
    h = training.train(
        "es",
        fit,
        sizes=(40, 32, 10),
        optimizer=optax.adam(3e-2),
        train_logits=lambda p, x, k: models.mlp_apply(p, x),
        seeds=2,
        epochs=40,
        batch_size=100,
        early_stopping=jaxreg.early_stopping(2, keep_best=True),
        validation=val,
        progress=False,
    )
    # A 32-unit MLP on 400 examples at lr 3e-2 overfits fast: both seeds stop.
    assert (h.final["epochs"] < 40).all()
    assert h.train_loss.shape[1] == h.final["epochs"].max()


# ------------------------------------------------------------------- the study
def test_study_quick(tmp_path, cache):
    study = _load("mnist1d_study")
    hs = study.main(["--quick", "--out", str(tmp_path), "--cache", str(cache)])
    names = [c.name for c in study.configurations()]
    assert [h.name for h in hs] == names
    assert len(names) == len(set(names)) >= 12
    for h in hs:
        assert h.final["test_acc"].shape == (3,)  # 3 seeds
        assert ((0 <= h.final["test_acc"]) & (h.final["test_acc"] <= 1)).all()
        np.testing.assert_allclose(
            h.final["gap"], h.final["train_acc"] - h.final["test_acc"]
        )
    text = (tmp_path / "results.md").read_text()
    assert all(f"| {n}" in text for n in names)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == set(names)
    assert _is_png(tmp_path / "learning_curves.png")
    assert _is_png(tmp_path / "test_loss.png")


def test_study_forward_is_plain_mlp_when_everything_is_off():
    study = _load("mnist1d_study")
    params = models.init_mlp(0, (40, 8, 10))
    x = jnp.linspace(-1, 1, 3 * 40).reshape(3, 40)
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in study.OFF.items()}
    np.testing.assert_allclose(
        study.forward(params, x, jax.random.key(0), hp),
        models.mlp_apply(params, x),
        rtol=1e-6,
    )


def test_study_forward_random_shift_row_shifts_the_inputs():
    # The "random shift" row (shift = 1) must see jaxreg.random_shift of the
    # inputs, drawn from the key the forward pass derives for it, and nothing
    # else; shift = 0 must leave them alone.
    study = _load("mnist1d_study")
    params = models.init_mlp(0, (40, 8, 10))
    x = jnp.linspace(-1, 1, 3 * 40).reshape(3, 40)
    key = jax.random.key(3)
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in study.OFF.items()}
    off = study.forward(params, x, key, hp)
    on = study.forward(params, x, key, {**hp, "shift": jnp.float32(1.0)})
    k_in = jax.random.split(key, 3)[0]
    k_shift = jax.random.split(k_in)[1]
    shifted = jaxreg.random_shift(k_shift, x, max_shift=study.SHIFT, mode="wrap")
    assert not bool(jnp.all(shifted == x))  # the key really moves something
    np.testing.assert_allclose(on, models.mlp_apply(params, shifted), rtol=1e-6)
    np.testing.assert_allclose(off, models.mlp_apply(params, x), rtol=1e-6)
    assert not np.allclose(on, off)


# ---------------------------------------------------------------------- guides
def test_guide_inference_quick(tmp_path, cache):
    guide = _load("guide_inference")
    rows, checks, diff = guide.main(
        ["--quick", "--out", str(tmp_path), "--cache", str(cache)]
    )
    assert _is_png(tmp_path / "inference_classic_vs_inverted.png")
    assert len(rows) == 5
    assert diff < 1e-5  # matched classic == inverted, reparametrized (0 here)
    for z_eval, mean, zscore in checks.values():
        assert z_eval.shape == mean.shape == (200, 256)
        # E[train-mode z] == eval z: the z-scores of the Monte-Carlo means are
        # standard normal; fewer than 1% beyond 4 sigma (expected 0.006%).
        assert np.mean(np.abs(zscore) > 4) < 0.01
        assert abs(zscore.mean()) < 0.2


def test_guide_ensemble_quick(tmp_path, cache):
    guide = _load("guide_ensemble")
    ws, table = guide.main(["--quick", "--out", str(tmp_path), "--cache", str(cache)])
    assert _is_png(tmp_path / "dropout_masks.png")
    assert _is_png(tmp_path / "dropout_ensemble.png")
    assert ws.shape == (2, 2)  # seeds x (accuracy, NLL)
    assert [k for k, _ in table] == [1, 2, 5, 10]


def test_guide_variance_quick(tmp_path, cache):
    guide = _load("guide_variance")
    runs, rows = guide.main(["--quick", "--out", str(tmp_path), "--cache", str(cache)])
    assert _is_png(tmp_path / "dropout_variance.png")
    rec = runs["dropout 0.5"].extra["record"]
    assert rec["vh_train"].shape == (2, 2, 3)  # seeds x epochs x layers
    # Without dropout, train mode and eval mode are the same network.
    r0 = runs["no dropout"].extra["record"]
    np.testing.assert_allclose(r0["vh_train"], r0["vh_eval"], rtol=1e-5)
    # Inverted dropout raises the train-mode variance of every layer.
    assert (rec["vh_train"] > rec["vh_eval"]).all()


def test_guide_dropout_weight_decay_quick(tmp_path, cache):
    guide = _load("guide_dropout_weight_decay")
    mean, inter = guide.main(["--quick", "--out", str(tmp_path), "--cache", str(cache)])
    assert _is_png(tmp_path / "dropout_weight_decay.png")
    assert mean.shape == inter.shape == (len(guide.RATES), len(guide.DECAYS))
    # The interaction is zero by construction on the first row and column.
    np.testing.assert_allclose(inter[0], 0, atol=1e-9)
    np.testing.assert_allclose(inter[:, 0], 0, atol=1e-9)
