"""Sharding: masks are generated per device, layout-independent, communication-free.

One subprocess (jax start-up is costly) runs ``tests/_sharding_worker.py`` on 8
simulated CPU devices (``--xla_force_host_platform_device_count=8`` must be set
before jax is imported, hence the subprocess). For every configuration (mode,
mesh, axis types, spec) and function it reports the largest difference from the
unsharded result with the tolerance that applies (0 for elementwise maths),
whether the output's type has the input's sharding, and the collectives of the
compiled HLO; the tests below assert on that report.

The tests after them run in this process (one device): the arguments that ask
for a layout (``out_sharding=``, ``shard_spec=``) and their errors.
"""

import fcntl
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxreg

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "_sharding_worker.py"

_spec = importlib.util.spec_from_file_location("_sharding_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
CASES = worker.cases()

# Every function of jaxreg that draws randomness (the list).
RANDOMISED = {
    "keep_mask",
    "dropout",
    "spatial_dropout",
    "drop_path",
    "dropblock",
    "alpha_dropout",
    "zoneout",
    "gaussian_dropout",
    "gaussian_noise",
    "dropconnect",
    "dropconnect_dense",
    "dropconnect_dense_per_example",
    "dropconnect_params",
    "dropconnect_inference",
    "mixup",
    "cutmix",
    "cutout",
    "random_shift",
    "concrete_dropout",
    "sparse_vd_dense",
    "mc_dropout_predict",
}


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
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert records and records[-1].get("done"), proc.stdout[-3000:]
    return records


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The worker's records by configuration; the subprocess runs once per test
    session.

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
    by_case = {}
    for r in records:
        if "case" in r:
            by_case.setdefault(tuple(r["case"][:4]), []).append(r)
    return by_case


def _functions(report, mode, axis_type=None):
    return {
        r["case"][4]
        for case, records in report.items()
        for r in records
        if case[0] == mode and axis_type in (None, case[2])
    }


def _base(name):
    """The jaxreg function a worker case name exercises."""
    if name == "dropconnect_kernel":  # dropconnect on the (in, out) kernel
        return "dropconnect"
    for prefix in ("dropout_", "keep_mask_", "dropblock_", "alpha_dropout_"):
        if name.startswith(prefix):
            return prefix[:-1]
    return name


def test_the_worker_covers_meshes_axis_types_specs_and_functions(report):
    assert set(report) == set(CASES), "worker did not report every configuration"
    explicit_jit = [c for c in CASES if c[0] == "jit" and c[2] == "Explicit"]
    for mesh in ("8", "2x4", "4x2"):
        specs = {c[3] for c in explicit_jit if c[1] == mesh}
        assert {"batch", "features"} <= specs
        if mesh != "8":
            assert "both" in specs
        assert any(c[:3] == ("jit", mesh, "Auto") for c in CASES)
        assert any(c[:2] == ("shard_map", mesh) for c in CASES)
    covered = {_base(n) for n in _functions(report, "jit", "Explicit")}
    covered |= {_base(n) for n in _functions(report, "communicating")}
    assert covered == RANDOMISED
    grads = {_base(n) for n in _functions(report, "grad")}
    assert RANDOMISED - grads <= {"keep_mask", "mixup", "cutmix"}
    shard_mapped = {_base(n) for n in _functions(report, "shard_map")}
    assert {"dropout", "drop_path", "keep_mask", "dropblock"} <= shard_mapped
    assert {"dropout_broadcast_batch", "dropout_broadcast_features"} <= (
        _functions(report, "shard_map")
    )
    assert {c[2] for c in CASES if c[0] == "shard_map"} == {"Auto", "Explicit"}


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_sharded_equals_unsharded_keeps_sharding_and_does_not_communicate(report, case):
    records = report.get(case)
    assert records, f"worker did not report {case}"
    for r in records:
        name = r["case"][4]
        # Bit for bit (tol 0) for elementwise maths; the stated float32 rounding
        # bound for multiply-adds and matmuls (see the worker's TOLERANCE).
        assert r["max_err"] <= r["tol"], (
            f"{name}: differs from unsharded by {r['max_err']} (tol {r['tol']})"
        )
        assert r["same_sharding"] is not False, (
            f"{name}: output sharding {r['out_spec']} is not the input's"
        )
        if r["communicates"]:
            continue  # see the worker's COMMUNICATING for why it must
        allowed = set(r["control_collectives"] or ())
        assert set(r["collectives"]) <= allowed, (
            f"{name}: compiled HLO contains {r['collectives']}"
        )


def test_explicit_outputs_are_checked_for_their_sharding(report):
    # The sharding claim is asserted on every Explicit configuration.
    for case, records in report.items():
        if case[2] == "Explicit" and case[0] != "shard_map":
            assert all(r["same_sharding"] is True for r in records), case


def test_communication_only_where_the_maths_needs_it(report):
    loud = {
        r["case"][4]
        for records in report.values()
        for r in records
        if r["communicates"] and r["collectives"]
    }
    assert loud == {"mixup", "cutmix", "random_shift"}
    # shard_map forms (incl. DropBlock with its spatial axes split) never do.
    for case, records in report.items():
        if case[0] == "shard_map":
            assert all(r["communicates"] is None for r in records)


# ------------------------------------------------- layout arguments, in process


def _mesh(*axis_types):
    shape = (1,) * len(axis_types)
    names = ("i", "j")[: len(axis_types)]
    return jax.make_mesh(shape, names, axis_types=axis_types)


def test_shard_spec_block_equals_the_global_mask_on_one_device():
    mesh = _mesh(AxisType.Explicit, AxisType.Explicit)
    key, x = jax.random.key(0), jax.random.normal(jax.random.key(1), (6, 10))

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(P(), P("i", "j")), out_specs=P("i", "j"))
    def local(key, x):
        return jaxreg.dropout(key, x, 0.4, broadcast_dims=0, shard_spec=P("i", "j"))

    with jax.set_mesh(mesh):
        xs = jax.device_put(x, P("i", "j"))
        np.testing.assert_array_equal(
            local(key, xs), jaxreg.dropout(key, x, 0.4, broadcast_dims=0)
        )


