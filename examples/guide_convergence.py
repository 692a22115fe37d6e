"""Guide, page 6a: does dropout slow convergence? Steps to reach a loss, measured.

An MLP (40-256-256-10, ReLU, Adam 1e-3, batch 100) is trained on MNIST-1D with
inverted dropout after each hidden layer at rates 0, 0.1, 0.3 and 0.5, three seeds
each (all seeds in one vmapped program). After every epoch (40 steps) it records

* the eval-mode loss on the whole training set (the network without dropout: how
  well it has fitted the data),
* the train-mode loss averaged over the epoch's minibatches (what the optimizer
  sees: includes the dropout noise),
* the eval-mode test loss and accuracy,

then reports the number of steps each rate needs to reach given training losses
and test accuracies, and the wall-clock cost of one training step. The figure goes
to ``--out`` (default ``docs/guide/figures``) as ``convergence.png`` with the
numbers in ``convergence.json``.

Run ``python -m examples.guide_convergence`` (4 rates x 100 epochs x 3 seeds of a
small MLP) or ``python -m examples.guide_convergence --quick`` (a smoke test). The
step-time column is a minimum over 7 repeats; on a busy machine it is noise (the
guide's page 5 has the step-cost comparison).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, models, reporting, training


def make_run(data: datasets.Data, sizes, rate: float, lr: float, batch_size: int):
    """Build jitted ``init`` and ``epoch`` functions for one dropout rate."""
    xtr, ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    opt = optax.adam(lr)

    def hidden(k, h, i):
        return jaxreg.dropout(k, h, rate)

    def loss_fn(p, x, y, k):
        logits = models.mlp_apply(p, x, key=k, hidden=hidden if rate else None)
        return models.cross_entropy(logits, y)

    def step(carry, idx):
        p, s, key = carry
        key, sub = jax.random.split(key)
        loss, g = jax.value_and_grad(loss_fn)(p, xtr[idx], ytr[idx], sub)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s, key), loss

    def epoch(state, batches):
        (p, s, key), losses = jax.lax.scan(step, state, batches)
        fit = models.cross_entropy(models.mlp_apply(p, xtr), ytr)
        te = models.mlp_apply(p, xte)
        metrics = (
            fit,
            losses.mean(),
            models.cross_entropy(te, yte),
            models.accuracy(te, yte),
        )
        return (p, s, key), metrics

    def init(p, key):
        return (p, opt.init(p), key)

    def steps_only(state, batches):  # for timing: the optimizer steps alone
        return jax.lax.scan(step, state, batches)[0]

    return (
        jax.jit(jax.vmap(init)),
        jax.jit(jax.vmap(epoch)),
        jax.jit(jax.vmap(steps_only)),
    )


def first_step(curve: np.ndarray, ok: np.ndarray, steps_per_epoch: int):
    """Steps until ``ok`` first holds for each seed (None if never)."""
    out = []
    for row in ok:
        hit = np.flatnonzero(row)
        out.append(int((hit[0] + 1) * steps_per_epoch) if hit.size else None)
    return out


def fmt_steps(values) -> str:
    if any(v is None for v in values):
        reached = [v for v in values if v is not None]
        return f"not reached ({len(reached)}/{len(values)} seeds)"
    return f"{np.mean(values):.0f} ({min(values)}-{max(values)})"


def main(argv=None) -> dict:
    ap = cli.parser(__doc__, cache=cli.TEMP_CACHE, epochs=100)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5])
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.rates = 2, 1, [0.5]
    out = reporting.output_dir(args.out)
    data = datasets.load_mnist1d(args.cache)
    sizes, lr, batch_size = (40, 256, 256, 10), 1e-3, 100
    n = len(data.y_train)
    spe = n // batch_size
    seeds = list(range(args.seeds))
    loss_targets = [1.0, 0.5, 0.1, 0.01]
    acc_targets = [0.55, 0.6, 0.65]

    results, timers = {}, {}
    for rate in args.rates:
        init, epoch, steps_only = make_run(data, sizes, rate, lr, batch_size)
        params = jax.tree.map(
            lambda *a: jnp.stack(a), *[models.init_mlp(s, sizes) for s in seeds]
        )
        state = init(params, training.seed_keys(seeds))
        rngs = [np.random.default_rng([s, 1]) for s in seeds]
        curves = []
        t0 = time.perf_counter()
        for _ in range(args.epochs):
            batches = np.stack(
                [r.permutation(n)[: spe * batch_size].reshape(spe, -1) for r in rngs]
            )
            state, m = epoch(state, batches)
            curves.append([np.asarray(v) for v in m])
        jax.block_until_ready(state)
        total = time.perf_counter() - t0
        timers[rate] = (steps_only, state, batches)
        fit, noisy, te_loss, te_acc = (
            np.stack([c[i] for c in curves], axis=1) for i in range(4)
        )
        results[rate] = {
            "fit_loss": fit.tolist(),
            "train_mode_loss": noisy.tolist(),
            "test_loss": te_loss.tolist(),
            "test_acc": te_acc.tolist(),
            "steps_to_fit_loss": {
                str(t): first_step(fit, fit <= t, spe) for t in loss_targets
            },
            "steps_to_test_acc": {
                str(t): first_step(te_acc, te_acc >= t, spe) for t in acc_targets
            },
            "best_test_acc": te_acc.max(1).tolist(),
            "step_at_best_test_loss": ((te_loss.argmin(1) + 1) * spe).tolist(),
            "final_test_acc": te_acc[:, -1].tolist(),
            "seconds_total": total,
        }
        print(
            f"rate {rate}: final fit loss {fit[:, -1].mean():.4f}, best test acc "
            f"{te_acc.max(1).mean():.3f} ({total:.0f} s)",
            flush=True,
        )

    # Step cost: one epoch of optimizer steps (no evaluation), each rate timed in
    # turn, repeated; the minimum over repeats is the least disturbed by other
    # processes sharing the CPU.
    reps = 1 if args.quick else 7
    for fn, state, batches in timers.values():
        jax.block_until_ready(fn(state, batches))  # compile
    times = {rate: [] for rate in timers}
    for _ in range(reps):
        for rate, (fn, state, batches) in timers.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, batches))
            times[rate].append((time.perf_counter() - t0) / spe * 1e3)
    for rate in timers:
        results[rate]["ms_per_step_3_seeds"] = min(times[rate])
        print(f"rate {rate}: {min(times[rate]):.2f} ms per step (min of {reps})")

    rows = []
    for rate, r in results.items():
        row = {"dropout rate": f"{rate:g}"}
        for t in loss_targets:
            row[f"steps to fit loss <= {t:g}"] = fmt_steps(
                r["steps_to_fit_loss"][str(t)]
            )
        for t in acc_targets:
            row[f"steps to test acc >= {t:.0%}"] = fmt_steps(
                r["steps_to_test_acc"][str(t)]
            )
        row["best test acc (%)"] = reporting.mean_spread(r["best_test_acc"])
        row["step of min test loss"] = fmt_steps(r["step_at_best_test_loss"])
        row["ms/step"] = f"{r['ms_per_step_3_seeds']:.2f}"
        rows.append(row)
    table = reporting.markdown_table(rows)
    print(table)

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, (rate, r) in enumerate(results.items()):
        color = f"C{i}"
        for ax, key in zip(axes, ("fit_loss", "test_loss", "test_acc"), strict=True):
            c = np.asarray(r[key])
            x = np.arange(1, c.shape[1] + 1) * spe
            ax.plot(x, c.mean(0), color=color, label=f"rate {rate:g}", lw=1.3)
            ax.fill_between(x, c.min(0), c.max(0), color=color, alpha=0.2)
        c = np.asarray(r["train_mode_loss"])
        x = np.arange(1, c.shape[1] + 1) * spe
        axes[0].plot(x, c.mean(0), color=color, ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_title(
        "training loss (solid: eval mode, dotted: train mode)", fontsize=9
    )
    axes[1].set_title("test loss (eval mode)", fontsize=9)
    axes[2].set_title("test accuracy", fontsize=9)
    for ax in axes:
        ax.set_xlabel("optimizer steps")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    summary = {"table": table, "results": {str(k): v for k, v in results.items()}}
    title = (
        f"MLP 40-256-256-10 on MNIST-1D, Adam 1e-3, batch 100, "
        f"{len(seeds)} seeds (band: min-max)"
    )
    path = reporting.save_figure(fig, out, "convergence", title, summary=summary)
    print(f"figure: {path}")
    return summary


if __name__ == "__main__":
    main()
