"""The main jaxreg study: every common regularizer on the same MLP and data.

MLPs on MNIST-1D (Greydanus 2020; 4000 training and 1000 test sequences of length
40, generated locally by the ``mnist1d`` package) are trained with no
regularization, coupled L2, decoupled weight decay, an L1 proximal step, dropout
0.2 and 0.5, dropout + max-norm, DropConnect, Gaussian dropout, early stopping and
input noise, and dropout + random shift (``jaxreg.random_shift``), each on several seeds at once (one ``jax.vmap``-ed, jitted program
per configuration). It prints a results table (mean ± std over seeds of test and
train accuracy and of the generalization gap), writes it as ``results.md`` and
the learning curves as PNG to the output folder.

    python -m examples.mnist1d_study            # the full study (a few minutes)
    python -m examples.mnist1d_study --quick    # a smoke run (under a minute)

Reference points: the MNIST-1D paper reports about 68% test accuracy for a plain
MLP (ours: the "none" row, the same 40-100-100-10 Adam setup).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, models, reporting, training

# Every configuration is one point in this space of hyperparameters; the value
# here is "off". All of a group's configurations x seeds train in ONE compiled
# program: jaxreg's rates and strengths accept traced scalars, so each run gets
# its own values (`training.train(..., hparams=...)`).
OFF = {
    "l2": 0.0,  # coupled L2: jaxreg.add_l2 before Adam (adds lambda * w to grads)
    "weight_decay": 0.0,  # decoupled weight decay: optax.adamw
    "l1": 0.0,  # L1 proximal step after Adam: jaxreg.l1_prox
    "max_norm": float("inf"),  # jaxreg.max_norm_constraint on incoming weights
    "dropout": 0.0,  # jaxreg.dropout after every hidden layer
    "dropconnect": 0.0,  # jaxreg.dropconnect_params on the weight matrices
    "gaussian_dropout": 0.0,  # jaxreg.gaussian_dropout after every hidden layer
    "input_noise": 0.0,  # jaxreg.gaussian_noise on the inputs (std)
    "shift": 0.0,  # 1.0: jaxreg.random_shift of the inputs by up to SHIFT steps
}

# Largest random translation (in sequence steps) of the "random shift" rows,
# circular ("wrap") because MNIST-1D itself translates its templates circularly.
# Chosen on the validation split (last 500 training sequences), see
# `docs/guide/00_study.md`; it is a static int, so one value per run of the study.
SHIFT = 3


@dataclass(frozen=True)
class Config:
    """One row of the study: a name, an architecture group and its settings."""

    name: str
    group: str  # "paper" (40-100-100-10), "wide" or "early stopping"
    settings: dict[str, float] = field(default_factory=dict)


def weights_only(params):
    """Mask selecting the weight matrices (not the biases)."""
    return jaxreg.mask_by_ndim(params, min_ndim=2)


def make_optimizer(lr: float):
    """Adam plus every optimizer-side regularizer, strengths from ``hp``."""

    def optimizer(hp) -> optax.GradientTransformation:
        return optax.chain(
            jaxreg.add_l2(hp["l2"], mask=weights_only),
            optax.adamw(lr, weight_decay=hp["weight_decay"], mask=weights_only),
            jaxreg.l1_prox(hp["l1"], lr, mask=weights_only),
            jaxreg.max_norm_constraint(hp["max_norm"], axis=0, mask=weights_only),
        )

    return optimizer


def forward(params, x, key, hp):
    """Train-mode MLP with every activation-side regularizer, rates from ``hp``."""
    k_in, k_dc, k_h = jax.random.split(key, 3)
    params = jaxreg.dropconnect_params(
        k_dc, params, hp["dropconnect"], mask=weights_only
    )
    k_in, k_sh = jax.random.split(k_in)
    shifted = jaxreg.random_shift(k_sh, x, max_shift=SHIFT, mode="wrap")
    x = jnp.where(hp["shift"] > 0, shifted, x)
    x = jaxreg.gaussian_noise(k_in, x, hp["input_noise"])

    def hidden(k, h, i):
        k1, k2 = jax.random.split(k)
        h = jaxreg.dropout(k1, h, hp["dropout"])
        return jaxreg.gaussian_dropout(k2, h, hp["gaussian_dropout"])

    return models.mlp_apply(params, x, key=k_h, hidden=hidden)


def configurations() -> list[Config]:
    """The rows of the study. Strengths and rates were fixed a priori (common
    defaults), except the random-shift row's dropout rate and SHIFT, chosen on
    the validation split; nothing was tuned on the test set."""
    return [
        Config("none", "paper"),
        Config("L2 (add_l2 1e-3, coupled)", "paper", {"l2": 1e-3}),
        Config("weight decay (adamw 1e-1)", "paper", {"weight_decay": 1e-1}),
        Config("L1 prox (l1_prox 1e-2)", "paper", {"l1": 1e-2}),
        Config("input noise (std 0.2)", "paper", {"input_noise": 0.2}),
        Config("early stopping (patience 10)", "early stopping"),
        Config("none (wide)", "wide"),
        Config("dropout 0.2", "wide", {"dropout": 0.2}),
        Config("dropout 0.5", "wide", {"dropout": 0.5}),
        Config("dropout 0.5 + max-norm 3", "wide", {"dropout": 0.5, "max_norm": 3.0}),
        Config("DropConnect 0.5", "wide", {"dropconnect": 0.5}),
        Config("Gaussian dropout 0.5", "wide", {"gaussian_dropout": 0.5}),
        Config(
            "dropout 0.5 + max-norm 3 + input noise 0.2",
            "wide",
            {"dropout": 0.5, "max_norm": 3.0, "input_noise": 0.2},
        ),
        Config(
            f"dropout 0.2 + random shift {SHIFT}",
            "wide",
            {"dropout": 0.2, "shift": 1.0},
        ),
    ]


def run_group(configs, *, data, sizes, setup, bar, **kwargs):
    """Train every configuration x seed of one group in one program."""
    seeds = list(range(setup["seeds"]))
    runs = [(c, s) for c in configs for s in seeds]
    hparams = {
        k: np.array([c.settings.get(k, v) for c, _ in runs], np.float32)
        for k, v in OFF.items()
    }
    h = training.train(
        configs[0].group,
        data,
        sizes=sizes,
        optimizer=make_optimizer(setup["lr"]),
        train_logits=forward,
        seeds=[s for _, s in runs],
        hparams=hparams,
        epochs=setup["epochs"],
        batch_size=setup["batch_size"],
        progress=bar,
        **kwargs,
    )
    n = len(seeds)
    return [h.select(slice(i * n, (i + 1) * n), c.name) for i, c in enumerate(configs)]


def run(args) -> list[training.History]:
    if args.quick:
        setup = dict(paper=(40, 32, 32, 10), wide=(40, 64, 64, 10), epochs=3)
        setup.update(seeds=3, lr=args.lr, wide_lr=args.wide_lr, batch_size=100)
    else:
        setup = dict(
            paper=(40, 100, 100, 10),
            wide=(40, args.width, args.width, 10),
            epochs=args.epochs,
            seeds=args.seeds,
            lr=args.lr,
            wide_lr=args.wide_lr,
            batch_size=100,
        )
    out = reporting.output_dir(args.out)
    print(f"output folder: {out.resolve()}")
    t0 = time.perf_counter()
    data = datasets.load_mnist1d(args.cache or out / "data")
    fit, val = data.split_validation(500)
    configs = configurations()
    groups = {
        g: [c for c in configs if c.group == g]
        for g in dict.fromkeys(c.group for c in configs)
    }
    print(
        f"MNIST-1D {len(data.y_train)} train / {len(data.y_test)} test; "
        f"{len(configs)} configurations x {setup['seeds']} seeds, "
        f"{setup['epochs']} epochs, batch {setup['batch_size']}; "
        f"MLP {setup['paper']} (Adam lr {setup['lr']}) and wide MLP "
        f"{setup['wide']} (Adam lr {setup['wide_lr']})"
    )
    from tqdm.auto import tqdm

    histories = []
    with tqdm(total=len(groups) * setup["epochs"], desc="study", unit="epoch") as bar:
        for group, members in groups.items():
            bar.set_description(f"{group} ({len(members)} configs)")
            if group == "wide":
                hs = run_group(
                    members,
                    data=data,
                    sizes=setup["wide"],
                    setup=dict(setup, lr=setup["wide_lr"]),
                    bar=bar,
                )
            elif group == "early stopping":
                hs = run_group(
                    members,
                    data=fit,
                    sizes=setup["paper"],
                    setup=setup,
                    bar=bar,
                    early_stopping=jaxreg.early_stopping(10, keep_best=True),
                    validation=val,
                )
                # Early stopping may end before the last epoch: advance the bar.
                bar.update(setup["epochs"] - hs[0].train_loss.shape[1])
            else:
                hs = run_group(
                    members, data=data, sizes=setup["paper"], setup=setup, bar=bar
                )
            for h in hs:
                bar.write(
                    f"  {h.name:44s} test {reporting.mean_spread(h.final['test_acc'])}%"
                )
            histories += hs
    wall = time.perf_counter() - t0
    cpu = time.process_time()

    rows = [reporting.summarize(h) for h in histories]
    for r, c in zip(rows, configs, strict=True):
        r["MLP"] = "x".join(
            map(str, setup["wide" if c.group == "wide" else "paper"][1:-1])
        )
        del r["time (s)"]
    table = reporting.markdown_table(rows)
    print("\n" + table)
    best = max(histories, key=lambda h: h.final["test_acc"].mean())
    print(
        f"\nbest: {best.name} at {reporting.mean_spread(best.final['test_acc'])}% test "
        f"accuracy\ntotal {wall:.0f}s wall, {cpu:.0f}s CPU (all threads)"
    )
    header = (
        "# jaxreg MNIST-1D study\n\n"
        f"Command: `python -m examples.mnist1d_study {' '.join(args.argv)}`\n\n"
        f"{len(data.y_train)} train / {len(data.y_test)} test sequences; seeds "
        f"0..{setup['seeds'] - 1}; {setup['epochs']} epochs of batch "
        f"{setup['batch_size']}; MLP {setup['paper']} with Adam lr {setup['lr']}, "
        f"wide MLP {setup['wide']} with Adam lr {setup['wide_lr']}. Early stopping "
        "trains on 3500 sequences, monitors the loss on the other 500 and restores "
        "the best epoch. Accuracies are eval-mode, mean ± std over seeds; gap = "
        f"train - test accuracy in percentage points.\n\nWall time {wall:.0f}s, "
        f"CPU time {cpu:.0f}s.\n\n"
    )
    (out / "results.md").write_text(header + table + "\n")
    summary = {
        h.name: {k: np.asarray(v).tolist() for k, v in h.final.items()}
        for h in histories
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    reporting.plot_curves(
        histories,
        out / "learning_curves.png",
        title="MNIST-1D: eval-mode accuracy per epoch (mean over seeds, band: min-max)",
        ncols=5,
    )
    reporting.plot_curves(
        histories,
        out / "test_loss.png",
        title="MNIST-1D: test cross-entropy per epoch",
        metrics=("test_loss",),
        ncols=5,
    )
    print(
        f"wrote {out / 'results.md'}, results.json, learning_curves.png, test_loss.png"
    )
    return histories


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = cli.parser(__doc__, out="results/study", cache=None, epochs=40)
    ap.add_argument("--lr", type=float, default=1e-2, help="Adam lr, 100-100 MLP")
    ap.add_argument("--wide-lr", type=float, default=3e-3, help="Adam lr, wide MLP")
    ap.add_argument("--width", type=int, default=256, help="wide MLP hidden width")
    args = ap.parse_args(argv)
    args.argv = argv
    jax.config.update("jax_compilation_cache_dir", str(os.path.join(args.out, ".jax")))
    return run(args)


if __name__ == "__main__":
    main()
