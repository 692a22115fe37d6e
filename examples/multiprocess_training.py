"""Data-parallel training with dropout over two processes, checked against one.

``python -m examples.multiprocess_training`` starts three Python processes on this
machine:

* two *workers* that form one JAX program with ``jax.distributed.initialize``
  (coordinator on ``127.0.0.1`` at a free port, CPU collectives over gloo), each
  with 4 simulated CPU devices, so the global mesh has 8 devices;
* one *reference*: a single process with 8 simulated CPU devices.

All three run the same 5 data-parallel training steps of a small MLP with
inverted dropout (:func:`jaxreg.dropout`, rate 0.3) after both hidden layers, on
a mesh ``data`` of 8 devices with an Explicit axis: the batch (global size 64) is
split over ``data``, the parameters are replicated, and the gradient is reduced
over ``data`` by XLA. The launcher then checks that

* the dropout masks of every step are bit for bit the same (each device draws
  the mask of its own examples from their global indices, whichever process it
  belongs to);
* the losses agree to 1e-6 (relative) and the parameters to float32 rounding
  (the gradient's cross-device sum may be reduced in another order over gloo
  than inside one process).

It prints a table and exits with status 1 if a check fails. Every child process
is bounded by ``--timeout`` seconds and killed if it overruns; a failing worker
takes the other down. ``tests/test_multiprocess.py`` runs this script.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

STEPS = 5
RATE = 0.3
BATCH = 64
SIZES = (16, 32, 32, 4)
LEARNING_RATE = 0.1


# ----------------------------------------------------------------- the training
def train(out: pathlib.Path) -> None:
    """Run the training steps on all devices of the JAX program; the process
    with index 0 writes losses, parameters and masks to ``out`` (npz)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxreg

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def init(key):
        params = []
        for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
            w = jax.random.normal(jax.random.fold_in(key, i), (n_in, n_out))
            params.append({"w": w / np.sqrt(n_in), "b": jnp.zeros(n_out)})
        return params

    def forward(params, x, key):
        masks = []
        for i, layer in enumerate(params):
            x = x @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                x = jax.nn.relu(x)
                layer_key = jax.random.fold_in(key, i)
                x = jaxreg.dropout(layer_key, x, RATE)
                # the mask dropout used, laid out like x (split over "data")
                sharding = jax.typeof(x).sharding
                masks.append(
                    jaxreg.keep_mask(layer_key, x.shape, RATE, out_sharding=sharding)
                )
        return x, masks

    def loss_fn(params, x, y, key):
        logits, masks = forward(params, x, key)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), masks

    @jax.jit
    def step(params, x, y, key):
        (loss, masks), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, x, y, key
        )
        params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)
        return params, loss, masks

    # Every process builds the same global data and parameters from fixed keys
    # and hands JAX the parts its own devices hold.
    def place(a, sharding):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])

    data_key = jax.random.key(1)
    x_all = jax.random.normal(data_key, (STEPS, BATCH, SIZES[0]))
    y_all = jax.random.randint(jax.random.fold_in(data_key, 1), (STEPS, BATCH), 0, 4)
    params = jax.tree.map(lambda a: place(a, replicated), init(jax.random.key(0)))
    dropout_key = jax.random.key(2)
    losses, masks = [], []
    for t in range(STEPS):
        x = place(x_all[t], batch_sharding)
        y = place(y_all[t], batch_sharding)
        params, loss, step_masks = step(
            params, x, y, jax.random.fold_in(dropout_key, t)
        )
        assert jax.typeof(step_masks[0]).sharding.spec == P("data", None)
        losses.append(float(loss.addressable_data(0)))
        masks += [multihost_utils.process_allgather(m, tiled=True) for m in step_masks]
    leaves = [np.asarray(p.addressable_data(0)) for p in jax.tree.leaves(params)]
    if jax.process_index() == 0:
        np.savez(
            out,
            losses=np.asarray(losses),
            masks=np.stack([np.asarray(m) for m in masks]),
            **{f"param_{i}": leaf for i, leaf in enumerate(leaves)},
        )


def child(args) -> None:
    """A worker (``--process-id``) or the reference (``--single``)."""
    if args.process_id is not None:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=2,
            process_id=args.process_id,
            initialization_timeout=int(args.timeout),
        )
        assert jax.device_count() == 8 and jax.local_device_count() == 4
        assert jax.process_count() == 2
    train(pathlib.Path(args.out))


