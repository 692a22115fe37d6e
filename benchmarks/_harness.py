"""Shared pieces of the dropout benchmarks: the peers, the MLP and the timers.

Every timing is the median of ``repeats`` runs after ``warmup`` runs, and the runs
of all compared functions are interleaved (one run of each in turn), so a change
of machine load hits all of them alike; ratios are always taken within one process.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import jaxreg

RATE = 0.1


def _flax_linen(key, x, rate):
    import flax.linen as nn

    return nn.Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": key})


def _flax_nnx(key, x, rate):
    from flax import nnx

    return nnx.Dropout(rate)(x, deterministic=False, rngs=key)


def _equinox(key, x, rate):
    import equinox as eqx

    return eqx.nn.Dropout(rate)(x, key=key, inference=False)


def _haiku(key, x, rate):
    import haiku as hk

    return hk.dropout(key, rate, x)


def _jaxreg(key, x, rate):
    return jaxreg.dropout(key, x, rate)


def _jaxreg_fused_tanh(key, pre, rate):
    return jaxreg.dropout(key, pre, rate, activation="tanh")


#: name -> dropout(key, x, rate); jaxreg first, then the peers.
DROPOUTS: dict[str, Callable] = {
    "jaxreg.dropout": _jaxreg,
    "flax.linen.Dropout": _flax_linen,
    "flax.nnx.Dropout": _flax_nnx,
    "equinox.nn.Dropout": _equinox,
    "haiku.dropout": _haiku,
}

#: The MLP benchmarks also run the fused form, which takes the pre-activation:
#: ``dropout(key, pre, rate, activation="tanh") == dropout(key, tanh(pre), rate)``.
FUSED_TANH = 'jaxreg.dropout(activation="tanh")'
MLP_DROPOUTS: dict[str, Callable] = {
    "jaxreg.dropout": _jaxreg,
    FUSED_TANH: _jaxreg_fused_tanh,
    **{k: v for k, v in DROPOUTS.items() if k != "jaxreg.dropout"},
}


def block(tree):
    return jax.block_until_ready(tree)


def interleaved_timings(
    fns: dict[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 2
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall time and median process CPU time (seconds) of each thunk.

    Runs are interleaved across thunks. The CPU time (``time.process_time``, all
    threads of this process) is the steadier figure on a shared machine: it does
    not count the time the process waits for a core, which is what the wall time
    of a loaded machine is mostly made of.
    """
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            block(fn())
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = statistics.median
    return {n: med(t) for n, t in wall.items()}, {n: med(t) for n, t in cpu.items()}


