"""Guide 1: what happens at test time under classic vs inverted dropout.

Two measurements on MNIST-1D:

1. Expected pre-activations. For one trained network and 200 test inputs, the
   pre-activations of the second hidden layer, ``z = drop(h1) @ W2 + b2``, are
   averaged over many sampled dropout masks (train mode) and compared with the
   deterministic inference pre-activations of the same scheme:
   inverted (``x * m / p`` at training, ``x`` at inference) and classic
   (``x * m`` at training, ``x * p`` at inference). The z-score of every
   difference (difference / Monte-Carlo standard error) is reported.
2. Accuracy. MLPs are trained with inverted and with classic dropout (same
   seeds, so the same masks), each evaluated with its own inference rule, plus the
   two classic mistakes: a classic-trained net evaluated without the ``p``
   scaling, and an inverted-trained net evaluated with it.

Run ``python -m examples.guide_inference`` (``--quick`` for a smoke run); the
figure is written to ``--out`` (default ``docs/guide/figures``).
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


def forward(params, x, key, *, inverted, deterministic):
    """MLP with dropout (classic or inverted) after every hidden layer."""

    def hidden(k, h, i):
        return jaxreg.dropout(
            k, h, RATE, inverted=inverted, deterministic=deterministic
        )

    return models.mlp_apply(params, x, key=key, hidden=hidden)


def preactivation_check(params, x, *, inverted, num_masks, key):
    """Monte-Carlo mean of z = drop(h1) @ W2 + b2 against the inference value."""
    h1 = jax.nn.relu(x @ params[0]["w"] + params[0]["b"])
    w2, b2 = params[1]["w"], params[1]["b"]
    z_eval = (
        jaxreg.dropout(None, h1, RATE, inverted=inverted, deterministic=True) @ w2 + b2
    )

    def body(carry, k):
        s, s2 = carry
        z = jaxreg.dropout(k, h1, RATE, inverted=inverted) @ w2 + b2
        return (s + z, s2 + z * z), None

    zeros = jnp.zeros_like(z_eval)
    keys = jax.random.split(key, num_masks)
    (s, s2), _ = jax.lax.scan(body, (zeros, zeros), keys)
    mean = s / num_masks
    var = s2 / num_masks - mean**2
    se = jnp.sqrt(var * num_masks / (num_masks - 1) / num_masks)
    zscore = (mean - z_eval) / jnp.maximum(se, 1e-12)
    return np.asarray(z_eval), np.asarray(mean), np.asarray(zscore)


def main(argv=None):
    ap = cli.parser(__doc__, epochs=60)
    ap.add_argument("--masks", type=int, default=4000)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.masks = 2, 2, 200
    out = reporting.output_dir(args.out)
    t0 = time.perf_counter()
    data = datasets.load_mnist1d(args.cache)
    sizes = (40, 256, 256, 10)
    print(f"MNIST-1D: {len(data.y_train)} train / {len(data.y_test)} test; MLP {sizes}")
    print(f"dropout rate {RATE} after each hidden layer, seeds 0..{args.seeds - 1}")

    # A classic network with weights W computes exactly what an inverted one
    # with weights p * W computes, in train and in eval mode (for the weights
    # that read dropped activations; biases unchanged). Training with the same
    # Adam learning rate is therefore NOT the same run: Adam's step is invariant
    # to the gradient's scale, so the classic net moves its equivalent weights
    # p times slower. The "classic, matched" run undoes that: initial weights
    # W / p and learning rate lr / p on the layers after a dropout, and Adam's
    # eps times p on those weights (their classic gradients, hence sqrt(v), are
    # p times smaller; the other parameters keep the same Adam).
    # With p = 0.5 every rescaling is by a power of two, so the two runs are
    # the same computation up to exponent shifts.
    p_keep = jaxreg.keep_probability(RATE)
    lr = 3e-3

    def after_dropout(params):
        return [{"w": i > 0, "b": False} for i in range(len(params))]

    def init_matched(seed):
        params = models.init_mlp(seed, sizes)
        return [
            {"w": q["w"] / p_keep if i > 0 else q["w"], "b": q["b"]}
            for i, q in enumerate(params)
        ]

    variants = {
        "inverted": (True, optax.adam(lr), None),
        "classic": (False, optax.adam(lr), None),
        "classic, matched": (
            False,
            optax.multi_transform(
                {
                    "after dropout": optax.chain(
                        optax.adam(lr, eps=1e-8 * p_keep), optax.scale(1 / p_keep)
                    ),
                    "other": optax.adam(lr),
                },
                lambda params: [
                    {k: "after dropout" if v else "other" for k, v in d.items()}
                    for d in after_dropout(params)
                ],
            ),
            init_matched,
        ),
    }
    hist = {}
    for name, (inverted, opt, init) in variants.items():
        hist[name] = training.train(
            name,
            data,
            sizes=sizes,
            optimizer=opt,
            init=init,
            train_logits=lambda p, x, k, inv=inverted: forward(
                p, x, k, inverted=inv, deterministic=False
            ),
            eval_logits=lambda p, x, inv=inverted: forward(
                p, x, None, inverted=inv, deterministic=True
            ),
            seeds=args.seeds,
            epochs=args.epochs,
        )

    # Accuracy under matching and mismatched inference rules.
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def acc(params, inverted_rule):
        f = jax.vmap(
            lambda p: models.accuracy(
                forward(p, xte, None, inverted=inverted_rule, deterministic=True), yte
            )
        )
        return np.asarray(f(params))

    rows = [
        ("inverted train, inverted inference (x)", acc(hist["inverted"].params, True)),
        ("classic train, classic inference (x*p)", acc(hist["classic"].params, False)),
        (
            "classic matched (W/p, lr/p), classic inference",
            acc(hist["classic, matched"].params, False),
        ),
        ("classic train, no test scaling (mistake)", acc(hist["classic"].params, True)),
        ("inverted train, extra x*p (mistake)", acc(hist["inverted"].params, False)),
    ]
    print("\nTest accuracy (%), mean ± std over seeds:")
    for label, a in rows:
        print(
            f"  {label:48s} {reporting.mean_spread(a)}   per seed {np.round(a * 100, 1)}"
        )
    # The matched classic run is the inverted run reparametrized: same logits.
    diff = 0.0
    for s in range(args.seeds):
        pi = jax.tree.map(lambda a, s=s: a[s], hist["inverted"].params)
        pc = jax.tree.map(lambda a, s=s: a[s], hist["classic, matched"].params)
        li = forward(pi, xte, None, inverted=True, deterministic=True)
        lc = forward(pc, xte, None, inverted=False, deterministic=True)
        diff = max(diff, float(jnp.abs(li - lc).max() / jnp.abs(li).max()))
    print(
        "  max |logit difference| / max |logit|, inverted vs matched classic "
        f"(eval mode, all seeds): {diff:.2e}"
    )

    # Expected pre-activations: Monte-Carlo over masks vs the inference value.
    x = xte[:200]
    checks = {}
    print(
        f"\nE[train-mode z] vs inference z over {args.masks} masks, 200 x 256 values:"
    )
    for k, name in enumerate(("inverted", "classic")):
        p0 = jax.tree.map(lambda a: a[0], hist[name].params)
        checks[name] = preactivation_check(
            p0,
            x,
            inverted=name == "inverted",
            num_masks=args.masks,
            key=jax.random.key(100 + k),
        )
        z_eval, mean, zs = checks[name]
        rel = np.abs(mean - z_eval).max() / np.abs(z_eval).max()
        print(
            f"  {name:8s}: max |z-score| {np.abs(zs).max():.2f}, mean z-score "
            f"{zs.mean():+.3f}, std {zs.std():.3f} (N(0,1) expected), "
            f"max |diff| / max |z| = {rel:.2e}"
        )

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, name in zip(axes[:2], ("inverted", "classic"), strict=True):
        z_eval, mean, _ = checks[name]
        idx = np.random.default_rng(0).choice(z_eval.size, 3000, replace=False)
        ax.scatter(z_eval.ravel()[idx], mean.ravel()[idx], s=2, alpha=0.4)
        lo, hi = float(z_eval.min()), float(z_eval.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        ax.set_xlabel("inference pre-activation (deterministic=True)")
        ax.set_ylabel(f"mean of train-mode pre-activation\n({args.masks} masks)")
        ax.set_title(f"{name} dropout, rate {RATE}")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[2]
    labels = [
        "inverted\n(x)",
        "classic\n(x*p)",
        "classic,\nmatched",
        "classic,\nno x*p",
        "inverted,\nextra x*p",
    ]
    means = [a.mean() * 100 for _, a in rows]
    ax.bar(range(5), means, color=["C0", "C1", "C2", "C3", "C3"], alpha=0.8)
    for i, (_, a) in enumerate(rows):
        ax.scatter(np.full(a.size, i), a * 100, color="k", s=8, zorder=3)
        ax.text(i, means[i] + 0.5, f"{means[i]:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(5), labels, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(min(means) - 10, max(means) + 5)
    ax.set_title("accuracy by inference rule (dots: seeds)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = reporting.savefig(fig, out / "inference_classic_vs_inverted.png")
    print(f"\nfigure: {path}   ({time.perf_counter() - t0:.0f}s)")
    return rows, checks, diff


if __name__ == "__main__":
    main()