# ------------------------------------------------------------------ the launcher
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _wait(procs: dict, deadline: float) -> dict:
    """Wait for every process; kill them all on a timeout or on a failure (a
    worker whose peer died would otherwise wait for it). Returns the outputs."""
    outputs = {}
    try:
        while len(outputs) < len(procs):
            for name, proc in procs.items():
                if name in outputs or proc.poll() is None:
                    continue
                outputs[name] = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"{name} exited with status {proc.returncode}:\n"
                        + outputs[name][1][-3000:]
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not done in time: {sorted(set(procs) - set(outputs))}"
                )
            time.sleep(0.05)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def run(timeout: float, workdir: pathlib.Path) -> dict:
    """Start the two workers and the reference, wait, and compare."""
    import numpy as np

    script = str(pathlib.Path(__file__).resolve())
    port = _free_port()
    start = time.monotonic()
    procs = {}
    for i in range(2):
        cmd = [sys.executable, script, "--process-id", str(i), "--port", str(port)]
        cmd += ["--out", str(workdir / "multi.npz"), "--timeout", str(int(timeout))]
        procs[f"worker {i}"] = subprocess.Popen(
            cmd, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    cmd = [sys.executable, script, "--single", "--out", str(workdir / "single.npz")]
    procs["reference"] = subprocess.Popen(
        cmd, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait(procs, start + timeout)
    seconds = time.monotonic() - start
    multi, single = np.load(workdir / "multi.npz"), np.load(workdir / "single.npz")
    n_params = len([k for k in single.files if k.startswith("param_")])
    loss_rel = np.abs(multi["losses"] - single["losses"]) / np.abs(single["losses"])
    param_abs = max(
        float(np.abs(multi[f"param_{i}"] - single[f"param_{i}"]).max())
        for i in range(n_params)
    )
    param_scale = max(
        float(np.abs(single[f"param_{i}"]).max()) for i in range(n_params)
    )
    return {
        "losses_single": single["losses"].tolist(),
        "losses_two_processes": multi["losses"].tolist(),
        "max_rel_loss_diff": float(loss_rel.max()),
        "max_abs_param_diff": param_abs,
        "max_abs_param": param_scale,
        "masks_equal": bool(np.array_equal(multi["masks"], single["masks"])),
        "mask_shape": list(single["masks"].shape),
        "kept_fraction": float(single["masks"].mean()),
        "seconds": seconds,
    }


def check(result: dict) -> list[str]:
    """The failed checks (empty when the two-process run equals the single one).

    Parameters: after 5 steps of size 0.1 on gradients that agree to float32
    rounding, a difference of 1e-6 relative to the largest parameter allows
    about 8 float32 ulps per step."""
    failed = []
    if not result["masks_equal"]:
        failed.append("dropout masks differ")
    if not result["max_rel_loss_diff"] <= 1e-6:
        failed.append(f"losses differ by {result['max_rel_loss_diff']:.2g} (relative)")
    if not result["max_abs_param_diff"] <= 1e-6 * result["max_abs_param"]:
        failed.append(f"parameters differ by {result['max_abs_param_diff']:.2g}")
    return failed


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds, in all")
    ap.add_argument("--json", help="also write the result to this file")
    ap.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.single or args.process_id is not None:
        child(args)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.timeout, pathlib.Path(tmp))
    failed = check(result)
    result["failed"] = failed
    print("step  loss (1 process, 8 devices)  loss (2 processes x 4 devices)")
    pairs = zip(result["losses_single"], result["losses_two_processes"], strict=True)
    for t, (a, b) in enumerate(pairs):
        print(f"{t + 1:4d}  {a:.9f}                  {b:.9f}")
    print(
        f"dropout masks equal: {result['masks_equal']} "
        f"({result['mask_shape'][0]} masks of {result['mask_shape'][1:]}, "
        f"kept {result['kept_fraction']:.3f}); max relative loss difference "
        f"{result['max_rel_loss_diff']:.2g}; max parameter difference "
        f"{result['max_abs_param_diff']:.2g}; {result['seconds']:.1f} s"
    )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    if failed:
        print("FAILED: " + "; ".join(failed))
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
