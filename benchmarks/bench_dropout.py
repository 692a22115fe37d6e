"""P1 / P4a: dropout forward time relative to a jitted ``x * 2.0``, plus a size sweep.

Usage::

    python benchmarks/bench_dropout.py            # P1 (f32) and P4a (bf16), 16M elements
    python benchmarks/bench_dropout.py --sweep    # also 1K .. 64M elements, f32
    python benchmarks/bench_dropout.py --vmap     # also jax.vmap over 8 keys

Prints markdown tables: time of each dropout (rate 0.1, jitted, key passed as an
argument) divided by the time of a jitted ``x * 2.0`` on the same array, measured
interleaved in one process (median of ``--repeats`` runs after warm-up). ``x * 2.0``
reads and writes the array once: 1.0x is the memory-bound floor.

``--vmap`` adds the same measurement for ``jax.vmap`` of each dropout over 8 keys
(one per row of an ``(8, 2M)`` array, 16M elements in all): a batch of keys must
not fall into a slower path than one key on the same number of elements.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from _harness import DROPOUTS, RATE, interleaved_medians, load_note, table, versions


def ratios(
    n: int, dtype, repeats: int, *, vmap_keys: int = 0
) -> tuple[float, dict[str, float]]:
    side = int(round(n**0.5))
    shape = (side, n // side) if side * (n // side) == n else (n,)
    key = jax.random.key(2)
    if vmap_keys:
        shape = (vmap_keys, n // vmap_keys)
        key = jax.random.split(key, vmap_keys)
    x = jax.random.normal(jax.random.key(1), shape).astype(dtype)
    base = jax.jit(lambda x: x * 2.0)
    fns = {"x * 2.0": functools.partial(base, x)}
    for name, fn in DROPOUTS.items():
        one = lambda k, x, fn=fn: fn(k, x, RATE)  # noqa: E731
        f = jax.jit(jax.vmap(one) if vmap_keys else one)
        fns[name] = functools.partial(f, key, x)
    med = interleaved_medians(fns, repeats=repeats)
    b = med["x * 2.0"]
    return b, {name: med[name] / b for name in DROPOUTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sweep", action="store_true", help="1K..64M size sweep")
    parser.add_argument("--vmap", action="store_true", help="vmap over 8 keys")
    args = parser.parse_args()
    print(f"<!-- {versions()}; {load_note()} at start -->\n")

    n = 16 * 1024 * 1024
    rows = []
    cases = [("P1 f32", jnp.float32, 0), ("P4a bf16", jnp.bfloat16, 0)]
    if args.vmap:
        cases.append(("P1 f32, vmap over 8 keys", jnp.float32, 8))
    for label, dtype, vmap_keys in cases:
        base, r = ratios(n, dtype, args.repeats, vmap_keys=vmap_keys)
        rows.append(
            [label, f"{base * 1e3:.1f} ms"] + [f"{r[name]:.2f}x" for name in DROPOUTS]
        )
    print(
        f"Dropout forward, 16M elements, rate {RATE}, time / jitted `x * 2.0` "
        "(target for jaxreg: <= 2.0x)\n"
    )
    print(table(["figure", "`x*2.0`"] + [f"`{n}`" for n in DROPOUTS], rows))

    if args.sweep:
        rows = []
        for n in [2**10, 2**14, 2**18, 2**20, 2**22, 2**24, 2**26]:
            base, r = ratios(n, jnp.float32, args.repeats)
            label = f"{n // 2**20}M" if n >= 2**20 else f"{n // 2**10}K"
            rows.append(
                [label, f"{base * 1e3:.3f} ms"]
                + [f"{r[name]:.2f}x" for name in DROPOUTS]
            )
        print(f"\nSize sweep, f32, rate {RATE}, time / jitted `x * 2.0`\n")
        print(table(["elements", "`x*2.0`"] + [f"`{n}`" for n in DROPOUTS], rows))
    print(f"\n<!-- {load_note()} at end -->")


if __name__ == "__main__":
    main()
