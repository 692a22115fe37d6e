"""Two processes (``jax.distributed``) train exactly like one.

``examples/multiprocess_training.py`` starts two worker processes that form one
JAX program over 8 simulated CPU devices (4 each, coordinator on 127.0.0.1 at a
free port, gloo CPU collectives) and a single reference process with 8 simulated
devices; each runs 5 data-parallel steps of an MLP with dropout. The script is
bounded in time (it kills its children past ``--timeout``) and prints the
comparison; this test runs it and asserts on its JSON result.
"""

import json
import pathlib
import subprocess
import sys

from _helpers import load_example

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "multiprocess_training.py"),
            "--timeout",
            "300",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=360,  # the script's own limit plus its start-up
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failed"] == []
    # the checks the script applies, restated: masks bit for bit, losses to
    # 1e-6 relative, parameters to float32 rounding
    assert result["masks_equal"] is True
    assert result["mask_shape"] == [10, 64, 32]  # 5 steps x 2 layers
    assert 0.65 < result["kept_fraction"] < 0.75  # rate 0.3
    assert len(result["losses_single"]) == len(result["losses_two_processes"]) == 5
    assert result["max_rel_loss_diff"] <= 1e-6
    assert result["max_abs_param_diff"] <= 1e-6 * result["max_abs_param"]
    # training moved: the loss is not constant
    assert len(set(result["losses_single"])) > 1


def test_the_launcher_kills_its_children_on_timeout_and_on_failure():
    import time

    import pytest

    launcher = load_example("multiprocess_training")  # imports no jax
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    for extra, error, match in [
        ([], TimeoutError, "not done in time"),
        ([fail], RuntimeError, "exited with status 3"),
    ]:
        procs = {
            f"p{i}": subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for i, cmd in enumerate([sleep, *extra])
        }
        start = time.monotonic()
        with pytest.raises(error, match=match):
            launcher._wait(procs, start + 1.0)
        assert time.monotonic() - start < 30
        assert all(p.poll() is not None for p in procs.values())  # none left
    port = launcher._free_port()
    assert 0 < port < 65536
