"""Spectral-norm constraint on an MLP on MNIST-1D, and stacked = unstacked checks.

Part 1 trains an MLP (40-256-256-10) with Adam on MNIST-1D four ways: no
constraint, and :func:`jaxreg.spectral_norm_constraint` with bounds 8, 4 and 2
on every kernel (last in the chain; biases are 1-D and left alone). It reports test
and train accuracy, the generalization gap and the largest singular value of each
trained kernel (``numpy.linalg.svd``), and writes ``spectral_norm.json``.

Part 2 measures that the layer-axis-aware calls give on a stack of 8 layers
(leading layer axis, as ``nn.scan`` / ``nnx.vmap`` build it) what they give on the
8 layers one by one: ``mask_by_ndim``, ``max_norm_constraint`` and
``spectral_norm_constraint`` with ``stacked_axes=1``::

    python -m examples.spectral_norm             # about 1 min of CPU time
    python -m examples.spectral_norm --quick --out /tmp/sn
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, models, reporting, training

#: The bounds on every kernel's largest singular value that are compared.
BOUNDS = (8.0, 4.0, 2.0)


def largest_singular_values(params) -> list[list[float]]:
    """Per seed, the largest singular value of each kernel."""
    out = []
    for s in range(params[0]["w"].shape[0]):
        out.append(
            [
                float(np.linalg.svd(np.asarray(layer["w"][s], np.float64))[1][0])
                for layer in params
            ]
        )
    return out


def train_configs(data, *, seeds, epochs, sizes, bounds=BOUNDS):
    configs = {"none": optax.adam(1e-3)}
    for bound in bounds:
        configs[f"spectral norm <= {bound:g}"] = optax.chain(
            optax.adam(1e-3),
            jaxreg.spectral_norm_constraint(bound, mask=jaxreg.mask_by_ndim),
        )
    rows, results = [], {}
    for name, tx in configs.items():
        h = training.train(
            name,
            data,
            sizes=sizes,
            optimizer=tx,
            train_logits=lambda p, x, k: models.mlp_apply(p, x),
            seeds=seeds,
            epochs=epochs,
            progress=False,
        )
        sv = np.asarray(largest_singular_values(h.params))
        row = reporting.summarize(h)
        row["largest singular value per layer"] = ", ".join(
            f"{v:.2f}" for v in sv.mean(0)
        )
        rows.append(row)
        results[name] = {**h.to_json("test_acc"), "sigma_max": sv.tolist()}
    return rows, results


def stacked_checks(depth: int = 8, width: int = 64) -> dict[str, float]:
    """Largest absolute difference, stacked call vs per-layer calls."""
    k1, k2 = jax.random.split(jax.random.key(0))
    stack = {
        "w": 3.0 * jax.random.normal(k1, (depth, width, width)) / np.sqrt(width),
        "b": jax.random.normal(k2, (depth, width)),
    }
    layers = [jax.tree.map(lambda a, i=i: a[i], stack) for i in range(depth)]
    grads = jax.tree.map(lambda a: 0.1 * a, stack)
    out = {}
    mask = jaxreg.mask_by_ndim(stack, stacked_axes=1)
    out["mask_by_ndim equal"] = float(mask == jaxreg.mask_by_ndim(layers[0]))

    def compare(make):
        tx = make(1)
        got = tx.update(grads, tx.init(stack), stack)[0]
        diff = 0.0
        for i, layer in enumerate(layers):
            t1 = make(None)
            g1 = jax.tree.map(lambda a, i=i: a[i], grads)
            want = t1.update(g1, t1.init(layer), layer)[0]
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                diff = max(diff, float(jnp.max(jnp.abs(a[i] - b))))
        return diff

    out["max_norm_constraint max |diff|"] = compare(
        lambda s: jaxreg.max_norm_constraint(
            1.0,
            mask=lambda p: jaxreg.mask_by_ndim(p, stacked_axes=s),
            stacked_axes=s,
        )
    )

    # Spectral norm: the pure function with the same start vector u for the
    # stack and for each layer (the transform seeds u per leaf, not per layer).
    u = jax.random.normal(jax.random.key(3), (depth, width))
    w2, _ = jaxreg.max_spectral_norm(stack["w"], 1.0, u, stacked_axes=1)
    diff = 0.0
    for i in range(depth):
        w1, _ = jaxreg.max_spectral_norm(stack["w"][i], 1.0, u[i])
        diff = max(diff, float(jnp.max(jnp.abs(w2[i] - w1))))
    out["max_spectral_norm max |diff|"] = diff
    return out


def main(argv=None):
    ap = cli.parser(__doc__, epochs=None)
    args = ap.parse_args(argv)
    out = reporting.output_dir(args.out)
    data, _ = cli.mnist1d_for(args)
    if args.quick:
        kw = dict(seeds=1, epochs=2, sizes=(40, 32, 10), bounds=BOUNDS[-1:])
    else:
        kw = dict(seeds=args.seeds, epochs=args.epochs or 60, sizes=(40, 256, 256, 10))
    rows, results = train_configs(data, **kw)
    table = reporting.markdown_table(rows)
    print(table)
    checks = stacked_checks(depth=3 if args.quick else 8)
    for name, value in checks.items():
        print(f"{name}: {value:g}")
    summary = {"table": table, "results": results, "stacked": checks}
    (out / "spectral_norm.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
