"""Stochastic depth over a scanned layer stack, and label smoothing, on MNIST-1D.

A residual MLP keeps its blocks' parameters stacked on a leading layer axis and
runs them with one ``jax.lax.scan``, the way large models are written. Three
arrays are scanned together:

* the stacked block parameters,
* the per-block drop-path rates from :func:`jaxreg.schedules.drop_path_rates`,
* the per-block keys from :func:`jaxreg.layer_keys`, derived from the step key
  :func:`jaxreg.derive_key` gives each training step (no ``split_rngs``: the
  step counter and the layer index are folded into one base key).

Rates, keys, and the label-smoothing factor of
:func:`jaxreg.losses.smoothed_cross_entropy` are traced inputs of a single jitted
program (all epochs, all minibatches, all seeds), so every configuration below
reuses one compilation. The script compares no regularization, a constant
drop-path rate, the linear-in-depth rule at the same mean rate, and label
smoothing; it prints a table, reports the expected calibration error (ECE), and
writes ``deep_models.png`` (test accuracy per epoch, rates per block) and
``deep_models_calibration.png`` (reliability diagram) to ``--out``::

    python -m examples.deep_models                   # a few minutes on 2 cores
    python -m examples.deep_models --quick --out /tmp/deep
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets

# name -> (drop-path profile, label smoothing); "linear" has the mean rate of
# "constant" (the same expected number of dropped blocks per example).
CONFIGS = {
    "none": ("none", 0.0),
    "drop path, constant": ("constant", 0.0),
    "drop path, linear": ("linear", 0.0),
    "label smoothing 0.1": ("none", 0.1),
}


def init_params(key, *, depth: int, width: int, hidden: int, d_in=40, classes=10):
    """Embedding, ``depth`` residual blocks stacked on axis 0, and a head."""
    k_in, k_blocks, k_out = jax.random.split(key, 3)

    def dense(k, shape):
        return jax.random.normal(k, shape) * jnp.sqrt(2.0 / shape[-2])

    k1, k2 = jax.random.split(k_blocks)
    return {
        "embed": {"w": dense(k_in, (d_in, width)), "b": jnp.zeros(width)},
        "blocks": {  # every leaf has the layer axis first
            "scale": jnp.ones((depth, width)),
            "w1": dense(k1, (depth, width, hidden)),
            "b1": jnp.zeros((depth, hidden)),
            "w2": dense(k2, (depth, hidden, width)) * 0.1,
            "b2": jnp.zeros((depth, width)),
        },
        "head": {"w": dense(k_out, (width, classes)) * 0.1, "b": jnp.zeros(classes)},
    }


def _norm(h, scale):
    h = h - h.mean(-1, keepdims=True)
    return scale * h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + 1e-5)


def apply(params, x, *, rates=None, key=None):
    """Logits; with ``key`` and ``rates`` each block's branch is drop-pathed."""
    h = x @ params["embed"]["w"] + params["embed"]["b"]
    depth = params["blocks"]["w1"].shape[0]
    train = key is not None

    def block(h, xs):
        p, rate, k = xs
        branch = jax.nn.relu(_norm(h, p["scale"]) @ p["w1"] + p["b1"])
        branch = branch @ p["w2"] + p["b2"]
        # One keep decision per example (mode="row"), scaled by 1/(1 - rate).
        branch = jaxreg.drop_path(k, branch, rate, deterministic=not train)
        return h + branch, None

    keys = jaxreg.layer_keys(key, depth, "drop_path") if train else None
    rates = jnp.zeros(depth) if rates is None else rates
    h, _ = jax.lax.scan(block, h, (params["blocks"], rates, keys))
    return h @ params["head"]["w"] + params["head"]["b"]


def expected_calibration_error(probs, labels, bins: int = 15):
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    conf = probs.max(-1)
    correct = probs.argmax(-1) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def make_trainer(data, *, depth, width, hidden, epochs, batch_size, lr):
    """One jitted function: (seed keys, rates, alpha) -> per-seed results."""
    xtr, ytr, xte, yte = (jnp.asarray(a) for a in data)
    n = xtr.shape[0]
    steps = n // batch_size
    opt = optax.adamw(lr, weight_decay=1e-4)

    def loss_fn(params, x, y, key, rates, alpha):
        logits = apply(params, x, rates=rates, key=key)
        return jaxreg.losses.smoothed_cross_entropy(logits, y, alpha, reduction="mean")

    def train_one(seed_key, rates, alpha):
        k_init, k_data, run_key = jax.random.split(seed_key, 3)
        params = init_params(k_init, depth=depth, width=width, hidden=hidden)

        def minibatch(carry, idx):
            params, opt_state, step = carry
            step_key = jaxreg.derive_key(run_key, step)  # a new key every step
            grads = jax.grad(loss_fn)(
                params, xtr[idx], ytr[idx], step_key, rates, alpha
            )
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, step + 1), None

        def epoch(carry, e):
            perm = jax.random.permutation(jaxreg.derive_key(k_data, e), n)
            batches = perm[: steps * batch_size].reshape(steps, batch_size)
            carry, _ = jax.lax.scan(minibatch, carry, batches)
            logits = apply(carry[0], xte)
            return carry, jnp.mean(jnp.argmax(logits, -1) == yte)

        state = (params, opt.init(params), jnp.zeros((), jnp.int32))
        (params, _, _), acc = jax.lax.scan(epoch, state, jnp.arange(epochs))
        probs = jax.nn.softmax(apply(params, xte))
        return acc, probs

    return jax.jit(jax.vmap(train_one, in_axes=(0, None, None)))


