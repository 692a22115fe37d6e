"""Sharding: masks are generated shard-locally and are layout-independent.

One subprocess (jax start-up is costly) runs ``tests/_sharding_worker.py`` on 8
simulated CPU devices (``--xla_force_host_platform_device_count=8`` must be set
before jax is imported, hence the subprocess). For every (function, mesh,
PartitionSpec) case it reports whether the jitted output on the sharded input
equals the single-device output bit for bit, and which collectives the compiled
HLO contains; the tests below assert on that report.
"""

import fcntl
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "_sharding_worker.py"

_spec = importlib.util.spec_from_file_location("_sharding_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
CASES = worker.cases()


def _run_worker():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(WORKER)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert records and records[-1].get("done"), proc.stdout[-3000:]
    return records


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The worker's records by case; the subprocess runs once per test session.

    Under pytest-xdist the cases may be spread over several workers; they share
    one report through a file in the session's temporary directory, written by
    whichever worker takes the lock first.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by all workers of this session
    path = root / "sharding_report.json"
    with open(root / "sharding_report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            records = json.loads(path.read_text())
        else:
            records = _run_worker()
            path.write_text(json.dumps(records))
    return {tuple(r["case"]): r for r in records if "case" in r}


def test_the_worker_covers_meshes_specs_and_functions():
    meshes = {m for _, m, _ in CASES}
    specs = {s for _, _, s in CASES}
    functions = {f for f, _, _ in CASES}
    assert meshes == {"8", "2x4", "4x2"}
    assert {"rows", "cols", "2d", "replicated", "batch", "channels"} <= specs
    for fn in ("keep_mask", "spatial_dropout", "drop_path"):
        assert {m for f, m, _ in CASES if f == fn} == meshes
    assert {"dropout", "keep_mask", "spatial_dropout", "drop_path"} <= functions


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_sharded_equals_single_device_and_has_no_collectives(report, case):
    record = report.get(case)
    assert record is not None, f"worker did not report {case}"
    assert record["equal"], f"{case}: sharded output differs from single device"
    assert record["collectives"] == [], (
        f"{case}: compiled HLO contains {record['collectives']}"
    )
