"""Guide, page 6d: dropout and batch normalization. The variance shift, measured.

Li et al. (2019) explain why dropout placed before a batch-normalization layer
hurts: in training, BN normalizes with statistics of dropped-out activations, whose
variance is inflated by the mask; at inference dropout is off, the variance of the
BN input is smaller, but BN still divides by the training-time statistics. The
"variance shift" of a BN layer is ``Var_train / Var_eval`` of its input (1 is
harmless).

Model: an MLP 40-256-256-256-10 with ``Linear -> BN -> ReLU -> [noise]`` blocks
(hand-rolled BN in plain JAX; Adam 1e-3, batch 100), three seeds. BN's inference
statistics are the mean and variance of each BN input over the whole training set
computed in train mode (noise on, one draw): the value a running average converges
to. Configurations:

* ``no dropout``;
* ``dropout 0.2 / 0.5 everywhere``: inverted dropout after every block, so it
  feeds the next BN (the disharmonious order);
* ``dropout 0.5 after last BN``: only before the classifier (Li et al.'s fix 1);
* ``gaussian 0.5 everywhere``: :func:`jaxreg.gaussian_dropout`, same mean and
  variance as Bernoulli dropout at 0.5;
* ``uout 0.1 everywhere``: ``x * (1 + u)``, ``u ~ U(-0.1, 0.1)``, the
  low-variance noise Li et al. propose (written here by hand: 1 line).

For every configuration it measures the variance shift at each BN layer (test set,
mean over units) and the test accuracy with the standard statistics and with
statistics recomputed without noise after training ("recalibrated": the fix that
needs no change of architecture). Writes ``batchnorm.png`` and ``batchnorm.json``.
Run ``python -m examples.guide_batchnorm`` (about 200 s of CPU time, measured) or
``--quick`` (a smoke test).

Reference: Li, Chen, Hu, Yang. "Understanding the Disharmony between Dropout and
Batch Normalization by Variance Shift." CVPR 2019. https://arxiv.org/abs/1801.05134
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, models, reporting, training

EPS = 1e-5

# name -> (noise kind, rate, where: "all" blocks or only the "last")
CONFIGS = {
    "no dropout": ("none", 0.0, "all"),
    "dropout 0.2 everywhere": ("dropout", 0.2, "all"),
    "dropout 0.5 everywhere": ("dropout", 0.5, "all"),
    "dropout 0.5 after last BN": ("dropout", 0.5, "last"),
    "gaussian 0.5 everywhere": ("gaussian", 0.5, "all"),
    "uout 0.1 everywhere": ("uout", 0.1, "all"),
}


def init_bn_mlp(seed: int, sizes) -> list:
    """Linear layers (He-normal) with BN scale/offset on every hidden layer."""
    layers = models.init_mlp(int(seed), sizes)
    for layer in layers[:-1]:
        n = layer["w"].shape[1]
        layer["gamma"] = jnp.ones((n,), jnp.float32)
        layer["beta"] = jnp.zeros((n,), jnp.float32)
    return layers


def noise(key, h, kind: str, rate: float):
    if kind == "dropout":
        return jaxreg.dropout(key, h, rate)
    if kind == "gaussian":
        return jaxreg.gaussian_dropout(key, h, rate)
    if kind == "uout":  # Li et al. 2019: x * (1 + u), u ~ U(-rate, rate)
        return h * (1.0 + jax.random.uniform(key, h.shape, h.dtype, -rate, rate))
    return h


def bn_mlp_apply(params, x, key=None, *, config, stats=None):
    """Forward pass; returns ``(logits, batch_stats, bn_inputs)``.

    ``key`` not None turns the noise on. ``stats=None`` normalizes with the batch's
    own statistics (train mode); otherwise with the given ``[(mean, var), ...]``.
    """
    kind, rate, where = config
    n = len(params)
    keys = jax.random.split(key, n) if key is not None else [None] * n
    h, batch_stats, inputs = x, [], []
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i == n - 1:
            break
        inputs.append(h)
        mean, var = h.mean(0), h.var(0)
        batch_stats.append((mean, var))
        if stats is not None:
            mean, var = stats[i]
        h = (h - mean) * jax.lax.rsqrt(var + EPS) * layer["gamma"] + layer["beta"]
        h = jax.nn.relu(h)
        if key is not None and (where == "all" or i == n - 2):
            h = noise(keys[i], h, kind, rate)
    return h, batch_stats, inputs


def main(argv=None) -> dict:
    ap = cli.parser(__doc__, cache=cli.TEMP_CACHE, epochs=40)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = ap.parse_args(argv)
    sizes = (40, 256, 256, 256, 10)
    if args.quick:
        args.epochs, args.seeds = 1, 1
        args.configs = ["dropout 0.5 everywhere"]
        sizes = (40, 16, 16, 10)
    out = reporting.output_dir(args.out)
    data = datasets.load_mnist1d(args.cache)
    xtr, xte = jnp.asarray(data.x_train), jnp.asarray(data.x_test)
    yte = jnp.asarray(data.y_test)
    opt = optax.adam(1e-3)
    stats_key = jax.random.key(1234)

    def population_stats(p, config, noisy: bool):
        """BN statistics over the whole training set in train mode."""
        key = stats_key if noisy else None
        return bn_mlp_apply(p, xtr, key, config=config)[1]

    results = {}
    for name in args.configs:
        config = CONFIGS[name]

        def train_logits(p, x, k, config=config):
            return bn_mlp_apply(p, x, k, config=config)[0]

        def eval_logits(p, x, config=config):
            stats = population_stats(p, config, noisy=True)
            return bn_mlp_apply(p, x, config=config, stats=stats)[0]

        hist = training.train(
            name,
            data,
            sizes=sizes,
            optimizer=opt,
            init=lambda s: init_bn_mlp(s, sizes),
            train_logits=train_logits,
            eval_logits=eval_logits,
            seeds=args.seeds,
            epochs=args.epochs,
            progress=not args.quick,
        )

        @jax.jit
        @jax.vmap
        def measure(p, config=config):
            standard = population_stats(p, config, noisy=True)
            clean = population_stats(p, config, noisy=False)
            logits, _, inputs = bn_mlp_apply(p, xte, config=config, stats=standard)
            recal = bn_mlp_apply(p, xte, config=config, stats=clean)[0]
            shift = jnp.stack(
                [
                    jnp.mean(s[1] / h.var(0))
                    for s, h in zip(standard, inputs, strict=True)
                ]
            )
            return (
                shift,
                models.accuracy(logits, yte),
                models.accuracy(recal, yte),
            )

        shift, acc, acc_recal = (np.asarray(v) for v in measure(hist.params))
        results[name] = {
            "variance_shift_per_layer": shift.tolist(),
            "test_acc": acc.tolist(),
            "test_acc_recalibrated": acc_recal.tolist(),
            "train_acc": hist.final["train_acc"].tolist(),
            "test_acc_curve": hist.test_acc.tolist(),
            "seconds": hist.seconds,
        }
        print(
            f"{name}: shift per layer {np.round(shift.mean(0), 3).tolist()}, test "
            f"{reporting.mean_spread(acc)}, recalibrated {reporting.mean_spread(acc_recal)}"
            f" ({hist.seconds:.0f} s)",
            flush=True,
        )

    rows = []
    for name, r in results.items():
        shift = np.asarray(r["variance_shift_per_layer"])
        row = {"configuration": name}
        for i in range(shift.shape[1]):
            row[f"shift BN{i + 1}"] = f"{shift[:, i].mean():.3f}"
        row["train acc (%)"] = reporting.mean_spread(r["train_acc"])
        row["test acc (%)"] = reporting.mean_spread(r["test_acc"])
        row["test acc, recalibrated (%)"] = reporting.mean_spread(
            r["test_acc_recalibrated"]
        )
        rows.append(row)
    table = reporting.markdown_table(rows)
    print(table)

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.9))
    names = list(results)
    n_layers = len(results[names[0]]["variance_shift_per_layer"][0])
    width = 0.8 / n_layers
    pos = np.arange(len(names))
    for i in range(n_layers):
        v = np.array(
            [np.mean(results[k]["variance_shift_per_layer"], 0)[i] for k in names]
        )
        axes[0].bar(
            pos + (i - (n_layers - 1) / 2) * width, v, width, label=f"BN layer {i + 1}"
        )
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("Var_train / Var_eval of BN input")
    axes[0].set_title(
        "variance shift (test set, mean over units and seeds)", fontsize=9
    )
    axes[0].legend(fontsize=7)
    for ax, key, label in (
        (axes[1], "test_acc", "standard BN statistics"),
        (axes[1], "test_acc_recalibrated", "recalibrated (no noise)"),
    ):
        off = -0.2 if key == "test_acc" else 0.2
        v = np.array([np.mean(results[k][key]) for k in names]) * 100
        sd = np.array([np.std(results[k][key]) for k in names]) * 100
        ax.bar(pos + off, v, 0.4, yerr=sd, label=label)
    lo = min(np.min(results[k]["test_acc"]) for k in names) * 100
    axes[1].set_ylim(max(0, lo - 5), 100)
    axes[1].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(pos, names, rotation=25, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    summary = {"table": table, "results": results}
    title = (
        f"MLP {'-'.join(map(str, sizes))} with BN on MNIST-1D, {args.epochs} epochs, "
        f"{args.seeds} seeds"
    )
    path = reporting.save_figure(fig, out, "batchnorm", title, summary=summary)
    print(f"figure: {path}")
    return summary


if __name__ == "__main__":
    main()
