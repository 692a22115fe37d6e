"""Guide 3: the variance of hidden activations with and without dropout.

Two MLPs with three hidden layers are trained on MNIST-1D, one without dropout
and one with inverted dropout (rate 0.5 after every hidden layer). After every
epoch, on a fixed batch of 1000 training sequences, we record for each hidden
layer ``l``:

* the variance of the activations the next layer sees, ``h_l`` (after ReLU and
  after dropout), in train mode (one fixed dropout mask key) and in eval mode
  (``deterministic=True``);
* the variance of the next layer's pre-activations ``z_{l+1} = h_l W + b``.

"Variance" is the variance of each unit over the 1000 examples (in train mode
this includes the mask noise), averaged over the units. For inverted dropout
with keep probability ``p`` and a unit with eval-mode activation ``h``,
``Var[h m / p] = Var[h] + (1 - p) / p * E[h^2]``: train mode can only raise
the variance. The script prints that prediction next to the measurement.

Run ``python -m examples.guide_variance`` (``--quick`` for a smoke run); the
figure goes to ``--out`` (default ``docs/guide/figures``).
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, models, reporting, training

RATE = 0.5


def forward(params, x, key, rate, *, deterministic=False, return_hidden=False):
    return models.mlp_apply(
        params,
        x,
        key=key,
        hidden=lambda k, h, i: jaxreg.dropout(k, h, rate, deterministic=deterministic),
        return_hidden=return_hidden,
    )


def layer_stats(params, x, key, rate):
    """Per hidden layer: (var h train, var h eval, var z train, var z eval, E h^2)."""
    out = []
    for det in (False, True):
        _, hs = forward(params, x, key, rate, deterministic=det, return_hidden=True)
        vh = jnp.stack([h.var(0).mean() for h in hs])
        vz = jnp.stack(
            [
                (h @ params[i + 1]["w"] + params[i + 1]["b"]).var(0).mean()
                for i, h in enumerate(hs)
            ]
        )
        m2 = jnp.stack([(h**2).mean() for h in hs])
        out.append((vh, vz, m2))
    (vh_t, vz_t, _), (vh_e, vz_e, m2_e) = out
    # Per-unit prediction Var_e + (1-p)/p E_e[h^2], averaged over units.
    _, hs_e = forward(params, x, None, rate, deterministic=True, return_hidden=True)
    p = jaxreg.keep_probability(rate) if rate else 1.0
    pred = jnp.stack([(h.var(0) + (1 - p) / p * (h**2).mean(0)).mean() for h in hs_e])
    return {
        "vh_train": vh_t,
        "vh_eval": vh_e,
        "vz_train": vz_t,
        "vz_eval": vz_e,
        "pred": pred,
    }


def main(argv=None):
    ap = cli.parser(__doc__, epochs=50)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 2, 2
    out = reporting.output_dir(args.out)
    t0 = time.perf_counter()
    data = datasets.load_mnist1d(args.cache)
    sizes = (40, 256, 256, 256, 10)
    xfix = jnp.asarray(data.x_train[:1000])
    print(f"MNIST-1D; MLP {sizes}; seeds 0..{args.seeds - 1}; {args.epochs} epochs")

    runs = {}
    for rate in (0.0, RATE):
        name = f"dropout {rate}" if rate else "no dropout"
        runs[name] = training.train(
            name,
            data,
            sizes=sizes,
            optimizer=optax.adam(3e-3),
            train_logits=lambda p, x, k, r=rate: forward(p, x, k, r),
            seeds=args.seeds,
            epochs=args.epochs,
            record=lambda p, k, r=rate: layer_stats(p, xfix, k, r),
        )
        f = runs[name].final
        print(
            f"  {name}: test acc {reporting.mean_spread(f['test_acc'])}%, "
            f"train acc {reporting.mean_spread(f['train_acc'])}%"
        )

    # Statistics at initialisation (epoch 0) are not recorded by train(); the
    # curves start after epoch 1.
    epochs = np.arange(1, args.epochs + 1)
    nl = len(sizes) - 2
    plt = reporting.pyplot()
    fig, axes = plt.subplots(2, nl, figsize=(4.2 * nl, 6.4), sharex=True)
    for layer in range(nl):
        for row, (key_t, key_e) in enumerate(
            (("vh_train", "vh_eval"), ("vz_train", "vz_eval"))
        ):
            ax = axes[row, layer]
            r0 = runs["no dropout"].extra["record"]
            r1 = runs[f"dropout {RATE}"].extra["record"]
            series = [
                (r0[key_e][:, :, layer], "no dropout", "k", "-"),
                (r1[key_t][:, :, layer], f"dropout {RATE}, train mode", "C3", "-"),
                (r1[key_e][:, :, layer], f"dropout {RATE}, eval mode", "C0", "--"),
            ]
            for arr, label, color, ls in series:
                ax.plot(epochs, arr.mean(0), color=color, ls=ls, label=label)
                ax.fill_between(epochs, arr.min(0), arr.max(0), color=color, alpha=0.15)
            if row == 0:
                pred = r1["pred"][:, :, layer].mean(0)
                ax.plot(
                    epochs,
                    pred,
                    ":",
                    color="C1",
                    label="eval mode + own mask (formula)",
                )
                ax.set_title(f"hidden layer {layer + 1}: Var[h{layer + 1}]")
            else:
                ax.set_title(f"next layer's pre-activation Var[z{layer + 2}]")
                ax.set_xlabel("epoch")
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    title = (
        f"MNIST-1D MLP {sizes}: activation variance per layer and epoch "
        f"(mean over {args.seeds} seeds, band: min-max)"
    )
    path = reporting.save_figure(fig, out, "dropout_variance", title)

    print("\nlast epoch, mean over seeds (variance of h / of the next z):")
    print(
        "layer | no dropout | dropout train | dropout eval | train/eval | "
        "eval + own mask (formula)"
    )
    rows = []
    r0 = runs["no dropout"].extra["record"]
    r1 = runs[f"dropout {RATE}"].extra["record"]
    for layer in range(nl):

        def last(r, k, layer=layer):
            return float(r[k][:, -1, layer].mean())

        row = (
            layer + 1,
            last(r0, "vh_eval"),
            last(r1, "vh_train"),
            last(r1, "vh_eval"),
            last(r1, "vh_train") / last(r1, "vh_eval"),
            last(r1, "pred"),
            last(r0, "vz_eval"),
            last(r1, "vz_train"),
            last(r1, "vz_eval"),
        )
        rows.append(row)
        print(
            f"h{layer + 1}    | {row[1]:10.3f} | {row[2]:13.3f} | {row[3]:12.3f} | "
            f"{row[4]:10.2f} | {row[5]:9.3f}"
        )
        print(
            f"z{layer + 2}    | {row[6]:10.3f} | {row[7]:13.3f} | {row[8]:12.3f} | "
            f"{row[7] / row[8]:10.2f} |"
        )
    print(f"\nfigure: {path}   ({time.perf_counter() - t0:.0f}s)")
    return runs, rows


if __name__ == "__main__":
    main()
