"""``examples/spectral_norm.py`` runs end to end in its ``--quick`` configuration:
the constrained kernels end at or below their bound, and the stacked calls equal
the per-layer ones."""

from __future__ import annotations

import json

import numpy as np
from _helpers import load_example as _load


def test_spectral_norm_quick(tmp_path):
    example = _load("spectral_norm")
    summary = example.main(
        ["--quick", "--out", str(tmp_path), "--cache", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "spectral_norm.json").read_text())
    assert saved["table"] == summary["table"]
    sigma = np.asarray(saved["results"]["spectral norm <= 2"]["sigma_max"])
    # Two epochs of one power-iteration step each: the estimate is close to the
    # largest singular value, within a few percent above the bound at most.
    assert sigma.shape == (1, 2) and np.all(sigma <= 2.0 * 1.05)
    checks = saved["stacked"]
    assert checks["mask_by_ndim equal"] == 1.0
    assert checks["max_norm_constraint max |diff|"] < 1e-6
    assert checks["max_spectral_norm max |diff|"] < 1e-6
