"""Smoke tests: tiny configurations of the Bayesian-dropout example scripts.

The full experiments (and the figures of the guide) are produced by

    python -m examples.bayesian_dropout
    python -m examples.curriculum_dropout

These tests run the same code paths with ``--quick`` (a few hundred examples, tiny
MLPs, one seed, two epochs) and check what the scripts produce.
"""

import json
import pathlib

import numpy as np
import pytest
from _helpers import load_example as _load

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bayes(tmp_path_factory):
    out = tmp_path_factory.mktemp("bayes")
    mod = _load("bayesian_dropout")
    results = mod.main(["--quick", "--epochs", "2", "--seeds", "1", "--out", str(out)])
    return out, results


def test_bayesian_dropout_quick_writes_figures_and_numbers(bayes):
    out, results = bayes
    assert (out / "bayesian_concrete_rates.png").stat().st_size > 1000
    assert (out / "bayesian_sparse_vd.png").stat().st_size > 1000
    saved = json.loads((out / "bayesian_dropout.json").read_text())
    assert set(saved) == {"concrete", "sparse_vd"}


def test_concrete_quick_learns_rates_per_layer(bayes):
    _, results = bayes
    c = results["concrete"]
    rates = np.asarray(c["final_rates"])
    assert rates.shape == (1, len(c["layer_inputs"]))
    assert np.all((rates > 0) & (rates < 1))
    # the rates moved away from their common initial value 0.1
    assert np.all(rates != np.float32(0.1))


def test_sparse_vd_quick_reports_pruning_and_both_accuracies(bayes):
    _, results = bayes
    s = results["sparse_vd"]
    assert 0.0 <= s["pruned_fraction"][0] <= 1.0
    assert len(s["pruned_per_layer"][0]) == len(s["sizes"]) - 1
    for key in ("test_acc_plain", "test_acc_sparse_vd"):
        assert 0.0 <= s[key][0] <= 1.0
    assert s["num_weights"] == sum(
        m * n for m, n in zip(s["sizes"][:-1], s["sizes"][1:], strict=True)
    )


def test_curriculum_quick_one_compilation_and_rising_rate(tmp_path):
    mod = _load("curriculum_dropout")
    summary = mod.main(["--quick", "--epochs", "2", "--out", str(tmp_path)])
    assert (tmp_path / "curriculum_dropout.png").stat().st_size > 1000
    # The rate is traced: each configuration's whole run compiles exactly once.
    assert all(v["compilations"] == 1 for v in summary.values())
    import jax.numpy as jnp

    r = np.asarray(mod.curriculum_rate(jnp.arange(0, 1000, 100), 1000, 0.5))
    assert r[0] == 0.0 and np.all(np.diff(r) > 0) and r[-1] < 0.5
