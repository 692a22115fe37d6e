"""Curriculum dropout on MNIST-1D: the dropout rate as a traced function of the step.

Morerio et al. (2017) start training without dropout and raise the rate smoothly
towards its final value: with final keep probability ``theta_bar`` the keep
probability at step ``t`` is ``theta(t) = (1 - theta_bar) exp(-gamma t) +
theta_bar``, i.e. the drop rate is

    rate(t) = rate_final * (1 - exp(-gamma * t)),   rate_final = 1 - theta_bar.

Here the *whole* training run (all epochs, all minibatches, all seeds) is one
jitted function: a ``lax.scan`` over epochs of a ``lax.scan`` over minibatches,
vmapped over seeds. The step counter is part of the scan carry, so ``rate(t)`` is
a traced scalar and :func:`jaxreg.dropout` receives a different rate at every step
without recompiling (a traced rate cannot be validated in Python; the schedule
keeps it in ``[0, 1)`` by construction). The script compares no dropout, constant
dropout at ``rate_final`` and curriculum dropout to ``rate_final`` on an MLP
40-512-512-10, prints a table and writes ``curriculum_dropout.png`` (the schedule
and the test-accuracy curves) to ``--out``::

    python -m examples.curriculum_dropout                 # a few minutes
    python -m examples.curriculum_dropout --quick --out /tmp/curriculum
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, models, reporting, training


def curriculum_rate(step, total_steps: int, rate_final: float, gamma_steps=10.0):
    """Morerio et al.'s schedule with ``gamma = gamma_steps / total_steps``."""
    gamma = gamma_steps / total_steps
    return rate_final * (1.0 - jnp.exp(-gamma * step.astype(jnp.float32)))


def run(
    data: datasets.Data,
    *,
    schedule: str,
    rate_final: float,
    sizes=(40, 512, 512, 10),
    epochs: int = 60,
    seeds: int = 3,
    batch_size: int = 100,
    lr: float = 1e-3,
):
    """Train one configuration; the whole run is a single jitted call."""
    xtr, ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    n = xtr.shape[0]
    steps = n // batch_size
    total = epochs * steps
    opt = optax.adam(lr)

    def rate_at(step):
        if schedule == "none":
            return jnp.zeros((), jnp.float32)
        if schedule == "constant":
            return jnp.full((), rate_final, jnp.float32)
        return curriculum_rate(step, total, rate_final)

    def loss(params, x, y, key, rate):
        logits = models.mlp_apply(
            params, x, key=key, hidden=lambda k, h, i: jaxreg.dropout(k, h, rate)
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_one(key):
        k_init, key = jax.random.split(key)
        params = models.init_mlp(k_init, sizes)
        state = (params, opt.init(params), key, jnp.zeros((), jnp.int32))

        def minibatch(carry, idx):
            params, opt_state, key, step = carry
            key, sub = jax.random.split(key)
            rate = rate_at(step)  # a traced scalar: no recompilation per step
            grads = jax.grad(loss)(params, xtr[idx], ytr[idx], sub, rate)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (
                optax.apply_updates(params, updates),
                opt_state,
                key,
                step + 1,
            ), rate

        def epoch(carry, _):
            key, k_perm = jax.random.split(carry[2])
            perm = jax.random.permutation(k_perm, n)[: steps * batch_size]
            carry, rates = jax.lax.scan(
                minibatch, (*carry[:2], key, carry[3]), perm.reshape(steps, -1)
            )
            logits = models.mlp_apply(carry[0], xte)
            acc = jnp.mean(jnp.argmax(logits, -1) == yte)
            return carry, (acc, rates)

        _, (acc, rates) = jax.lax.scan(epoch, state, None, length=epochs)
        return acc, rates.reshape(-1)

    train_all = jax.jit(jax.vmap(train_one))
    start = time.perf_counter()
    acc, rates = jax.device_get(train_all(training.seed_keys(seeds)))
    return {
        "test_acc": np.asarray(acc),
        "rates": np.asarray(rates[0]),
        "seconds": time.perf_counter() - start,
        "compilations": train_all._cache_size(),
    }


def main(argv=None):
    parser = cli.parser(__doc__, epochs=None)
    parser.add_argument("--rate", type=float, default=0.5, help="final drop rate")
    parser.set_defaults(seeds=None)  # 1 with --quick, else 3
    args = parser.parse_args(argv)
    out = reporting.output_dir(args.out)
    if args.quick:
        data = datasets.load_mnist1d(args.cache, num_samples=600)
        kw = dict(
            sizes=(40, 32, 32, 10), epochs=args.epochs or 2, seeds=args.seeds or 1
        )
    else:
        data = datasets.load_mnist1d(args.cache)
        kw = dict(epochs=args.epochs or 60, seeds=args.seeds or 3)

    results = {}
    rows = []
    for schedule in ("none", "constant", "curriculum"):
        res = run(data, schedule=schedule, rate_final=args.rate, **kw)
        results[schedule] = res
        final = res["test_acc"][:, -1]
        best = res["test_acc"].max(1)
        rows.append(
            {
                "dropout": schedule
                if schedule == "none"
                else f"{schedule} -> {args.rate}",
                "final test acc (%)": reporting.mean_spread(final),
                "best-epoch test acc (%)": reporting.mean_spread(best),
                "time (s)": f"{res['seconds']:.0f}",
            }
        )
    table = reporting.markdown_table(rows)
    print(table)

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for j, (name, res) in enumerate(results.items()):
        steps = np.arange(len(res["rates"]))
        axes[0].plot(steps, res["rates"], color=f"C{j}", label=name)
        acc = res["test_acc"]
        ep = np.arange(1, acc.shape[1] + 1)
        axes[1].plot(ep, acc.mean(0), color=f"C{j}", label=name)
        axes[1].fill_between(ep, acc.min(0), acc.max(0), color=f"C{j}", alpha=0.25)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("drop rate (traced, per step)")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Curriculum dropout on MNIST-1D (one jit per configuration)", fontsize=10
    )
    fig.tight_layout()
    reporting.savefig(fig, out / "curriculum_dropout.png")
    summary = {
        k: {
            "final_test_acc": v["test_acc"][:, -1].tolist(),
            "best_test_acc": v["test_acc"].max(1).tolist(),
            "compilations": v["compilations"],
            "seconds": v["seconds"],
        }
        for k, v in results.items()
    }
    (out / "curriculum_dropout.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
