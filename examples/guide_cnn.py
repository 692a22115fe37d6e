"""Guide, page 6c: dropout in a convolutional net. Element vs spatial vs DropBlock.

A 1-D CNN on MNIST-1D (inputs ``(B, 40, 1)``, channels-last): three convolutions
with kernel 5 and 16 channels (strides 1, 2, 2, ``SAME`` padding, ReLU), then a
dense layer on the flattened ``(10, 16)`` map. A regularizer follows each
convolution's ReLU:

* ``dropout``: :func:`jaxreg.dropout`, one decision per element;
* ``spatial``: :func:`jaxreg.spatial_dropout`, one decision per (example, channel),
  shared along the length;
* ``dropblock``: :func:`jaxreg.dropblock` with ``block_size=5``. DropBlock is
  written for 2-D NHWC maps, so the ``(B, L, C)`` map is viewed as ``(B, 1, L, C)``.
  With height 1 a ``5 x 5`` block is clipped to one row: every position is covered
  by the 25 seeds of its ``5 x 5`` window (the seed grid is padded by 4 on both
  axes), the seed rate is solved for those 25 seeds, so each position is still
  dropped with probability exactly ``rate``, and what gets dropped are contiguous
  runs of length 5 along the sequence: a 1-D DropBlock. (``block_size=1`` would be
  plain element dropout.)

Each at rate 0.2 (``--rates`` for more), three seeds (vmapped), Adam 1e-3, batch
100, 20 epochs. Writes
``cnn.png`` and ``cnn.json`` to ``--out``. Run ``python -m examples.guide_cnn``
(4 configurations x 20 epochs x 3 seeds) or ``--quick`` (a smoke test).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jaxreg
from examples.helpers import cli, reporting, training

STRIDES = (1, 2, 2)
KERNEL = 5


def init_cnn(seed: int, channels: int = 16, length: int = 40, classes: int = 10):
    """He-normal CNN parameters (host-side numpy draw)."""
    rng = np.random.default_rng([int(seed), 0])
    convs, c_in = [], 1
    for _ in STRIDES:
        fan_in = KERNEL * c_in
        w = rng.standard_normal((KERNEL, c_in, channels)) * np.sqrt(2.0 / fan_in)
        convs.append(
            {"w": jnp.asarray(w, np.float32), "b": jnp.zeros((channels,), np.float32)}
        )
        c_in = channels
    for s in STRIDES:
        length = -(-length // s)
    flat = length * channels
    dense = {
        "w": jnp.asarray(
            rng.standard_normal((flat, classes)) * np.sqrt(1.0 / flat), np.float32
        ),
        "b": jnp.zeros((classes,), np.float32),
    }
    return {"convs": convs, "dense": dense}


def regularize(key, h, *, method: str, rate: float, block_size: int = 5):
    """Apply one of the three dropouts to a ``(B, L, C)`` feature map."""
    if method == "dropout":
        return jaxreg.dropout(key, h, rate)
    if method == "spatial":
        return jaxreg.spatial_dropout(key, h, rate, channel_axis=-1)
    if method == "dropblock":
        # NHWC with H = 1: a 1-D DropBlock along the length (see the docstring).
        return jaxreg.dropblock(key, h[:, None], rate, block_size=block_size)[:, 0]
    raise ValueError(f"unknown method {method!r}")


def cnn_apply(params, x, key=None, *, method: str = "none", rate: float = 0.0):
    """Logits for inputs ``x`` ``(B, L)``; ``key=None`` is inference mode."""
    h = x[:, :, None]
    keys = jax.random.split(key, len(STRIDES)) if key is not None else None
    for i, (layer, stride) in enumerate(zip(params["convs"], STRIDES, strict=True)):
        h = lax.conv_general_dilated(
            h, layer["w"], (stride,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
        )
        h = jax.nn.relu(h + layer["b"])
        if keys is not None and method != "none":
            h = regularize(keys[i], h, method=method, rate=rate)
    h = h.reshape(h.shape[0], -1)
    return h @ params["dense"]["w"] + params["dense"]["b"]


def main(argv=None) -> dict:
    ap = cli.parser(__doc__, cache=cli.TEMP_CACHE, epochs=20, train_size=True)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.2])
    ap.add_argument("--methods", nargs="+", default=["dropout", "spatial", "dropblock"])
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.rates = 1, 1, [0.3]
    out = reporting.output_dir(args.out)
    data, tag = cli.mnist1d_for(args)
    opt = optax.adam(1e-3)
    configs = [("none", 0.0)] + [(m, r) for r in args.rates for m in args.methods]
    if args.quick:
        configs = [(m, args.rates[0]) for m in args.methods]

    histories = []
    for method, rate in configs:
        name = "none" if method == "none" else f"{method} {rate:g}"
        kw = {"method": method, "rate": rate}
        hist = training.train(
            name,
            data,
            sizes=(),
            optimizer=opt,
            init=lambda s: init_cnn(s, args.channels),
            train_logits=lambda p, x, k, kw=kw: cnn_apply(p, x, k, **kw),
            eval_logits=lambda p, x: cnn_apply(p, x),
            seeds=args.seeds,
            epochs=args.epochs,
            progress=not args.quick,
        )
        hist.extra.update(method=method, rate=rate)
        histories.append(hist)
        hist.report(name)

    rows = [reporting.summarize(h, best=True) for h in histories]
    table = reporting.markdown_table(rows)
    print(table)

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    steps_per_epoch = len(data.y_train) // 100  # training.train's batch size
    colors = {"none": "k", "dropout": "C0", "spatial": "C1", "dropblock": "C2"}
    for h in histories:
        method, rate = h.extra["method"], h.extra["rate"]
        ls = "-" if rate == max(args.rates) or method == "none" else "--"
        x = np.arange(1, h.test_acc.shape[1] + 1) * steps_per_epoch
        axes[0].plot(x, h.test_acc.mean(0), color=colors[method], ls=ls, label=h.name)
    axes[0].set_title("test accuracy, mean over seeds", fontsize=9)
    axes[0].set_xlabel("optimizer steps")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    names = [h.name for h in histories]
    te = np.array([h.final["test_acc"].mean() for h in histories]) * 100
    te_sd = (
        np.array(
            [h.final["test_acc"].std(ddof=min(1, args.seeds - 1)) for h in histories]
        )
        * 100
    )
    tr = np.array([h.final["train_acc"].mean() for h in histories]) * 100
    pos = np.arange(len(histories))
    axes[1].bar(pos - 0.2, tr, 0.4, label="train", color="C1", alpha=0.6)
    axes[1].bar(pos + 0.2, te, 0.4, yerr=te_sd, label="test", color="C0")
    axes[1].set_xticks(pos, names, rotation=30, ha="right", fontsize=8)
    axes[1].set_ylim(min(te.min(), tr.min()) - 5, 100.5)
    axes[1].set_ylabel("final accuracy (%)")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3, axis="y")
    summary = {
        "table": table,
        "results": {h.name: h.to_json("test_acc", "train_acc") for h in histories},
    }
    title = (
        f"1-D CNN on MNIST-1D ({len(data.y_train)} training examples), "
        f"{args.epochs} epochs, {args.seeds} seeds"
    )
    path = reporting.save_figure(fig, out, f"cnn{tag}", title, summary=summary)
    print(f"figure: {path}")
    return summary


if __name__ == "__main__":
    main()
