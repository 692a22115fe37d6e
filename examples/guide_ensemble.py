"""Guide 2: how dropout works: masks, thinned networks and the ensemble view.

Two figures:

1. ``dropout_masks.png``: the full network and three thinned networks sampled by
   dropout (a small 8-6-6-3 MLP: dropped units and their connections vanish), and
   the actual rate-0.5 masks that ``jaxreg.dropout`` draws for the first hidden
   layer of the trained MNIST-1D network on 32 examples (every example, every
   step gets its own thinned network).
2. ``dropout_ensemble.png``: the ensemble view (Srivastava et al. 2014, section
   7.5 and figure 11). A dropout network is trained on MNIST-1D; at test time its
   prediction is either the weight-scaling rule (one deterministic pass,
   ``deterministic=True``) or the average of the softmax outputs of ``k``
   sampled thinned networks (Monte-Carlo model averaging, computed with
   ``jaxreg.mc_dropout_predict``). Test accuracy and cross-entropy are plotted
   against ``k``.

Run ``python -m examples.guide_ensemble`` (``--quick`` for a smoke run); figures
go to ``--out`` (default ``docs/guide/figures``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, models, reporting, training

RATE = 0.5


def forward(params, x, key, *, deterministic=False):
    return models.mlp_apply(
        params,
        x,
        key=key,
        hidden=lambda k, h, i: jaxreg.dropout(k, h, RATE, deterministic=deterministic),
    )


def draw_network(ax, sizes, keep, title):
    """A layered network diagram; ``keep[l][j]`` False greys unit j of layer l."""
    xs = np.linspace(0, 1, len(sizes))
    pos = [np.linspace(0.1, 0.9, n) if n > 1 else np.array([0.5]) for n in sizes]
    for layer in range(len(sizes) - 1):
        for i, yi in enumerate(pos[layer]):
            for j, yj in enumerate(pos[layer + 1]):
                on = keep[layer][i] and keep[layer + 1][j]
                ax.plot(
                    [xs[layer], xs[layer + 1]],
                    [yi, yj],
                    color="0.2" if on else "0.9",
                    lw=0.6 if on else 0.3,
                    zorder=1,
                )
    for layer, ys in enumerate(pos):
        for i, y in enumerate(ys):
            on = keep[layer][i]
            ax.scatter(
                xs[layer],
                y,
                s=70,
                zorder=2,
                facecolor="C0" if on else "white",
                edgecolor="C0" if on else "0.7",
                marker="o" if on else "X",
            )
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(0, 1)
    ax.axis("off")


def main(argv=None):
    ap = cli.parser(__doc__, epochs=60)
    ap.add_argument("--samples", type=int, default=200, help="max thinned nets")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.samples, args.repeats = 2, 2, 10, 2
    out = reporting.output_dir(args.out)
    t0 = time.perf_counter()
    data = datasets.load_mnist1d(args.cache)
    sizes = (40, 256, 256, 10)
    print(f"MNIST-1D; MLP {sizes}, dropout {RATE} after each hidden layer")

    hist = training.train(
        "dropout 0.5",
        data,
        sizes=sizes,
        optimizer=optax.adam(3e-3),
        train_logits=lambda p, x, k: forward(p, x, k),
        seeds=args.seeds,
        epochs=args.epochs,
    )
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    # ---- figure 1: thinned networks and real masks
    plt = reporting.pyplot()
    fig = plt.figure(figsize=(13, 4.2))
    toy = (8, 6, 6, 3)
    rng_key = jax.random.key(3)
    for i in range(4):
        ax = fig.add_subplot(2, 6, (i + 1) if i < 2 else (i + 5))
        if i == 0:
            keep = [np.ones(n, bool) for n in toy]
            title = "full network"
        else:
            k = jax.random.fold_in(rng_key, i)
            # Inputs and outputs are kept; hidden units are dropped at rate 0.5.
            keep = [np.ones(toy[0], bool)]
            for j, n in enumerate(toy[1:-1]):
                keep.append(
                    np.asarray(jaxreg.keep_mask(jax.random.fold_in(k, j), (n,), RATE))
                )
            keep.append(np.ones(toy[-1], bool))
            title = f"thinned network {i}"
        draw_network(ax, toy, keep, title)
    p0 = jax.tree.map(lambda a: a[0], hist.params)
    h1 = jax.nn.relu(xte[:32] @ p0[0]["w"] + p0[0]["b"])[:, :64]
    dropped = jaxreg.dropout(jax.random.key(11), h1, RATE)
    ax = fig.add_subplot(1, 3, 2)
    ax.imshow(
        np.asarray(dropped != 0) | np.asarray(h1 == 0), cmap="gray", aspect="auto"
    )
    ax.imshow(
        np.ma.masked_where(np.asarray(h1 != 0), np.ones(h1.shape)),
        cmap="Reds",
        vmin=0,
        vmax=2,
        aspect="auto",
    )
    ax.set_title(
        "rate-0.5 masks, hidden layer 1 (black: dropped,\nred: ReLU already 0)"
    )
    ax.set_xlabel("unit (first 64 of 256)")
    ax.set_ylabel("test example")
    ax = fig.add_subplot(1, 3, 3)
    ax.plot(np.asarray(h1[0]), "o-", ms=3, lw=0.8, label="h (eval mode)")
    ax.plot(np.asarray(dropped[0]), "x", ms=5, label="dropout(h) = h * m / 0.5")
    ax.set_title("one example: kept units are doubled")
    ax.set_xlabel("unit")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path1 = reporting.savefig(fig, out / "dropout_masks.png")

    # ---- figure 2: weight scaling vs Monte-Carlo averaging of thinned networks
    def probs(params, key, x):
        return jax.nn.softmax(forward(params, x, key))

    ks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200) if k <= args.samples]
    mc = {k: [] for k in ks}  # per seed: list over repeats of (acc, nll)
    ws = []
    onehot = jax.nn.one_hot(yte, 10)
    sample_all = jax.jit(
        lambda p, key: jax.vmap(lambda kk: probs(p, kk, xte))(
            jax.random.split(key, args.samples)
        )
    )
    for s in range(args.seeds):
        p = jax.tree.map(lambda a, s=s: a[s], hist.params)
        pw = jax.nn.softmax(forward(p, xte, None, deterministic=True))
        ws.append(
            (
                float(models.accuracy(pw, yte)),
                float(-(onehot * jnp.log(pw + 1e-12)).sum(-1).mean()),
            )
        )
        samples = np.asarray(sample_all(p, jax.random.key(1000 + s)))  # (T, N, 10)
        # Cross-check against the library's MC-dropout predictor (same T).
        mean, _ = jaxreg.mc_dropout_predict(
            lambda kk, x, p=p: probs(p, kk, x),
            jax.random.key(5000 + s),
            xte,
            num_samples=args.samples,
            chunk_size=50,
        )
        rng = np.random.default_rng(s)
        for k in ks:
            res = []
            for r in range(args.repeats if k < args.samples else 1):
                idx = rng.choice(args.samples, k, replace=False)
                pm = samples[idx].mean(0) if r or k < args.samples else samples.mean(0)
                res.append(
                    (
                        float((pm.argmax(-1) == np.asarray(yte)).mean()),
                        float(
                            -(np.asarray(onehot) * np.log(pm + 1e-12)).sum(-1).mean()
                        ),
                    )
                )
            mc[k].append(np.mean(res, axis=0))
        lib = float(models.accuracy(mean, yte))
        print(
            f"seed {s}: weight scaling {ws[-1][0] * 100:.1f}%, "
            f"MC {args.samples} (samples) {mc[ks[-1]][-1][0] * 100:.1f}%, "
            f"mc_dropout_predict {args.samples} {lib * 100:.1f}%"
        )
    ws = np.array(ws)  # (S, 2)
    table = []
    print("\nk thinned nets | test acc (%) | test NLL   (mean ± std over seeds)")
    for k in ks:
        a = np.array(mc[k])  # (S, 2)
        table.append((k, a))
        print(
            f"{k:>13d} | {reporting.mean_spread(a[:, 0])} | "
            f"{reporting.mean_spread(a[:, 1], percent=False, digits=3)}"
        )
    print(
        f"weight scaling | {reporting.mean_spread(ws[:, 0])} | "
        f"{reporting.mean_spread(ws[:, 1], percent=False, digits=3)}"
    )

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, j, label in ((axes[0], 0, "test accuracy (%)"), (axes[1], 1, "test NLL")):
        scale = 100 if j == 0 else 1
        m = np.array([a[:, j].mean() for _, a in table]) * scale
        lo = np.array([a[:, j].min() for _, a in table]) * scale
        hi = np.array([a[:, j].max() for _, a in table]) * scale
        ax.plot(ks, m, "o-", label="MC average of k thinned networks")
        ax.fill_between(ks, lo, hi, alpha=0.2)
        ax.axhline(ws[:, j].mean() * scale, color="C3", ls="--", label="weight scaling")
        ax.axhspan(
            ws[:, j].min() * scale, ws[:, j].max() * scale, color="C3", alpha=0.1
        )
        ax.set_xscale("log")
        ax.set_xlabel("k (number of sampled networks)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    title = (
        f"MNIST-1D, dropout {RATE}: weight scaling vs model averaging "
        f"({args.seeds} seeds; bands: min-max over seeds)"
    )
    path2 = reporting.save_figure(fig, out, "dropout_ensemble", title)
    print(f"\nfigures: {path1}, {path2}   ({time.perf_counter() - t0:.0f}s)")
    return ws, table


if __name__ == "__main__":
    main()