def interleaved_medians(
    fns: dict[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (seconds) of each thunk, runs interleaved across thunks."""
    return interleaved_timings(fns, repeats=repeats, warmup=warmup)[0]


def mlp_params(key, depth: int, width: int, dtype=jnp.float32):
    keys = jax.random.split(key, depth)
    scale = width**-0.5
    return [
        (
            (jax.random.normal(k, (width, width)) * scale).astype(dtype),
            jnp.zeros((width,), dtype),
        )
        for k in keys
    ]


def mlp_loss_fn(
    dropout_fn: Callable | None,
    *,
    rate: float = RATE,
    remat: bool,
    reduce: Callable = jnp.mean,
):
    """Loss ``reduce(h**2)`` of a tanh MLP with ``dropout_fn`` after every layer.

    ``dropout_fn(key, h, rate)``; None builds the same net without dropout, and
    the fused jaxreg form (:data:`FUSED_TANH`) gets the pre-activation and applies
    the ``tanh`` itself. With ``remat`` every layer is wrapped in ``jax.checkpoint``.
    ``reduce`` is ``jnp.mean`` or ``jnp.sum`` (the sum of squares of issue 17).
    """

    def layer(w, b, h, key):
        pre = h @ w + b
        if dropout_fn is _jaxreg_fused_tanh:
            return dropout_fn(key, pre, rate)
        h = jnp.tanh(pre)
        if dropout_fn is not None:
            h = dropout_fn(key, h, rate)
        return h

    if remat:
        layer = jax.checkpoint(layer)

    def loss(params, x, key):
        keys = jax.random.split(key, len(params))
        h = x
        for (w, b), k in zip(params, keys, strict=True):
            h = layer(w, b, h, k)
        return reduce(jnp.square(h.astype(jnp.float32)))

    return loss


def mlp_step(
    dropout_fn: Callable | None, *, remat: bool = False, reduce: Callable = jnp.mean
):
    """Jitted fwd+bwd step: gradients of the MLP loss w.r.t. the parameters."""
    return jax.jit(jax.grad(mlp_loss_fn(dropout_fn, remat=remat, reduce=reduce)))


def cpu_model() -> str:
    """The CPU model from ``/proc/cpuinfo`` ("model name"), or the platform's."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_note() -> str:
    """The CPU model and ``os.getloadavg()``, printed with every set of figures."""
    import os

    one, five, fifteen = os.getloadavg()
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, load average {one:.2f} (1 min) / "
        f"{five:.2f} (5 min) / {fifteen:.2f} (15 min)"
    )


def versions() -> str:
    import importlib.metadata as md

    names = ["jax", "jaxlib", "flax", "equinox", "dm-haiku"]
    parts = []
    for n in names:
        try:
            parts.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            parts.append(f"{n} (missing)")
    return ", ".join(parts)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- HLO profile: where the mask generator runs in a compiled step ---------------

_COMP_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(")
_FUSION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]\S* fusion\(.*kind=(\w+), "
    r"calls=%([\w.\-]+)"
)


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        header = _COMP_HEADER.match(line)
        if header and line.rstrip().endswith("{"):
            current = header.group(1)
            comps[current] = []
        elif line.strip() == "}":
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps


def _int_multiplies(lines: list[str], dims: str) -> int:
    """Integer multiplies on arrays of shape ``dims`` (the hash's mixing steps)."""
    count = 0
    for line in lines:
        m = _INSTR.match(line)
        if m and m.group(2) in ("u32", "s32", "u64") and m.group(3) == dims:
            count += m.group(4) == "multiply"
    return count


def hash_multiplies() -> int:
    """Integer multiplies per element of one evaluation of jaxreg's mask hash,
    read off the compiled ``keep_mask`` (so the count follows the generator)."""
    hlo = jax.jit(lambda k: jaxreg.keep_mask(k, (64, 128), 0.1)).lower(
        jax.random.key(0)
    )
    comps = _computations(hlo.compile().as_text())
    return max(_int_multiplies(lines, "64,128") for lines in comps.values())


def hash_fusions(hlo: str, per_hash: int) -> list[dict]:
    """Every fusion of a compiled module that evaluates the mask hash.

    Returns one dict per fusion: its ``name``, output ``shape``, ``kind``
    (kLoop, kInput, ...), ``hashes`` (mask-hash evaluations per element, from
    the integer multiplies on arrays of its output shape / ``per_hash``),
    ``backward`` (its op_name lies under an autodiff transpose) and ``ops`` (the
    float work fused with it: tanh, exp, select, multiply, reduce).
    """
    comps = _computations(hlo)
    out = []
    for lines in comps.values():
        for line in lines:
            m = _FUSION.match(line)
            if not m:
                continue
            name, dims, kind, called = m.groups()
            body = comps.get(called, [])
            mults = _int_multiplies(body, dims)
            if mults < per_hash:
                continue
            ops = set()
            for b in body:
                i = _INSTR.match(b)
                if i and i.group(2) in ("f32", "bf16", "f16", "f64"):
                    ops.add(i.group(4))
            out.append(
                {
                    "name": name,
                    "shape": dims,
                    "kind": kind,
                    "hashes": mults / per_hash,
                    "backward": "transpose(" in line,
                    "ops": sorted(
                        ops
                        & {
                            "tanh",
                            "exponential",
                            "select",
                            "multiply",
                            "add",
                            "reduce",
                            "logistic",
                        }
                    ),
                }
            )
    return out
