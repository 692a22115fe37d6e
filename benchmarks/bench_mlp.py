"""P2 / P3 / P3' / P4b / P5: dropout inside an 8-layer tanh MLP, and compile time.

Usage::

    python benchmarks/bench_mlp.py                 # everything (slow: ~100 steps)
    python benchmarks/bench_mlp.py --only memory   # P3, P3' (compile only, fast)
    python benchmarks/bench_mlp.py --only time     # P2 (f32) and P4b (bf16)
    python benchmarks/bench_mlp.py --only compile  # P5

The net: 8 layers ``h = dropout(tanh(h @ W + b), 0.1)``, 1024 wide, batch 4096;
a step is the jitted gradient of the mean squared output w.r.t. the parameters
(forward + backward). Every figure is a ratio *with dropout / without dropout* for
the same net, measured in one process:

* P2 / P4b: step time (median of ``--repeats`` interleaved runs after warm-up),
  f32 and bf16 (parameters and activations);
* every figure also for the fused form ``jaxreg.dropout(key, pre, rate,
  activation="tanh")``, which computes the same net from the pre-activation;
* P3: compiled temporary memory
  (``jax.jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes``)
  with ``jax.checkpoint`` on every layer; P3': the same without checkpoint;
* P5: compile time (``lower`` + ``compile``) of a 48-layer version (256 wide,
  batch 256), as a ratio to ``flax.linen.Dropout`` (other peers with
  ``--all-peers``; "n/m" = not measured).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
from _harness import (
    FUSED_TANH,
    MLP_DROPOUTS,
    interleaved_medians,
    load_note,
    mlp_loss_fn,
    mlp_params,
    mlp_step,
    table,
    versions,
)

DEPTH, WIDTH, BATCH = 8, 1024, 4096


def _inputs(depth, width, batch, dtype):
    params = mlp_params(jax.random.key(0), depth, width, dtype)
    x = jax.random.normal(jax.random.key(1), (batch, width)).astype(dtype)
    return params, x, jax.random.key(2)


def temp_bytes(dropout_fn, *, remat: bool, dtype=jnp.float32) -> int:
    args = _inputs(DEPTH, WIDTH, BATCH, dtype)
    compiled = mlp_step(dropout_fn, remat=remat).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def memory_rows() -> list[list[str]]:
    rows = []
    for label, remat in (
        ("P3 (checkpoint per layer)", True),
        ("P3' (no checkpoint)", False),
    ):
        base = temp_bytes(None, remat=remat)
        row = [label, f"{base / 2**20:.0f} MiB"]
        for fn in MLP_DROPOUTS.values():
            row.append(f"{temp_bytes(fn, remat=remat) / base:.2f}x")
        rows.append(row)
    return rows


def time_rows(repeats: int) -> list[list[str]]:
    rows = []
    for label, dtype in (("P2 f32", jnp.float32), ("P4b bf16", jnp.bfloat16)):
        args = _inputs(DEPTH, WIDTH, BATCH, dtype)
        fns = {"none": functools.partial(mlp_step(None), *args)}
        for name, fn in MLP_DROPOUTS.items():
            fns[name] = functools.partial(mlp_step(fn), *args)
        med = interleaved_medians(fns, repeats=repeats, warmup=1)
        row = [label, f"{med['none']:.2f} s"]
        row += [f"{med[name] / med['none']:.3f}x" for name in MLP_DROPOUTS]
        rows.append(row)
    return rows


def compile_seconds(dropout_fn, depth=48, width=256, batch=256) -> float:
    args = _inputs(depth, width, batch, jnp.float32)
    # A fresh function object each time, so nothing is served from a cache.
    step = jax.jit(jax.grad(mlp_loss_fn(dropout_fn, remat=False)))
    t0 = time.perf_counter()
    step.lower(*args).compile()
    return time.perf_counter() - t0


def compile_rows(repeats: int, all_peers: bool) -> list[list[str]]:
    # Each compile takes tens of seconds on a loaded 2-core machine, so by default
    # only jaxreg (both forms) and the reference flax.linen are compiled; the other
    # peers use the same jax.random.bernoulli lowering as flax.linen.
    names = (
        list(MLP_DROPOUTS)
        if all_peers
        else ["jaxreg.dropout", FUSED_TANH, "flax.linen.Dropout"]
    )
    for n in names:  # warm up the tracing caches of every peer
        compile_seconds(MLP_DROPOUTS[n])
    times = {n: [] for n in names}
    for _ in range(repeats):
        for n in names:
            times[n].append(compile_seconds(MLP_DROPOUTS[n]))
    med = {n: statistics.median(t) for n, t in times.items()}
    ref = med["flax.linen.Dropout"]
    return [
        ["P5 compile, 48 layers", f"{ref:.2f} s"]
        + [f"{med[n] / ref:.2f}x" if n in med else "n/m" for n in MLP_DROPOUTS]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=["memory", "time", "compile"])
    parser.add_argument(
        "--all-peers", action="store_true", help="P5 for every peer (slow)"
    )
    args = parser.parse_args()
    print(f"<!-- {versions()}; {load_note()} at start -->\n")
    header = [f"`{n}`" for n in MLP_DROPOUTS]
    if args.only in (None, "memory"):
        print(
            "Compiled temp memory of the fwd+bwd step, with dropout / without "
            "(targets for jaxreg: P3 <= 1.10x, P3' <= 1.6x)\n"
        )
        print(table(["figure", "without dropout"] + header, memory_rows()))
        print()
    if args.only in (None, "time"):
        print(
            "Step time (fwd+bwd), with dropout / without (target for jaxreg: "
            "<= 1.10x)\n"
        )
        print(table(["figure", "without dropout"] + header, time_rows(args.repeats)))
        print()
    if args.only in (None, "compile"):
        print("Compile time of a 48-layer MLP step, / flax.linen (target <= 1.0x)\n")
        print(
            table(
                ["figure", "flax.linen"] + header,
                compile_rows(args.repeats, args.all_peers),
            )
        )
        print()
    print(f"<!-- {load_note()} at end -->")


if __name__ == "__main__":
    main()
