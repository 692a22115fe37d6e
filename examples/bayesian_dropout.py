"""Learned dropout rates on MNIST-1D: concrete dropout and sparse variational dropout.

Two experiments, each a few minutes on two CPU cores:

* ``concrete``: an MLP 40-512-32-10 with a concrete-dropout layer in front of each
  dense layer (inputs of width 40, 512 and 32), trained with the concrete-dropout
  regularizer (Gal, Hron & Kendall 2017; ``weight_regularizer = l^2 / N``,
  ``dropout_regularizer = 2 / N``). It reports the drop probability each layer
  learns, per seed, and plots the rates over training.
* ``sparse_vd``: an MLP 40-300-100-10 (LeNet-300-100's shape) trained with sparse
  variational dropout on every dense layer (Molchanov, Ashukha & Vetrov 2017; KL
  weight warmed up from 0 to 1), against the same MLP trained without it. It
  reports the fraction of weights pruned (log alpha > 3) and the test accuracy of
  the pruned network versus the plain one, and plots log-alpha histograms.

Run from the repository root::

    python -m examples.bayesian_dropout                   # both experiments
    python -m examples.bayesian_dropout --experiment sparse_vd
    python -m examples.bayesian_dropout --quick --out /tmp/bayes   # smoke run

Figures go to ``--out`` (default ``docs/guide/figures``) as
``bayesian_concrete_rates.png`` and ``bayesian_sparse_vd.png``, the numbers to
``bayesian_dropout.json`` in the same folder, and a summary is printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, datasets, reporting, training


# ------------------------------------------------------------------ training loop
def fit(
    data: datasets.Data,
    *,
    init: Callable[[jax.Array], Any],
    loss: Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array],
    logits: Callable[[Any, jax.Array], jax.Array],
    record: Callable[[Any], dict[str, jax.Array]],
    epochs: int,
    seeds: int,
    lr: float = 1e-3,
    batch_size: int = 100,
) -> dict[str, np.ndarray]:
    """Train ``seeds`` models at once (vmap); one jitted call per epoch.

    ``loss(params, x, y, key, progress)`` gets ``progress`` in ``[0, 1]`` (the
    fraction of training done, for warm-ups). After every epoch ``record(params)``
    and the eval-mode test accuracy are stored. Returns arrays with a leading seed
    axis (per-epoch curves have shape ``(seeds, epochs)``) and ``params``.
    """
    opt = optax.adam(lr)
    xtr, ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    n = xtr.shape[0]
    steps = n // batch_size
    total = epochs * steps

    def init_one(key):
        k_init, k_run = jax.random.split(key)
        params = init(k_init)
        return params, opt.init(params), k_run, jnp.zeros((), jnp.int32)

    def epoch_one(state):
        params, opt_state, key, step = state
        key, k_perm = jax.random.split(key)
        idx = jax.random.permutation(k_perm, n)[: steps * batch_size]

        def body(carry, batch):
            params, opt_state, key, step = carry
            key, sub = jax.random.split(key)
            progress = step.astype(jnp.float32) / total
            value, grads = jax.value_and_grad(loss)(
                params, xtr[batch], ytr[batch], sub, progress
            )
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state, key, step + 1), value

        carry, values = jax.lax.scan(
            body, (params, opt_state, key, step), idx.reshape(steps, batch_size)
        )
        acc = jnp.mean(jnp.argmax(logits(carry[0], xte), -1) == yte)
        return carry, dict(record(carry[0]), test_acc=acc, loss=values.mean())

    state = jax.jit(jax.vmap(init_one))(training.seed_keys(seeds))
    epoch_all = jax.jit(jax.vmap(epoch_one))
    curves = []
    for _ in range(epochs):
        state, metrics = epoch_all(state)
        curves.append(jax.device_get(metrics))
    out = {k: np.stack([c[k] for c in curves], axis=1) for k in curves[0]}
    out["params"] = state[0]
    return out


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def dense_init(key, m, n):
    return jax.random.normal(key, (m, n)) * jnp.sqrt(2.0 / m), jnp.zeros((n,))


# ------------------------------------------------------------- concrete dropout
def concrete_experiment(
    data: datasets.Data,
    *,
    widths=(512, 32),
    epochs: int = 150,
    seeds: int = 3,
    length_scale: float = 1e-2,
    init_rate: float = 0.1,
    temperature: float = 0.1,
) -> dict[str, Any]:
    """Concrete dropout in front of every dense layer; returns the learned rates."""
    sizes = (data.x_train.shape[1], *widths, data.num_classes)
    n = data.x_train.shape[0]
    wr = length_scale**2 / n  # weight_regularizer = l^2 / (tau N), tau = 1
    dr = 2.0 / n  # dropout_regularizer = 2 / (tau N)
    logit0 = float(np.log(init_rate) - np.log1p(-init_rate))

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for k, m, o in zip(keys, sizes[:-1], sizes[1:], strict=True):
            w, b = dense_init(k, m, o)
            layers.append({"w": w, "b": b, "logit_p": jnp.asarray(logit0)})
        return layers

    def forward(params, x, key):
        keys = jax.random.split(key, len(params)) if key is not None else None
        h = x
        for i, layer in enumerate(params):
            h = jaxreg.concrete_dropout(
                None if keys is None else keys[i],
                h,
                layer["logit_p"],
                temperature=temperature,
                deterministic=keys is None,
            )
            h = h @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return h

    def loss(params, x, y, key, progress):
        reg = sum(
            jaxreg.concrete_dropout_regularizer(
                {"w": p["w"], "b": p["b"]},
                p["logit_p"],
                input_dim=int(p["w"].shape[0]),
                weight_regularizer=wr,
                dropout_regularizer=dr,
            )
            for p in params
        )
        return cross_entropy(forward(params, x, key), y) + reg

    def record(params):
        return {"rates": jnp.stack([jax.nn.sigmoid(p["logit_p"]) for p in params])}

    start = time.perf_counter()
    out = fit(
        data,
        init=init,
        loss=loss,
        logits=lambda p, x: forward(p, x, None),
        record=record,
        epochs=epochs,
        seeds=seeds,
    )
    rates = out["rates"]  # (seeds, epochs, layers)
    return {
        "layer_inputs": list(sizes[:-1]),
        "final_rates": rates[:, -1].tolist(),
        "rate_curves": rates,
        "test_acc": out["test_acc"][:, -1].tolist(),
        "weight_regularizer": wr,
        "dropout_regularizer": dr,
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------- sparse variational dropout
def sparse_vd_experiment(
    data: datasets.Data,
    *,
    widths=(300, 100),
    epochs: int = 200,
    seeds: int = 3,
    warmup: float = 0.5,
    log_sigma2_init: float = -10.0,
    threshold: float = 3.0,
) -> dict[str, Any]:
    """Sparse VD MLP versus the same MLP without it; sparsity and accuracies."""
    sizes = (data.x_train.shape[1], *widths, data.num_classes)
    n = data.x_train.shape[0]

    def init_plain(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [
            dict(zip(("w", "b"), dense_init(k, m, o), strict=True))
            for k, m, o in zip(keys, sizes[:-1], sizes[1:], strict=True)
        ]

    def init_vd(key):
        layers = init_plain(key)
        for layer in layers:
            layer["log_sigma2"] = jnp.full(layer["w"].shape, log_sigma2_init)
        return layers

    def plain_logits(params, x):
        h = x
        for i, p in enumerate(params):
            h = h @ p["w"] + p["b"]
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return h

    def vd_logits(params, x, key=None):
        keys = jax.random.split(key, len(params)) if key is not None else None
        h = x
        for i, p in enumerate(params):
            h = jaxreg.sparse_vd_dense(
                None if keys is None else keys[i],
                h,
                p["w"],
                p["log_sigma2"],
                bias=p["b"],
                threshold=threshold,
                deterministic=keys is None,
            )
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return h

    def log_alphas(params):
        return [jaxreg.sparse_vd_log_alpha(p["w"], p["log_sigma2"]) for p in params]

    def vd_loss(params, x, y, key, progress):
        beta = jnp.minimum(progress / warmup, 1.0) if warmup > 0 else 1.0
        kl = jaxreg.sparse_vd_kl(log_alphas(params))
        return cross_entropy(vd_logits(params, x, key), y) + beta * kl / n

    def vd_record(params):
        las = log_alphas(params)
        per_layer = jnp.stack(
            [jaxreg.sparse_vd_pruned_fraction(la, threshold=threshold) for la in las]
        )
        total = jaxreg.sparse_vd_pruned_fraction(las, threshold=threshold)
        return {"pruned": total, "pruned_per_layer": per_layer}

    start = time.perf_counter()
    plain = fit(
        data,
        init=init_plain,
        loss=lambda p, x, y, k, t: cross_entropy(plain_logits(p, x), y),
        logits=plain_logits,
        record=lambda p: {},
        epochs=epochs,
        seeds=seeds,
    )
    t_plain = time.perf_counter() - start
    vd = fit(
        data,
        init=init_vd,
        loss=vd_loss,
        logits=vd_logits,
        record=vd_record,
        epochs=epochs,
        seeds=seeds,
    )
    t_vd = time.perf_counter() - start - t_plain
    las = jax.vmap(log_alphas)(vd["params"])
    pruned = vd["pruned"][:, -1]
    acc_vd = vd["test_acc"][:, -1]
    acc_plain = plain["test_acc"][:, -1]
    return {
        "sizes": list(sizes),
        "num_weights": int(
            sum(m * o for m, o in zip(sizes[:-1], sizes[1:], strict=True))
        ),
        "pruned_fraction": pruned.tolist(),
        "pruned_per_layer": vd["pruned_per_layer"][:, -1].tolist(),
        "test_acc_sparse_vd": acc_vd.tolist(),
        "test_acc_plain": acc_plain.tolist(),
        "accuracy_drop_points": float(100 * (acc_plain.mean() - acc_vd.mean())),
        "curves": {
            "plain_test_acc": plain["test_acc"],
            "vd_test_acc": vd["test_acc"],
            "pruned": vd["pruned"],
        },
        "log_alpha_seed0": [np.asarray(la[0]).ravel() for la in las],
        "threshold": threshold,
        "epochs": epochs,
        "seconds": {"plain": t_plain, "sparse_vd": t_vd},
    }


# ------------------------------------------------------------------------ figures
def plot_concrete(res: dict[str, Any], path) -> None:
    plt = reporting.pyplot()
    curves = res["rate_curves"]  # (seeds, epochs, layers)
    epochs = np.arange(1, curves.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for j, width in enumerate(res["layer_inputs"]):
        c = curves[:, :, j]
        ax.plot(epochs, c.mean(0), color=f"C{j}", label=f"input width {width}")
        ax.fill_between(epochs, c.min(0), c.max(0), color=f"C{j}", alpha=0.25)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learned drop probability p")
    ax.set_title("Concrete dropout on MNIST-1D (MLP 40-512-32-10)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    reporting.savefig(fig, path)


def plot_sparse_vd(res: dict[str, Any], path) -> None:
    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    ax = axes[0]
    sizes = res["sizes"]
    for j, la in enumerate(res["log_alpha_seed0"]):
        ax.hist(
            np.clip(la, -10, 15),
            bins=80,
            histtype="step",
            color=f"C{j}",
            label=f"layer {sizes[j]}x{sizes[j + 1]}",
        )
    ax.axvline(res["threshold"], color="k", ls="--", lw=1, label="threshold 3")
    ax.set_yscale("log")
    ax.set_xlabel("log alpha (clipped to [-10, 15] for display)")
    ax.set_ylabel("weights")
    ax.set_title("Per-weight log alpha after training (seed 0)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    c = res["curves"]
    epochs = np.arange(1, c["pruned"].shape[1] + 1)
    for name, curve, color in (
        ("plain MLP: test acc", c["plain_test_acc"], "C0"),
        ("sparse VD (pruned): test acc", c["vd_test_acc"], "C1"),
        ("sparse VD: fraction pruned", c["pruned"], "C2"),
    ):
        ax.plot(epochs, curve.mean(0), color=color, label=name)
        ax.fill_between(epochs, curve.min(0), curve.max(0), color=color, alpha=0.25)
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("MLP 40-300-100-10 on MNIST-1D", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    reporting.savefig(fig, path)


# ------------------------------------------------------------------------- driver
def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def main(argv=None) -> dict[str, Any]:
    parser = cli.parser(__doc__, epochs=None)
    parser.add_argument(
        "--experiment", choices=("concrete", "sparse_vd", "all"), default="all"
    )
    parser.set_defaults(seeds=None)  # 2 with --quick, else 3
    args = parser.parse_args(argv)

    out = reporting.output_dir(args.out)
    if args.quick:
        data = datasets.load_mnist1d(args.cache, num_samples=600)
        seeds = args.seeds or 2
        concrete_kw = dict(widths=(64, 8), epochs=args.epochs or 3)
        vd_kw = dict(widths=(32, 16), epochs=args.epochs or 4)
    else:
        data = datasets.load_mnist1d(args.cache)
        seeds = args.seeds or 3
        concrete_kw = dict(epochs=args.epochs or 150)
        vd_kw = dict(epochs=args.epochs or 200)

    results: dict[str, Any] = {}
    if args.experiment in ("concrete", "all"):
        res = concrete_experiment(data, seeds=seeds, **concrete_kw)
        plot_concrete(res, out / "bayesian_concrete_rates.png")
        rates = np.asarray(res["final_rates"])
        print("concrete dropout: learned drop probability per layer (mean ± std)")
        for j, width in enumerate(res["layer_inputs"]):
            print(
                f"  input width {width:4d}: p = {rates[:, j].mean():.3f} ± "
                f"{rates[:, j].std(ddof=1) if seeds > 1 else 0.0:.3f}"
            )
        print(
            f"  test accuracy {reporting.mean_spread(res['test_acc'])} %, "
            f"{res['seconds']:.0f} s"
        )
        results["concrete"] = {k: v for k, v in res.items() if k != "rate_curves"}
    if args.experiment in ("sparse_vd", "all"):
        res = sparse_vd_experiment(data, seeds=seeds, **vd_kw)
        plot_sparse_vd(res, out / "bayesian_sparse_vd.png")
        print(
            f"sparse variational dropout (MLP {res['sizes']}, {res['epochs']} epochs)"
        )
        print(
            f"  weights pruned (log alpha > 3): "
            f"{reporting.mean_spread(res['pruned_fraction'])} % of {res['num_weights']}"
        )
        print(
            f"  test accuracy: plain {reporting.mean_spread(res['test_acc_plain'])} %, "
            f"sparse VD (pruned) {reporting.mean_spread(res['test_acc_sparse_vd'])} %, "
            f"drop {res['accuracy_drop_points']:.1f} points"
        )
        print(f"  per layer pruned: {np.mean(res['pruned_per_layer'], 0).round(3)}")
        results["sparse_vd"] = {
            k: v for k, v in res.items() if k not in ("curves", "log_alpha_seed0")
        }
    (out / "bayesian_dropout.json").write_text(json.dumps(_jsonable(results), indent=1))
    return results


if __name__ == "__main__":
    main()
