"""Guide 4: dropout and weight decay together, a grid with several seeds.

An MLP on MNIST-1D is trained for every pair (dropout rate, decoupled weight
decay) of a grid, on several seeds; the whole grid x seeds trains in one compiled
program (``training.train(..., hparams=...)``: the rate of ``jaxreg.dropout`` and
the ``weight_decay`` of ``optax.adamw`` are traced per run). Seeds are paired
across cells (same initialisation and data order), so differences between cells
are measured with less noise than the spread of any single cell.

For every cell we report the test accuracy and its interaction with respect to
the additive prediction,

    interaction(r, w) = acc(r, w) - acc(r, 0) - acc(0, w) + acc(0, 0),

computed per seed then averaged: about 0 means the effects add up, negative means
diminishing returns (or, when the pair is below the better single regularizer,
that they cancel), positive means they reinforce each other.

Run ``python -m examples.guide_dropout_weight_decay`` (``--quick`` for a smoke
run); the figure goes to ``--out`` (default ``docs/guide/figures``).
"""

from __future__ import annotations

import time

import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, models, reporting, training

RATES = (0.0, 0.2, 0.4, 0.6)
DECAYS = (0.0, 0.01, 0.1, 1.0)
LR = 3e-3


def forward(params, x, key, hp):
    return models.mlp_apply(
        params, x, key=key, hidden=lambda k, h, i: jaxreg.dropout(k, h, hp["rate"])
    )


def optimizer(hp):
    return optax.adamw(LR, weight_decay=hp["weight_decay"], mask=jaxreg.mask_by_ndim)


def main(argv=None):
    ap = cli.parser(__doc__, epochs=60)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.width = 2, 2, 16
    out = reporting.output_dir(args.out)
    t0 = time.perf_counter()
    data = datasets.load_mnist1d(args.cache)
    sizes = (40, args.width, args.width, 10)
    cells = [(r, w) for r in RATES for w in DECAYS]
    seeds = list(range(args.seeds))
    runs = [(r, w, s) for r, w in cells for s in seeds]
    print(
        f"MNIST-1D; MLP {sizes}; AdamW lr {LR}; {len(RATES)} rates x {len(DECAYS)} "
        f"decays x {len(seeds)} seeds = {len(runs)} runs; {args.epochs} epochs"
    )
    h = training.train(
        "grid",
        data,
        sizes=sizes,
        optimizer=optimizer,
        train_logits=forward,
        seeds=[s for _, _, s in runs],
        hparams={
            "rate": np.array([r for r, _, _ in runs], np.float32),
            "weight_decay": np.array([w for _, w, _ in runs], np.float32),
        },
        epochs=args.epochs,
    )
    acc = h.final["test_acc"].reshape(len(RATES), len(DECAYS), len(seeds)) * 100
    gap = h.final["gap"].reshape(len(RATES), len(DECAYS), len(seeds)) * 100
    inter = acc - acc[:, :1] - acc[:1, :] + acc[:1, :1]  # per seed
    mean, std = acc.mean(-1), acc.std(-1, ddof=1) if len(seeds) > 1 else 0 * acc[..., 0]
    imean = inter.mean(-1)
    ise = inter.std(-1, ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1 else 0 * imean

    print("\ntest accuracy (%), mean ± std over seeds; rows: dropout rate, cols: wd")
    print("rate \\ wd | " + " | ".join(f"{w:>11g}" for w in DECAYS))
    for i, r in enumerate(RATES):
        cells_txt = " | ".join(
            f"{mean[i, j]:5.1f} ± {std[i, j]:3.1f}" for j in range(len(DECAYS))
        )
        print(f"{r:9g} | {cells_txt}")
    print("\ngeneralization gap (train - test, pp), mean over seeds")
    for i, r in enumerate(RATES):
        print(
            f"{r:9g} | "
            + " | ".join(f"{gap[i, j].mean():11.1f}" for j in range(len(DECAYS)))
        )
    print("\ninteraction (pp) = acc(r,w) - acc(r,0) - acc(0,w) + acc(0,0), ± s.e.")
    for i, r in enumerate(RATES[1:], 1):
        print(
            f"{r:9g} | "
            + " | ".join(
                f"{imean[i, j]:+5.1f} ± {ise[i, j]:3.1f}" for j in range(1, len(DECAYS))
            )
        )
    bi, bj = np.unravel_index(np.argmax(mean), mean.shape)
    print(
        f"\nbest cell: rate {RATES[bi]}, wd {DECAYS[bj]}: {mean[bi, bj]:.1f}%; "
        f"best dropout alone: {mean[:, 0].max():.1f}% (rate {RATES[int(mean[:, 0].argmax())]}); "
        f"best weight decay alone: {mean[0].max():.1f}% (wd {DECAYS[int(mean[0].argmax())]}); "
        f"neither: {mean[0, 0]:.1f}%"
    )

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    im = ax.imshow(mean, cmap="viridis", origin="lower")
    for i in range(len(RATES)):
        for j in range(len(DECAYS)):
            ax.text(
                j,
                i,
                f"{mean[i, j]:.1f}\n±{std[i, j]:.1f}",
                ha="center",
                va="center",
                color="w" if mean[i, j] < mean.max() - 0.4 * np.ptp(mean) else "k",
                fontsize=8,
            )
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_title(f"test accuracy, mean ± std over {len(seeds)} seeds")
    ax2 = axes[1]
    lim = max(np.abs(imean[1:, 1:]).max(), 1e-6)
    im2 = ax2.imshow(imean, cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
    for i in range(1, len(RATES)):
        for j in range(1, len(DECAYS)):
            ax2.text(
                j,
                i,
                f"{imean[i, j]:+.1f}\n±{ise[i, j]:.1f}",
                ha="center",
                va="center",
                fontsize=8,
            )
    fig.colorbar(im2, ax=ax2, label="interaction (pp)")
    ax2.set_title("interaction vs additive prediction (± s.e.)")
    for a in axes:
        a.set_xticks(range(len(DECAYS)), [f"{w:g}" for w in DECAYS])
        a.set_yticks(range(len(RATES)), [f"{r:g}" for r in RATES])
        a.set_xlabel("decoupled weight decay (optax.adamw)")
        a.set_ylabel("dropout rate")
    path = reporting.save_figure(
        fig, out, "dropout_weight_decay", f"MNIST-1D, MLP {sizes}, {args.epochs} epochs"
    )
    print(f"\nfigure: {path}   ({time.perf_counter() - t0:.0f}s)")
    return mean, imean


if __name__ == "__main__":
    main()
