"""Guide, page 5: DropConnect vs dropout, and DropConnect's three inference rules.

An MLP 40-256-256-10 (ReLU, Adam 1e-3, batch 100) is trained on MNIST-1D, three
seeds (vmapped), with

* ``none``: no regularization;
* ``dropout 0.5``: :func:`jaxreg.dropout` on both hidden layers, i.e. whole rows
  of the second and third weight matrices are dropped;
* ``DropConnect 0.5``: :func:`jaxreg.dropconnect_dense` on the second and third
  layers, i.e. individual entries of the same two matrices are dropped (one mask
  per minibatch, ``per_example=False``: see the step-cost table for the paper's
  per-example masks).

It reports test/train accuracy, learning curves, and the cost of one training
step of each (plus DropConnect with per-example masks), then compares three ways
to predict with the DropConnect-trained nets:

* the mean rule: the deterministic network (inverted scaling: ``E[u] = x @ w``);
* moment matching (Wan et al. 2013, Algorithm 2):
  :func:`jaxreg.dropconnect_inference` replaces each DropConnect pre-activation by
  a Gaussian with the exact mean and variance (:func:`jaxreg.dropconnect_moments`),
  averages ``Z`` samples of the activation (ReLU, then softmax at the output)
  layer by layer;
* MC averaging: :func:`jaxreg.mc_dropout_predict` averages the softmax output of
  ``T`` whole networks, each with its own sampled weight masks.

Writes ``dropconnect.png`` and ``dropconnect.json`` to ``--out``. Run
``python -m examples.guide_dropconnect`` or ``--quick`` (a smoke test).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, models, reporting, training

SIZES = (40, 256, 256, 10)


def dropout_logits(p, x, key, rate):
    return models.mlp_apply(
        p, x, key=key, hidden=lambda k, h, i: jaxreg.dropout(k, h, rate)
    )


def dropconnect_logits(p, x, key, rate, *, per_example=False):
    """DropConnect on the second and third layers (the first is plain)."""
    k2, k3 = jax.random.split(key)
    h1 = jax.nn.relu(x @ p[0]["w"] + p[0]["b"])
    u2 = jaxreg.dropconnect_dense(
        k2, h1, p[1]["w"], rate, bias=p[1]["b"], per_example=per_example
    )
    return jaxreg.dropconnect_dense(
        k3, jax.nn.relu(u2), p[2]["w"], rate, bias=p[2]["b"], per_example=per_example
    )


def moment_matching_probs(p, x, key, rate, num_samples):
    """Wan et al.'s inference, layer by layer: E[relu(u2)], then E[softmax(u3)]."""
    k2, k3 = jax.random.split(key)
    h1 = jax.nn.relu(x @ p[0]["w"] + p[0]["b"])
    h2 = jaxreg.dropconnect_inference(
        k2, h1, p[1]["w"], rate, jax.nn.relu, bias=p[1]["b"], num_samples=num_samples
    )
    return jaxreg.dropconnect_inference(
        k3,
        h2,
        p[2]["w"],
        rate,
        jax.nn.softmax,
        bias=p[2]["b"],
        num_samples=num_samples,
    )


def mc_probs(p, x, key, rate, num_samples):
    """Average of the softmax output over ``num_samples`` sampled networks."""

    def one(k, x):
        return jax.nn.softmax(dropconnect_logits(p, x, k, rate))

    mean, _ = jaxreg.mc_dropout_predict(
        one, key, x, num_samples=num_samples, chunk_size=min(num_samples, 25)
    )
    return mean


def scores(probs, labels):
    """Accuracy and mean negative log-likelihood of predicted probabilities."""
    nll = -jnp.mean(jnp.log(jnp.take_along_axis(probs, labels[:, None], 1) + 1e-12))
    return jnp.mean(jnp.argmax(probs, -1) == labels), nll


def nll_spread(values) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}"


def step_cost(data, name, logits_fn, reps: int, steps: int):
    """Min over ``reps`` of the time per optimizer step (one model, batch 100)."""
    opt = optax.adam(1e-3)
    x = jnp.asarray(data.x_train[: steps * 100]).reshape(steps, 100, -1)
    y = jnp.asarray(data.y_train[: steps * 100]).reshape(steps, 100)

    def step(carry, batch):
        p, s, k = carry
        k, sub = jax.random.split(k)
        g = jax.grad(
            lambda p: models.cross_entropy(logits_fn(p, batch[0], sub), batch[1])
        )(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s, k), None

    run = jax.jit(lambda c: jax.lax.scan(step, c, (x, y))[0])
    p = models.init_mlp(0, SIZES)
    carry = (p, opt.init(p), jax.random.key(0, impl="rbg"))
    jax.block_until_ready(run(carry))  # compile
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(run(carry))
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return min(times)