def _in_shard_map(fn, axis_names=None):
    """Run ``fn(x)`` inside a shard_map over a (1, 1) Auto mesh."""
    mesh = _mesh(AxisType.Auto, AxisType.Auto)
    x = jnp.ones((4, 6))
    names = set(axis_names or ("i", "j"))
    spec = P(*[a if a in names else None for a in ("i", "j")])
    return jax.shard_map(
        fn, mesh=mesh, in_specs=spec, out_specs=spec, axis_names=names
    )(x)


@pytest.mark.parametrize(
    ("spec", "axis_names", "match"),
    [
        (P("i", "j", None), None, r"`shard_spec`=P\('i', 'j', None\) has 3 entries"),
        (P("i", "k"), None, r"names mesh axis 'k', which the mesh lacks"),
        (P("i", "i"), None, r"uses mesh axis 'i' twice"),
        (P("i", "j"), ("i",), r"mesh axis 'j', which is not manual"),
    ],
)
def test_bad_shard_spec_inside_shard_map(spec, axis_names, match):
    key = jax.random.key(0)
    for fn in (
        lambda x: jaxreg.dropout(key, x, 0.5, shard_spec=spec),
        lambda x: jaxreg.drop_path(key, x, 0.5, shard_spec=spec),
        lambda x: jaxreg.zoneout(key, x, x, 0.5, shard_spec=spec),
        lambda x: jaxreg.keep_mask(key, x.shape, 0.5, shard_spec=spec) * x,
    ):
        with pytest.raises(ValueError, match=match):
            _in_shard_map(fn, axis_names)


def test_shard_spec_outside_shard_map_and_of_the_wrong_type():
    key, x = jax.random.key(0), jnp.ones((4, 6))
    with pytest.raises(ValueError, match=r"only meaningful inside jax.shard_map"):
        jaxreg.dropout(key, x, 0.5, shard_spec=P("i"))
    with jax.set_mesh(_mesh(AxisType.Explicit)):  # a mesh, but no manual axis
        with pytest.raises(ValueError, match=r"no mesh axis is manual"):
            jaxreg.keep_mask(key, (4,), 0.5, shard_spec=P("i"))
    with pytest.raises(TypeError, match=r"`shard_spec` must be a .*PartitionSpec"):
        jaxreg.spatial_dropout(key, jnp.ones((2, 3, 4)), 0.5, shard_spec=("i",))
    with pytest.raises(ValueError, match=r"more than the 4 axes"):
        jaxreg.dropblock(key, jnp.ones((1, 4, 4, 1)), 0.5, shard_spec=P(*"iiiii"))


def test_keep_mask_out_sharding():
    key = jax.random.key(3)
    want = jaxreg.keep_mask(key, (4, 6), 0.5, broadcast_dims=0)
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        mesh = _mesh(axis_type, axis_type)
        named = NamedSharding(mesh, P("i", "j"))
        got = jaxreg.keep_mask(key, (4, 6), 0.5, broadcast_dims=0, out_sharding=named)
        np.testing.assert_array_equal(got, want)
        assert got.sharding.is_equivalent_to(named, 2)
        with jax.set_mesh(mesh):  # a PartitionSpec of the mesh in context
            got = jaxreg.keep_mask(key, (4, 6), 0.5, out_sharding=P("i"))
            np.testing.assert_array_equal(got, jaxreg.keep_mask(key, (4, 6), 0.5))
    # the sharding of an array outside any mesh means "no sharding"
    x = jnp.ones((4, 6))
    got = jaxreg.keep_mask(key, x.shape, 0.0, out_sharding=jax.typeof(x).sharding)
    assert bool(got.all())


def test_bad_out_sharding():
    key = jax.random.key(0)
    with pytest.raises(TypeError, match=r"`out_sharding` must be None, a .*got str"):
        jaxreg.keep_mask(key, (4,), 0.5, out_sharding="i")
    with pytest.raises(ValueError, match=r"PartitionSpec but no mesh is set"):
        jaxreg.keep_mask(key, (4,), 0.5, out_sharding=P("i"))
    named = NamedSharding(_mesh(AxisType.Explicit), P("i", None))
    with pytest.raises(ValueError, match=r"has 2 entries, more than the 1 axes"):
        jaxreg.keep_mask(key, (4,), 0.5, out_sharding=named)
