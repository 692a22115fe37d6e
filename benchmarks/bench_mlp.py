"""P2 / P3 / P3' / P4b / P5 / S1-S3: dropout inside an 8-layer tanh MLP, and compile time.

Usage::

    python benchmarks/bench_mlp.py                 # everything (slow: ~200 steps)
    python benchmarks/bench_mlp.py --only memory   # P3, P3' (compile only, fast)
    python benchmarks/bench_mlp.py --only time     # P2 (f32) and P4b (bf16), peers
    python benchmarks/bench_mlp.py --only step     # S1-S3: issue 17's step overhead
    python benchmarks/bench_mlp.py --only step --quick   # S2, S3 only (small, fast)
    python benchmarks/bench_mlp.py --only compile  # P5
    python benchmarks/bench_mlp.py --only hlo      # where the hash runs (compile only)

``--only step`` is the configuration of issue 17: 8 layers of width 1024, batch
4096, rate 0.1 after every layer, ``jax.grad`` of the *sum* of squares, no
checkpointing (S1); the same with width 512 and batch 1024 (S2); and a small
transformer-like block stack (S3, :func:`transformer_loss`). Each row gives the
step time without dropout and the ratios of the unfused form
``dropout(key, tanh(h), r)`` and the fused form ``dropout(key, h, r,
activation="tanh")``, interleaved medians in one process; for S1 and S2 also a
cost probe (:func:`scale_probe`, ``h / (1 - r)`` where the unfused dropout
stands) and the unfused form's ratio to it, i.e. the dropout's own cost.

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
    hash_fusions,
    hash_multiplies,
    interleaved_medians,
    interleaved_timings,
    load_note,
    mlp_loss_fn,
    mlp_params,
    mlp_step,
    table,
    versions,
)

DEPTH, WIDTH, BATCH = 8, 1024, 4096
#: S1 (issue 17) and S2 (a smaller case): (label, depth, width, batch).
STEP_CASES = [
    ("S1 8 x 1024, batch 4096", 8, 1024, 4096),
    ("S2 8 x 512, batch 1024", 8, 512, 1024),
]


#: The step forms: no dropout, unfused ``dropout(key, tanh(h))``, fused
#: ``dropout(key, h, activation="tanh")``.
FORMS = {
    "none": None,
    "unfused": MLP_DROPOUTS["jaxreg.dropout"],
    "fused": MLP_DROPOUTS[FUSED_TANH],
}


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


def step_rows(repeats: int, quick: bool) -> list[list[str]]:
    """S1/S2: the MLP step with the sum-of-squares loss; S3: transformer blocks.

    Each case gives two rows, from the same interleaved runs: wall time and
    process CPU time (the steadier figure on a shared machine).
    """
    forms = FORMS | {"scale": scale_probe}
    rows = []
    for label, depth, width, batch in STEP_CASES[1:] if quick else STEP_CASES:
        args = _inputs(depth, width, batch, jnp.float32)
        fns = {
            name: functools.partial(mlp_step(fn, reduce=jnp.sum), *args)
            for name, fn in forms.items()
        }
        rows += _ratio_rows(label, *interleaved_timings(fns, repeats=repeats, warmup=1))
    timings = interleaved_timings(transformer_steps(), repeats=repeats, warmup=1)
    rows += _ratio_rows(f"S3 {TRANSFORMER_LABEL}", *timings)
    return rows


def scale_probe(key, h, rate):
    """Cost probe, not a dropout: ``h / (1 - rate)`` in the unfused position.

    Any elementwise op between the ``tanh`` and the next matmul costs what this
    costs (an extra activation-sized array written, kept and read); the unfused
    dropout's own cost is its ratio to this probe.
    """
    del key
    return h * (1.0 / (1.0 - rate))


STEP_COLUMNS = ["unfused", "fused", "scale probe", "unfused / probe"]


def _ratio_rows(label: str, wall: dict, cpu: dict) -> list[list[str]]:
    rows = []
    for clock, med in (("wall", wall), ("CPU", cpu)):
        base = med["none"]
        row = [label, clock, f"{base * 1e3:.0f} ms"]
        row += [f"{med[name] / base:.3f}x" for name in ("unfused", "fused")]
        if "scale" in med:
            row += [f"{med['scale'] / base:.3f}x"]
            row += [f"{med['unfused'] / med['scale']:.3f}x"]
        else:
            row += ["n/m", "n/m"]
        rows.append(row)
    return rows


# S3: pre-LayerNorm transformer blocks (batch, sequence, model width, heads, MLP
# width, blocks), dropout on the attention probabilities, on the attention
# block's output and after the MLP's hidden activation (tanh, so that the fused
# form applies) -- the three places a transformer drops.
T_BATCH, T_SEQ, T_MODEL, T_HEADS, T_MLP, T_BLOCKS = 8, 256, 256, 4, 1024, 2
TRANSFORMER_LABEL = (
    f"{T_BLOCKS} blocks, batch {T_BATCH} x seq {T_SEQ} x {T_MODEL}, "
    f"{T_HEADS} heads, MLP {T_MLP}"
)


def _layer_norm(h):
    mu = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mu), axis=-1, keepdims=True)
    return (h - mu) * jax.lax.rsqrt(var + 1e-6)


def transformer_loss(form: str | None):
    """Sum of squares of a stack of transformer blocks; ``form`` is None (no
    dropout), ``"unfused"`` or ``"fused"`` (the MLP's ``tanh`` fused)."""
    import jaxreg

    def drop(key, h):
        return h if form is None else jaxreg.dropout(key, h, 0.1)

    def block(p, h, key):
        k = jax.random.split(key, 3)
        a = _layer_norm(h)
        q, kk, v = (jnp.einsum("bsd,dhk->bhsk", a, p[n]).astype(a.dtype) for n in "qkv")
        s = jnp.einsum("bhsk,bhtk->bhst", q, kk) * (q.shape[-1] ** -0.5)
        probs = drop(k[0], jax.nn.softmax(s, axis=-1))
        att = jnp.einsum("bhst,bhtk->bhsk", probs, v)
        h = h + drop(k[1], jnp.einsum("bhsk,hkd->bsd", att, p["o"]))
        pre = _layer_norm(h) @ p["w1"]
        if form == "fused":
            hid = jaxreg.dropout(k[2], pre, 0.1, activation="tanh")
        else:
            hid = drop(k[2], jnp.tanh(pre))
        return h + hid @ p["w2"]

    def loss(params, x, key):
        keys = jax.random.split(key, len(params))
        h = x
        for p, k in zip(params, keys, strict=True):
            h = block(p, h, k)
        return jnp.sum(jnp.square(h))

    return loss


def transformer_steps() -> dict:
    """The S3 thunks (no dropout, unfused, fused) on shared inputs."""
    hk = T_MODEL // T_HEADS
    keys = iter(jax.random.split(jax.random.key(0), 7 * T_BLOCKS + 1))

    def init(shape, fan_in):
        return jax.random.normal(next(keys), shape) * fan_in**-0.5

    params = [
        {
            **{n: init((T_MODEL, T_HEADS, hk), T_MODEL) for n in "qkv"},
            "o": init((T_HEADS, hk, T_MODEL), T_MODEL),
            "w1": init((T_MODEL, T_MLP), T_MODEL),
            "w2": init((T_MLP, T_MODEL), T_MLP),
        }
        for _ in range(T_BLOCKS)
    ]
    x = jax.random.normal(next(keys), (T_BATCH, T_SEQ, T_MODEL))
    key = jax.random.key(2)
    return {
        name: functools.partial(
            jax.jit(jax.grad(transformer_loss(form))), params, x, key
        )
        for name, form in (("none", None), ("unfused", "unfused"), ("fused", "fused"))
    }


def hlo_rows(depth=DEPTH, width=WIDTH, batch=BATCH) -> list[list[str]]:
    """Where the mask hash runs in the compiled S1 step, per form.

    Counts the fusions that evaluate the hash (:func:`_harness.hash_fusions`),
    split into forward and backward, the hash evaluations per element, the float
    work fused with them, the fusion kinds, the loop fusions on activation-sized
    arrays and the compiled temporary memory.
    """
    per_hash = hash_multiplies()
    args = _inputs(depth, width, batch, jnp.float32)
    forms = FORMS
    rows = []
    for name, fn in forms.items():
        compiled = mlp_step(fn, reduce=jnp.sum).lower(*args).compile()
        hlo = compiled.as_text()
        found = hash_fusions(hlo, per_hash)
        fwd = [f for f in found if not f["backward"]]
        bwd = [f for f in found if f["backward"]]
        act = f"{batch},{width}"
        loops = sum(
            1
            for line in hlo.splitlines()
            if f"[{act}]" in line and "kind=kLoop" in line
        )
        kinds = sorted({f["kind"] for f in found}) or ["-"]
        fused_with = sorted({op for f in found for op in f["ops"]}) or ["-"]
        rows.append(
            [
                name,
                str(len(fwd)),
                str(len(bwd)),
                f"{sum(f['hashes'] for f in found) / depth:.2f}",
                ", ".join(kinds),
                ", ".join(fused_with),
                str(loops),
                f"{compiled.memory_analysis().temp_size_in_bytes / 2**20:.0f} MiB",
            ]
        )
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
    parser.add_argument("--only", choices=["memory", "time", "step", "compile", "hlo"])
    parser.add_argument(
        "--quick", action="store_true", help="step: skip S1 (the large case)"
    )
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
    if args.only in (None, "step"):
        print(
            "Step time (fwd+bwd, sum-of-squares loss, no checkpoint), with dropout "
            "/ without, jaxreg unfused `dropout(key, tanh(h), 0.1)` and fused "
            '`dropout(key, h, 0.1, activation="tanh")` (target <= 1.05x); the '
            "scale probe replaces the unfused dropout by `h / (1 - rate)` (no "
            "randomness: what any op after the activation costs; n/m = not "
            "measured)\n"
        )
        print(
            table(
                ["case", "clock", "without dropout"] + STEP_COLUMNS,
                step_rows(args.repeats, args.quick),
            )
        )
        print(f"\n<!-- {load_note()} -->\n")
    if args.only in (None, "hlo"):
        print(
            f"Compiled S1 step ({DEPTH} x {WIDTH}, batch {BATCH}): fusions that "
            "evaluate the mask hash (forward / backward), hash evaluations per "
            "element per layer, fusion kinds, float ops fused with the hash, "
            f"kLoop fusions on [{BATCH},{WIDTH}] arrays, temp memory\n"
        )
        header = ["form", "hash fusions fwd", "bwd", "hashes / layer", "kinds"]
        header += ["fused with", "activation-sized kLoop fusions", "temp"]
        print(table(header, hlo_rows()))
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
