"""Statistical quality and cost of jaxreg's mask generator (issue 17).

Usage::

    python benchmarks/generator_quality.py                   # own tests + dieharder
    python benchmarks/generator_quality.py --hash previous   # the generator before
    python benchmarks/generator_quality.py --practrand /path/to/RNG_test --tlmax 32GB
    python benchmarks/generator_quality.py --raw related | RNG_test stdin32
    python benchmarks/generator_quality.py --cost            # time vs the previous

Streams (each a sequence of 32-bit words; the generator is the library's own
``jaxreg._sampler._hash`` on the counters the library uses):

* ``mask``: the words of one mask in row-major order (a ``(rows, 2**32)`` mask:
  the first ``2**32`` words are those of every mask of at most ``2**32``
  elements, later rows have ``hi > 0``);
* ``split``: word ``j`` of each of 1024 keys from ``jax.random.split``, in turn;
* ``related``: word ``j`` of the seed ``s`` and of the 64 seeds ``s ^ 2**b``
  (every bit ``b`` of both seed words), in turn;
* ``bits50``: the keep decisions at rate 0.5, packed 32 a word;
* ``bits10``: the keep decisions at rate 0.1 through Elias' extractor on blocks
  of 16 (``_randomness.elias_table``: fair bits exactly when the decisions are
  independent Bernoulli draws; 0.29 bits per decision).

Each stream goes to the project's own tests (``tests/_randomness.py``, first
``--words`` words; the related-seed pairs also one by one), to Debian's
``dieharder -g 200`` (raw stdin) for the tests ``--dieharder-tests``, and, with
``--practrand``, to PractRand's ``RNG_test stdin32`` up to ``--tlmax``. The table
gives the number of failed own tests with the smallest p-value, dieharder's
PASSED/WEAK/FAILED counts, and the length PractRand reached with its verdict.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _randomness as R  # noqa: E402

import jaxreg  # noqa: E402
from jaxreg._sampler import _hash, _seed, _threshold  # noqa: E402

STREAMS = ("mask", "split", "related", "bits50", "bits10")
DIEHARDER_TESTS = (0, 3, 4, 15, 100, 206)
CHUNK = 2**22


def _word(which: str):
    """``word(seed, hi, lo)`` of the chosen generator (uint32 arrays)."""
    if which == "previous":
        # The previous generator had no 64-bit counter (it fell back to threefry).
        return lambda seed, hi, lo: R.previous_hash(seed, lo)
    # hi == 0 takes the library's path for masks of at most 2**32 elements.
    return lambda seed, hi, lo: _hash(seed, lo, hi)


def _start(j: int):
    """The counter ``j`` as ``(hi, lo)``, ``hi`` None where it is 0 (the
    library's path for masks of at most ``2**32`` elements)."""
    hi, lo = divmod(j, 2**32)
    return (None if hi == 0 else np.uint32(hi)), np.uint32(lo)


def _span(word, n: int):
    """``words(seed, hi, lo)``: the words of the ``n`` counters from ``(hi, lo)``
    on (a span never crosses a multiple of ``2**32``), built where it is traced."""
    return lambda seed, hi, lo: word(seed, hi, lo + lax.iota(jnp.uint32, n))


def chunks(stream: str, which: str, seed: int = 0):
    """Endless iterator of uint32 numpy chunks of ``stream``."""
    word = _word(which)
    base = _seed(jax.random.key(seed))
    if stream == "mask":
        one = jax.jit(_span(word, CHUNK))
        for j in range(0, 2**64, CHUNK):
            yield np.asarray(one(base, *_start(j)))
    elif stream in ("split", "related"):
        if stream == "split":
            keys = jax.random.split(jax.random.key(seed + 1), 1024)
            seeds = jax.vmap(_seed)(keys)
        else:  # s, then s ^ 2**b for every bit b of both seed words
            flips = np.zeros((65, 2), np.uint32)
            for b in range(64):
                flips[b + 1, b // 32] = np.uint32(1 << (b % 32))
            seeds = base[None, :] ^ jnp.asarray(flips)
        n = 1 << (CHUNK // seeds.shape[0]).bit_length() - 1  # a power of two
        many = jax.jit(jax.vmap(_span(word, n), in_axes=(0, None, None)))
        for j in range(0, 2**64, n):
            yield np.asarray(many(seeds, *_start(j)).T.ravel())
    else:  # keep decisions of 8 * CHUNK counters a chunk
        rate = 0.5 if stream == "bits50" else 0.1
        t = np.uint32(_threshold(rate)[0])
        keep = _span(word, 8 * CHUNK)
        if rate == 0.5:  # packed 32 a word
            decide = jax.jit(lambda seed, hi, lo: keep(seed, hi, lo) >= t)
            for j in range(0, 2**64, 8 * CHUNK):
                yield R.pack_bits(np.asarray(decide(base, *_start(j))))
        else:  # through Elias' extractor on blocks of 16
            table = tuple(map(jnp.asarray, R.elias_table(16)))
            extract = jax.jit(
                lambda seed, hi, lo: R.elias_bits(keep(seed, hi, lo) >= t, *table, jnp)
            )
            for j in range(0, 2**64, 8 * CHUNK):
                bits, used = map(np.asarray, extract(base, *_start(j)))
                yield R.pack_bits(bits[used])


def take(stream: str, which: str, n: int) -> np.ndarray:
    out, have = [], 0
    for c in chunks(stream, which):
        out.append(c)
        have += c.size
        if have >= n:
            break
    return np.concatenate(out)[:n]


def own_tests(stream: str, which: str, n: int) -> tuple[int, int, float]:
    """(failed, run, smallest p) of the own battery on ``n`` words of ``stream``;
    for ``related`` also on each seed pair ``(s, s ^ 2**b)`` interleaved."""
    results = R.battery(take(stream, which, n))
    if stream == "related":
        pairs = take(stream, which, 65 * 2**16).reshape(-1, 65)
        for b in range(64):
            pair = R.interleave(pairs[:, 0], pairs[:, b + 1])
            results += [R.matrix_rank(pair, 128), R.adjacent_xor(pair)]
    failed = sum(not r.passed for r in results)
    return failed, len(results), min(r.p for r in results)


def dieharder(stream: str, which: str, tests) -> dict[str, int]:
    """PASSED/WEAK/FAILED counts of ``dieharder -g 200 -d t`` for each test."""
    counts = {"PASSED": 0, "WEAK": 0, "FAILED": 0}
    for t in tests:
        for verdict in R.dieharder(chunks(stream, which), t):
            counts[verdict] += 1
    return counts


def practrand(stream: str, which: str, binary: str, tlmax: str, limit_s: float) -> str:
    """Longest length PractRand's ``RNG_test stdin32`` reached, and its verdict."""
    command = [binary, "stdin32", "-tlmax", tlmax]
    out = R.pipe_to(command, chunks(stream, which), limit_s)
    lengths = re.findall(r"length= ([^,]+),", out)
    failed = re.search(r"^length= ([^,]+),(?:(?!^length=).)*FAIL", out, re.M | re.S)
    reached = lengths[-1] if lengths else "nothing"
    if failed:
        return f"FAIL at {failed.group(1)}"
    return f"pass to {reached}"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"CPU: {model} ({os.cpu_count()} cores); load average {load}; jax {jax.__version__}"


def op_counts(h) -> dict[str, int]:
    """Per-element uint32 operations of the word ``h`` in XLA's optimized HLO."""
    seed = _seed(jax.random.key(0))
    f = jax.jit(lambda s: h(s, jnp.arange(4096, dtype=jnp.uint32)))
    ops = re.findall(
        r"= u32\[4096\]\{0\} ([\w-]+)\(", f.lower(seed).compile().as_text()
    )
    kinds = ("multiply", "shift-right-logical", "xor")
    return {k: ops.count(k) for k in kinds}


def cost(repeats: int) -> None:
    """Per-element operations, and interleaved medians of the jitted mask and
    dropout of 2**24 elements."""
    for name, h in (("previous", R.previous_hash), ("current", _hash)):
        print(f"{name}: per-element uint32 operations {op_counts(h)}")
    x = jax.random.normal(jax.random.key(0), (4096, 4096))
    key = jax.random.key(1)
    seed = _seed(key)
    t = jnp.uint32(_threshold(0.1)[0])
    scale = jnp.float32(1 / jaxreg.keep_probability(0.1))

    def index():  # the row-major linear index, built inside the jitted function
        return lax.iota(jnp.uint32, x.size).reshape(x.shape)

    def mask(h):
        return jax.jit(lambda s: h(s, index()) >= t)

    def drop(h):
        return jax.jit(lambda s, x: jnp.where(h(s, index()) >= t, x * scale, 0))

    fns = {
        "x * 2": (jax.jit(lambda x: x * 2), (x,)),
        "mask, previous": (mask(R.previous_hash), (seed,)),
        "mask, current": (mask(_hash), (seed,)),
        "dropout, previous": (drop(R.previous_hash), (seed, x)),
        "dropout, current": (drop(_hash), (seed, x)),
        "jaxreg.keep_mask": (
            jax.jit(lambda k: jaxreg.keep_mask(k, x.shape, 0.1)),
            (key,),
        ),
        "jaxreg.dropout": (jax.jit(lambda k, x: jaxreg.dropout(k, x, 0.1)), (key, x)),
    }
    for f, args in fns.values():
        jax.block_until_ready(f(*args))
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (f, args) in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(f(*args))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    print(
        f"| function (2**24 elements, rate 0.1) | wall ms | CPU ms | ({repeats} runs)"
    )
    print("|---|---|---|")
    for name in fns:
        w, c = (statistics.median(t[name]) * 1e3 for t in (wall, cpu))
        print(f"| {name} | {w:.2f} | {c:.2f} |")
    print()
    for label, t in (("wall", wall), ("CPU", cpu)):
        med = {name: statistics.median(v) for name, v in t.items()}
        ratios = [
            f"{kind} {med[f'{kind}, current'] / med[f'{kind}, previous']:.2f}"
            for kind in ("mask", "dropout")
        ]
        floor = med["dropout, current"] / med["x * 2"]
        print(
            f"{label}: current / previous: {', '.join(ratios)}; dropout / x*2 {floor:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hash", choices=("current", "previous"), default="current")
    parser.add_argument("--streams", nargs="+", choices=STREAMS, default=list(STREAMS))
    parser.add_argument("--words", type=int, default=2**22, help="own tests' words")
    parser.add_argument(
        "--dieharder-tests", type=int, nargs="*", default=DIEHARDER_TESTS
    )
    parser.add_argument("--practrand", help="path of PractRand's RNG_test")
    parser.add_argument("--tlmax", default="1GB", help="PractRand's -tlmax")
    parser.add_argument("--practrand-limit-s", type=float, default=3600)
    parser.add_argument("--raw", choices=STREAMS, help="write the stream to stdout")
    parser.add_argument("--cost", action="store_true", help="time against previous")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    if args.raw:
        try:
            for c in chunks(args.raw, args.hash):
                sys.stdout.buffer.write(c.tobytes())
        except BrokenPipeError:
            pass
        return
    print(machine())
    if args.cost:
        cost(args.repeats)
        return
    have_dieharder = shutil.which("dieharder") is not None and args.dieharder_tests
    tests = " ".join(map(str, args.dieharder_tests))
    print(
        f"\ngenerator: {args.hash}; own tests on {args.words} words; dieharder -d {tests}"
    )
    print("\n| stream | own tests failed (smallest p) | dieharder P/W/F | PractRand |")
    print("|---|---|---|---|")
    for stream in args.streams:
        failed, run, p = own_tests(stream, args.hash, args.words)
        cells = [stream, f"{failed} of {run} ({p:.1e})"]
        if have_dieharder:
            d = dieharder(stream, args.hash, args.dieharder_tests)
            cells.append(f"{d['PASSED']}/{d['WEAK']}/{d['FAILED']}")
        else:
            cells.append("not run" if shutil.which("dieharder") else "not installed")
        if args.practrand:
            cells.append(
                practrand(
                    stream,
                    args.hash,
                    args.practrand,
                    args.tlmax,
                    args.practrand_limit_s,
                )
            )
        else:
            cells.append("not run")
        print("| " + " | ".join(cells) + " |", flush=True)
    print("\n" + machine())


if __name__ == "__main__":
    main()
