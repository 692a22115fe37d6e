"""Guide, page 6b: dropout in a recurrent net. Per-step vs locked dropout vs zoneout.

A GRU (hidden size 32, written in plain JAX with ``lax.scan``) reads each MNIST-1D
example as a sequence of 40 steps of one feature and classifies it from its last
hidden state (Adam 3e-3, gradient clipping at global norm 1, batch 100). Variants,
all at rate 0.25:

* ``none``: no regularization;
* ``per-step (recurrent input)``: dropout on ``h[t-1]`` where it enters the
  recurrent matrix ``U`` of the gates, a fresh mask at every step (the naive way);
* ``locked (recurrent input)``: the same place, one mask per sequence shared by all
  steps (variational RNN dropout, Gal & Ghahramani 2016): jaxreg gives the same
  mask for the same key, so the cell simply reuses the key at every step;
* ``per-step (state)``: dropout on the carried state ``h[t]`` itself, fresh masks
  (the placement that wipes memory);
* ``zoneout``: each unit keeps its previous value with probability 0.25
  (:func:`jaxreg.zoneout`, Krueger et al. 2017).

Three seeds each (vmapped). Writes ``rnn.png`` and ``rnn.json`` to ``--out``.
Run ``python -m examples.guide_rnn`` (about 280 s of CPU time, measured; the wall
time depends on how busy the machine is) or ``--quick`` (a smoke test).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from examples.helpers import cli, reporting, training

VARIANTS = (
    "none",
    "per-step (recurrent input)",
    "locked (recurrent input)",
    "per-step (state)",
    "zoneout",
)


def init_gru(seed: int, hidden: int, num_classes: int = 10) -> dict:
    """GRU parameters (host-side numpy draw): gates ordered (update, reset, new)."""
    rng = np.random.default_rng([int(seed), 0])
    u = rng.standard_normal((hidden, 3 * hidden)) / np.sqrt(hidden)
    f4 = np.float32
    return {
        "w": jnp.asarray(rng.standard_normal((1, 3 * hidden)), f4),
        "u": jnp.asarray(u, f4),
        "b": jnp.zeros((3 * hidden,), f4),
        "out_w": jnp.asarray(
            rng.standard_normal((hidden, num_classes)) / np.sqrt(hidden), f4
        ),
        "out_b": jnp.zeros((num_classes,), f4),
    }


def gru_apply(params, x, key, *, variant: str, rate: float, train: bool):
    """Run the GRU over ``x`` ``(B, T)`` and return logits ``(B, classes)``."""
    hidden = params["u"].shape[0]
    stochastic = train and variant != "none"

    def cell(h, inputs):
        x_t, t = inputs
        k_t = jax.random.fold_in(key, t) if stochastic else None
        h_rec = h
        if stochastic and variant == "per-step (recurrent input)":
            h_rec = jaxreg.dropout(k_t, h, rate)
        elif stochastic and variant == "locked (recurrent input)":
            h_rec = jaxreg.dropout(key, h, rate)  # same key, same mask: every step
        gx = x_t[:, None] * params["w"] + params["b"]
        gh = h_rec @ params["u"]
        z = jax.nn.sigmoid(gx[:, :hidden] + gh[:, :hidden])
        r = jax.nn.sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
        n = jnp.tanh(gx[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
        h_new = (1.0 - z) * n + z * h
        if variant == "zoneout":
            h_new = jaxreg.zoneout(k_t, h, h_new, rate, deterministic=not train)
        elif stochastic and variant == "per-step (state)":
            h_new = jaxreg.dropout(k_t, h_new, rate)
        return h_new, None

    h0 = jnp.zeros((x.shape[0], hidden), x.dtype)
    steps = jnp.arange(x.shape[1])
    h, _ = jax.lax.scan(cell, h0, (x.T, steps))
    return h @ params["out_w"] + params["out_b"]


def main(argv=None) -> dict:
    ap = cli.parser(__doc__, cache=cli.TEMP_CACHE, epochs=30, train_size=True)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--rate", type=float, default=0.25)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.hidden = 1, 1, 4
        args.variants = ["locked (recurrent input)", "zoneout"]
    out = reporting.output_dir(args.out)
    data, tag = cli.mnist1d_for(args)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))

    histories = []
    for variant in args.variants:
        kw = {"variant": variant, "rate": args.rate}
        hist = training.train(
            variant,
            data,
            sizes=(),
            optimizer=opt,
            init=lambda s: init_gru(s, args.hidden),
            train_logits=lambda p, x, k, kw=kw: gru_apply(p, x, k, train=True, **kw),
            eval_logits=lambda p, x, kw=kw: gru_apply(p, x, None, train=False, **kw),
            seeds=args.seeds,
            epochs=args.epochs,
            progress=not args.quick,
        )
        histories.append(hist)
        hist.report(variant)

    rows = [reporting.summarize(h, best=True) for h in histories]
    table = reporting.markdown_table(rows)
    print(table)

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    steps_per_epoch = len(data.y_train) // 100
    for i, h in enumerate(histories):
        x = np.arange(1, h.test_acc.shape[1] + 1) * steps_per_epoch
        for ax, c in zip(axes, (h.test_acc, h.train_loss), strict=True):
            ax.plot(x, c.mean(0), color=f"C{i}", label=h.name, lw=1.3)
            ax.fill_between(x, c.min(0), c.max(0), color=f"C{i}", alpha=0.2)
    axes[0].set_title("test accuracy (eval mode)", fontsize=9)
    axes[1].set_title("training loss (train mode, epoch mean)", fontsize=9)
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("optimizer steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    summary = {
        "table": table,
        "results": {
            h.name: h.to_json("test_acc", "train_acc", "train_loss") for h in histories
        },
    }
    title = (
        f"GRU (hidden {args.hidden}) on MNIST-1D ({len(data.y_train)} training "
        f"examples) as 40 steps x 1 feature, rate "
        f"{args.rate:g}, {args.seeds} seeds (band: min-max)"
    )
    path = reporting.save_figure(fig, out, f"rnn{tag}", title, summary=summary)
    print(f"figure: {path}")
    return summary


if __name__ == "__main__":
    main()