def mean_pm(values) -> str:
    values = 100 * np.asarray(values)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def main(argv=None):
    ap = cli.parser(__doc__, cache=None, seeds=None, epochs=False)
    ap.add_argument("--rate", type=float, default=0.15, help="mean drop-path rate")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        data = datasets.load_mnist1d(args.cache, num_samples=500).arrays()
        kw = dict(depth=3, width=16, hidden=32, epochs=2, batch_size=50, lr=3e-3)
        seeds = args.seeds or 1
    else:
        data = datasets.load_mnist1d(args.cache, num_samples=5000).arrays()
        kw = dict(depth=8, width=64, hidden=128, epochs=50, batch_size=100, lr=2e-3)
        seeds = args.seeds or 3
    depth = kw["depth"]
    profiles = {
        "none": jnp.zeros(depth),
        "constant": jnp.full(depth, args.rate, jnp.float32),
        # linspace rule (timm): 0 at the first block, 2 * rate at the last.
        "linear": jaxreg.schedules.drop_path_rates(depth, 2 * args.rate),
    }
    train = make_trainer(data, **kw)
    seed_keys = jax.random.split(jax.random.key(0), seeds)
    y_test = np.asarray(data[3])

    results, rows = {}, []
    for name, (profile, alpha) in CONFIGS.items():
        start = time.perf_counter()
        acc, probs = jax.device_get(train(seed_keys, profiles[profile], alpha))
        seconds = time.perf_counter() - start
        nll = -np.log(np.take_along_axis(probs, y_test[None, :, None], -1) + 1e-12)
        ece = [expected_calibration_error(p, y_test) for p in probs]
        results[name] = {
            "test_acc": acc.tolist(),
            "final_test_acc": acc[:, -1].tolist(),
            "test_nll": nll.mean((1, 2)).tolist(),
            "ece": ece,
            "rates": np.asarray(profiles[profile]).tolist(),
            "seconds": seconds,
        }
        rows.append(
            f"| {name} | {mean_pm(acc[:, -1])} | {mean_pm(acc.max(1))} | "
            f"{nll.mean():.3f} | {100 * np.mean(ece):.1f} | {seconds:.0f} |"
        )
        results[name]["probs"] = probs  # for the figure (not saved)
    compilations = train._cache_size()
    table = "\n".join(
        [
            "| configuration | final test acc (%) | best-epoch test acc (%) "
            "| test NLL | ECE (%) | time (s) |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    print(f"compilations of the training program: {compilations}")

    _figures(results, y_test, out, depth)
    summary = {
        "table": table,
        "compilations": compilations,
        "settings": {**kw, "seeds": seeds, "mean_rate": args.rate},
        "results": {
            k: {kk: vv for kk, vv in v.items() if kk != "probs"}
            for k, v in results.items()
        },
    }
    (out / "deep_models.json").write_text(json.dumps(summary, indent=1))
    return summary


def _reliability(probs, labels, bins=10):
    conf = probs.max(-1).ravel()
    correct = (probs.argmax(-1) == labels).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    mids, accs = [], []
    for b in range(bins):
        sel = which == b
        if sel.sum() >= 10:
            mids.append(conf[sel].mean())
            accs.append(correct[sel].mean())
    return np.array(mids), np.array(accs)


def _figures(results, y_test, out, depth):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for j, name in enumerate(["none", "drop path, constant", "drop path, linear"]):
        acc = np.asarray(results[name]["test_acc"])
        epochs = np.arange(1, acc.shape[1] + 1)
        axes[0].plot(epochs, acc.mean(0), color=f"C{j}", label=name)
        axes[0].fill_between(epochs, acc.min(0), acc.max(0), color=f"C{j}", alpha=0.2)
        axes[1].plot(
            np.arange(1, depth + 1), results[name]["rates"], "o-", color=f"C{j}"
        )
    axes[0].set(
        xlabel="epoch",
        ylabel="test accuracy",
        title="test accuracy (min-max over seeds)",
    )
    axes[1].set(
        xlabel="block", ylabel="drop-path rate", title="rate per block (scanned)"
    )
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "deep_models.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for j, name in enumerate(["none", "label smoothing 0.1"]):
        mids, accs = _reliability(results[name]["probs"], y_test[None])
        ece = 100 * np.mean(results[name]["ece"])
        ax.plot(mids, accs, "o-", color=f"C{j}", label=f"{name} (ECE {ece:.1f}%)")
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        title="reliability (test set, all seeds)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "deep_models_calibration.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
