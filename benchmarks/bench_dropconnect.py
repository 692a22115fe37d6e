"""DropConnect dense layer: fwd+bwd step time relative to a plain dense layer.

Usage::

    python benchmarks/bench_dropconnect.py              # batch 32 and 256, 512x512
    python benchmarks/bench_dropconnect.py --repeats 15

For each batch size, four compiled steps compute the loss ``mean(y**2)`` of one
dense layer ``y = x @ w + b`` and its gradients w.r.t. ``(x, w, b)``:

* ``dense``: the plain layer;
* ``shared``: ``jaxreg.dropconnect_dense`` with one weight mask for the batch;
* ``per-example``: ``jaxreg.dropconnect_dense(per_example=True)`` with an
  independent mask per example (default chunking);
* ``no-hash probe``: the same step compiled with the generator's word replaced
  by ``counter ^ seed`` (one XOR, no randomness): what the per-example step
  costs without the generator, i.e. the masked kernels, products and ``dw``
  accumulation alone. Its ratio is what no cheaper generator can go below.

Times are medians of ``--repeats`` runs after warm-up, runs of the four steps
interleaved in one process (see ``_harness.interleaved_timings``); the table gives
each DropConnect step time divided by the plain step time.
"""

from __future__ import annotations

import argparse
from unittest import mock

import jax
import jax.numpy as jnp
from _harness import interleaved_timings, load_note, table, versions

import jaxreg

RATE = 0.5  # the rate used throughout Wan et al. 2013
IN_FEATURES = OUT_FEATURES = 512


def _loss(layer):
    def loss(x, w, b, key):
        return jnp.mean(jnp.square(layer(key, x, w, b)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


LAYERS = {
    "dense": lambda key, x, w, b: x @ w + b,
    "shared": lambda key, x, w, b: jaxreg.dropconnect_dense(key, x, w, RATE, bias=b),
    "per-example": lambda key, x, w, b: jaxreg.dropconnect_dense(
        key, x, w, RATE, bias=b, per_example=True
    ),
}


def _compiled(layer, args):
    step = _loss(layer).lower(*args).compile()  # compiled now: no later retrace
    return lambda: step(*args)


def _no_hash(seed, lo, hi=None):
    return lo ^ seed[0]


def measure(batch: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, IN_FEATURES))
    w = jax.random.normal(kw, (IN_FEATURES, OUT_FEATURES)) * IN_FEATURES**-0.5
    args = (x, w, jnp.zeros((OUT_FEATURES,)), jax.random.key(1))
    fns = {name: _compiled(layer, args) for name, layer in LAYERS.items()}
    with mock.patch.object(jaxreg._sampler, "_hash", _no_hash):
        jax.clear_caches()  # retrace the library's jitted helpers with the probe
        fns["no-hash probe"] = _compiled(LAYERS["per-example"], args)
    jax.clear_caches()
    return interleaved_timings(fns, repeats=repeats, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    args = parser.parse_args()
    if args.repeats < 7:
        parser.error("--repeats must be >= 7")
    print(f"<!-- {versions()}; {load_note()} at start -->\n")
    rows = []
    for batch in args.batch:
        wall, cpu = measure(batch, args.repeats)
        for clock, med in (("wall", wall), ("CPU", cpu)):
            base = med["dense"]
            rows.append(
                [
                    f"{batch} ({clock})",
                    f"{base * 1e3:.3f} ms",
                    f"{med['shared'] * 1e3:.3f} ms",
                    f"{med['shared'] / base:.2f}x",
                    f"{med['per-example'] * 1e3:.2f} ms",
                    f"{med['per-example'] / base:.1f}x",
                    f"{med['no-hash probe'] / base:.1f}x",
                ]
            )
    print(
        f"DropConnect dense {IN_FEATURES}x{OUT_FEATURES}, rate {RATE}, fwd+bwd "
        f"(value_and_grad w.r.t. x, w, b), median of {args.repeats} runs; "
        "ratio = time / plain dense step; wall time and process CPU time "
        "(the steadier one on a shared machine)\n"
    )
    header = ["batch (clock)", "dense", "shared", "shared ratio", "per-example"]
    print(table(header + ["per-example ratio", "no-hash probe ratio"], rows))
    print(f"\n<!-- {load_note()} at end -->")


if __name__ == "__main__":
    main()