def main(argv=None) -> dict:
    ap = cli.parser(__doc__, cache=cli.TEMP_CACHE, epochs=80)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 3, 10, 30, 100, 300])
    args = ap.parse_args(argv)
    configs = ["none", "dropout", "DropConnect"]
    if args.quick:
        args.epochs, args.seeds, args.samples = 1, 1, [1, 3]
        configs = ["DropConnect"]
    out = reporting.output_dir(args.out)
    data, _ = cli.mnist1d_for(args)
    rate = args.rate
    train_fns = {
        "none": lambda p, x, k: models.mlp_apply(p, x),
        "dropout": lambda p, x, k: dropout_logits(p, x, k, rate),
        "DropConnect": lambda p, x, k: dropconnect_logits(p, x, k, rate),
    }

    histories = {}
    for name in configs:
        label = name if name == "none" else f"{name} {rate:g}"
        hist = training.train(
            label,
            data,
            sizes=SIZES,
            optimizer=optax.adam(1e-3),
            train_logits=train_fns[name],
            seeds=args.seeds,
            epochs=args.epochs,
            progress=not args.quick,
        )
        histories[name] = hist
        hist.report(label)

    # Step cost of one model (not vmapped), minimum over repeats.
    reps, steps = (1, 2) if args.quick else (5, 20)
    cost_fns = dict(train_fns)
    cost_fns["DropConnect per-example"] = lambda p, x, k: dropconnect_logits(
        p, x, k, rate, per_example=True
    )
    if args.quick:
        cost_fns = {k: cost_fns[k] for k in ("none", "DropConnect")}
    costs = {}
    for name, fn in cost_fns.items():
        n_steps = max(2, steps // 4) if "per-example" in name else steps
        costs[name] = step_cost(data, name, fn, reps, n_steps)
        print(f"step cost {name}: {costs[name]:.2f} ms", flush=True)

    # Inference rules on the DropConnect-trained parameters.
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    dc_params = histories["DropConnect"].params
    key = jax.random.key(2013)
    mean_rule = jax.jit(
        jax.vmap(lambda p: scores(jax.nn.softmax(models.mlp_apply(p, xte)), yte))
    )(dc_params)
    inference = {"mean rule": [np.asarray(v).tolist() for v in mean_rule]}
    for label, fn in (("moment matching", moment_matching_probs), ("MC", mc_probs)):
        inference[label] = {}
        for n in args.samples:
            run = jax.jit(
                jax.vmap(lambda p, n=n, fn=fn: scores(fn(p, xte, key, rate, n), yte))
            )
            acc, nll = run(dc_params)
            inference[label][n] = [np.asarray(acc).tolist(), np.asarray(nll).tolist()]
            print(
                f"{label} with {n} samples: acc {reporting.mean_spread(acc)}, NLL "
                f"{np.mean(nll):.3f}",
                flush=True,
            )

    rows = []
    for name, h in histories.items():
        row = reporting.summarize(h, best=True)
        row["ms/step"] = f"{costs[name]:.2f}" if name in costs else ""
        rows.append(row)
    table = reporting.markdown_table(rows)
    cost_table = reporting.markdown_table(
        [
            {
                "training step (1 model, batch 100)": k,
                "ms/step": f"{v:.2f}",
                "x none": f"{v / costs['none']:.1f}",
            }
            for k, v in costs.items()
        ]
    )
    inf_rows = [
        {
            "rule": "mean rule",
            "samples": "-",
            "test acc (%)": reporting.mean_spread(inference["mean rule"][0]),
            "test NLL": nll_spread(inference["mean rule"][1]),
        }
    ]
    for label in ("moment matching", "MC"):
        for n, (acc, nll) in inference[label].items():
            inf_rows.append(
                {
                    "rule": label,
                    "samples": str(n),
                    "test acc (%)": reporting.mean_spread(acc),
                    "test NLL": nll_spread(nll),
                }
            )
    inf_table = reporting.markdown_table(inf_rows)
    print(table, cost_table, inf_table, sep="\n\n")

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, h in enumerate(histories.values()):
        x = np.arange(1, h.test_acc.shape[1] + 1)
        for c, ls in ((h.test_acc, "-"), (h.train_acc, ":")):
            axes[0].plot(
                x,
                c.mean(0),
                color=f"C{i}",
                ls=ls,
                lw=1.3,
                label=f"{h.name} ({'test' if ls == '-' else 'train'})",
            )
        axes[0].fill_between(
            x, h.test_acc.min(0), h.test_acc.max(0), color=f"C{i}", alpha=0.2
        )
    axes[0].set_xlabel("epoch (40 steps)")
    axes[0].set_title("accuracy (eval mode; band: min-max over seeds)", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, j, title in ((axes[1], 0, "test accuracy"), (axes[2], 1, "test NLL")):
        base = np.asarray(inference["mean rule"][j])
        ax.axhline(
            base.mean() * (100 if j == 0 else 1), color="k", lw=1, label="mean rule"
        )
        for k, label in enumerate(("moment matching", "MC")):
            ns = list(inference[label])
            v = np.array([np.mean(inference[label][n][j]) for n in ns])
            ax.plot(
                ns, v * (100 if j == 0 else 1), "o-", color=f"C{k + 3}", label=label
            )
        ax.set_xscale("log")
        ax.set_xlabel("samples (Z for moment matching, T for MC)")
        ax.set_title(
            f"DropConnect {rate:g} nets: {title} by inference rule", fontsize=9
        )
        ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    summary = {
        "table": table,
        "cost_table": cost_table,
        "inference_table": inf_table,
        "step_cost_ms": costs,
        "inference": {
            k: {str(n): v for n, v in d.items()} if isinstance(d, dict) else d
            for k, d in inference.items()
        },
        "results": {
            h.name: h.to_json("test_acc", "train_acc") for h in histories.values()
        },
    }
    title = f"MLP 40-256-256-10 on MNIST-1D, {args.epochs} epochs, {args.seeds} seeds"
    path = reporting.save_figure(fig, out, "dropconnect", title, summary=summary)
    print(f"figure: {path}")
    return summary


if __name__ == "__main__":
    main()
