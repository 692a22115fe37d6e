"""Character-level transformer LM on the Python standard library, with and without dropout.

A small decoder-only transformer (flax.linen, pre-norm blocks, causal
self-attention) learns to predict the next character of Python source code read
from the interpreter's own standard library (``sysconfig.get_paths()["stdlib"]``,
so the data ships with every Python and the script runs offline). Two
configurations are trained for 3 seeds each:

* no dropout;
* dropout 0.1 on the attention probabilities
  (``attention_fn=jaxreg.attention.dot_product_attention``, per-element masks)
  and on both residual branches (``jaxreg.linen.Dropout``).

The training set is small (150K characters of the first files) so that the
model overfits; validation uses the characters of later files. The script
prints the validation-loss table and writes ``transformer_lm.png`` (validation
loss during training, mean over seeds and min..max band) and
``transformer_lm.json`` to ``--out``::

    python -m examples.transformer_lm                 # about 5 to 10 min on 2 CPU cores
    python -m examples.transformer_lm --quick --out /tmp/lm
"""

from __future__ import annotations

import json
import pathlib
import sysconfig
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
import jaxreg.linen
from examples.helpers import cli, reporting

VOCAB = 128  # ASCII; other characters are mapped to 0


def load_text(num_train: int, num_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation characters (uint8 codes) from the stdlib's sources.

    The top-level ``*.py`` files, sorted by name, are concatenated; the first
    ``num_train`` characters train, the ``num_val`` characters that follow a
    gap of one file validate (so no file is in both).
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks = [
        path.read_text(encoding="utf-8", errors="replace")
        for path in sorted(root.glob("*.py"))
    ]
    codes = [np.frombuffer(c.encode("ascii", "replace"), np.uint8) for c in chunks]
    codes = [np.where(c < VOCAB, c, 0).astype(np.int32) for c in codes]
    train, i = [], 0
    while i < len(codes) and sum(map(len, train)) < num_train:
        train.append(codes[i])
        i += 1
    val = np.concatenate([np.zeros(0, np.int32)] + codes[i + 1 :])[:num_val]
    train = np.concatenate(train)[:num_train]
    if len(train) < num_train or len(val) < num_val:
        raise ValueError(f"the standard library has too little text in {root}")
    return train, val


class Block(nn.Module):
    width: int
    heads: int
    rate: float

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.heads,
            dropout_rate=self.rate,
            broadcast_dropout=False,
            attention_fn=jaxreg.attention.dot_product_attention,
        )(nn.LayerNorm()(x), mask=mask, deterministic=deterministic)
        x = x + jaxreg.linen.Dropout(self.rate)(h, deterministic=deterministic)
        h = nn.Dense(4 * self.width)(nn.LayerNorm()(x))
        h = nn.Dense(self.width)(nn.gelu(h))
        return x + jaxreg.linen.Dropout(self.rate)(h, deterministic=deterministic)


class TransformerLM(nn.Module):
    """Decoder-only character model: logits of the next character."""

    width: int
    heads: int
    layers: int
    context: int
    rate: float

    @nn.compact
    def __call__(self, tokens, deterministic: bool = True):
        pos = self.param(
            "pos", nn.initializers.normal(0.02), (self.context, self.width)
        )
        x = nn.Embed(VOCAB, self.width)(tokens) + pos[: tokens.shape[-1]]
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.layers):
            x = Block(self.width, self.heads, self.rate)(x, mask, deterministic)
        return nn.Dense(VOCAB)(nn.LayerNorm()(x))


def windows(data: jax.Array, starts: jax.Array, context: int):
    """Inputs and next-character targets of the windows starting at ``starts``."""
    idx = starts[:, None] + jnp.arange(context + 1)
    seq = data[idx]
    return seq[:, :-1], seq[:, 1:]


def make_runner(cfg: dict, train: np.ndarray, val: np.ndarray, rate: float):
    """``(init, chunk, evaluate)``, vmapped over seeds and jitted."""
    model = TransformerLM(
        cfg["width"], cfg["heads"], cfg["layers"], cfg["context"], rate
    )
    opt = optax.adamw(cfg["lr"], weight_decay=0.0)
    train, val = jnp.asarray(train), jnp.asarray(val)
    ctx = cfg["context"]
    val_starts = jnp.linspace(0, len(val) - ctx - 1, cfg["val_windows"]).astype(int)
    val_x, val_y = windows(val, val_starts, ctx)

    def loss_fn(params, x, y, key):
        logits = model.apply(
            params, x, deterministic=rate == 0.0, rngs={"dropout": key}
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def init(seed_key):
        params = model.init(jaxreg.derive_key(seed_key, "init"), val_x[:1])
        return params, opt.init(params)

    def chunk(state, seed_key, step0):
        def step(carry, t):
            params, opt_state = carry
            key = jaxreg.derive_key(seed_key, "step", t)
            starts = jax.random.randint(
                jaxreg.derive_key(key, "batch"),
                (cfg["batch"],),
                0,
                len(train) - ctx - 1,
            )
            x, y = windows(train, starts, ctx)
            loss, grads = jax.value_and_grad(loss_fn)(
                params, x, y, jaxreg.derive_key(key, "dropout")
            )
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        steps = step0 + jnp.arange(cfg["eval_every"])
        state, losses = jax.lax.scan(step, state, steps)
        return state, losses.mean()

    def evaluate(params):
        logits = model.apply(params, val_x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, val_y).mean()

    return (
        jax.jit(jax.vmap(init)),
        jax.jit(jax.vmap(chunk, in_axes=(0, 0, None))),
        jax.jit(jax.vmap(lambda state: evaluate(state[0]))),
    )


DEFAULT = dict(
    train_chars=150_000,
    val_chars=50_000,
    width=96,
    heads=4,
    layers=2,
    context=64,
    batch=32,
    steps=500,
    eval_every=50,
    val_windows=256,
    lr=2e-3,
    rate=0.1,
)
QUICK = dict(
    DEFAULT,
    train_chars=20_000,
    val_chars=5_000,
    width=32,
    layers=1,
    context=16,
    batch=8,
    steps=20,
    eval_every=10,
    val_windows=16,
)


def run(cfg: dict, seeds: int, progress: bool = True) -> dict:
    """Train both configurations; returns per configuration the curves (seeds x
    evaluations) of validation and training loss, and the wall time."""
    from tqdm.auto import tqdm

    train, val = load_text(cfg["train_chars"], cfg["val_chars"])
    seed_keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    configs = {"no dropout": 0.0, f"dropout {cfg['rate']}": cfg["rate"]}
    chunks = cfg["steps"] // cfg["eval_every"]
    bar = tqdm(total=chunks * len(configs), disable=not progress, desc="training")
    results = {}
    for name, rate in configs.items():
        init, chunk, evaluate = make_runner(cfg, train, val, rate)
        t0 = time.perf_counter()
        state = init(seed_keys)
        val_curve, train_curve = [], []
        for c in range(chunks):
            state, train_loss = chunk(state, seed_keys, c * cfg["eval_every"])
            val_curve.append(np.asarray(evaluate(state)))
            train_curve.append(np.asarray(train_loss))
            bar.set_postfix(config=name, val=f"{val_curve[-1].mean():.3f}")
            bar.update()
        results[name] = dict(
            steps=[(c + 1) * cfg["eval_every"] for c in range(chunks)],
            val_loss=np.stack(val_curve, 1).tolist(),
            train_loss=np.stack(train_curve, 1).tolist(),
            seconds=time.perf_counter() - t0,
        )
    bar.close()
    return results


def table(results: dict) -> str:
    rows = []
    for name, r in results.items():
        val = np.asarray(r["val_loss"])
        tr = np.asarray(r["train_loss"])
        rows.append(
            {
                "configuration": name,
                "final val loss (nats/char)": reporting.mean_spread(
                    val[:, -1], percent=False, digits=3
                ),
                "best val loss": reporting.mean_spread(
                    val.min(1), percent=False, digits=3
                ),
                "final train loss": reporting.mean_spread(
                    tr[:, -1], percent=False, digits=3
                ),
                "seeds": str(val.shape[0]),
                "time (s)": f"{r['seconds']:.0f}",
            }
        )
    return reporting.markdown_table(rows)


def plot(results: dict, path) -> pathlib.Path:
    plt = reporting.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (name, r) in enumerate(results.items()):
        steps, val = np.asarray(r["steps"]), np.asarray(r["val_loss"])
        ax.plot(steps, val.mean(0), color=f"C{i}", label=f"{name} (validation)")
        ax.fill_between(steps, val.min(0), val.max(0), color=f"C{i}", alpha=0.25)
        tr = np.asarray(r["train_loss"])
        ax.plot(steps, tr.mean(0), color=f"C{i}", ls=":", label=f"{name} (train)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title("Char-level transformer on Python stdlib source", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return reporting.savefig(fig, path)


def main(argv=None) -> dict:
    ap = cli.parser(__doc__, cache=False, seeds=3, epochs=False)
    ap.add_argument("--steps", type=int, default=None, help="training steps")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else DEFAULT)
    if args.steps:
        cfg["steps"] = args.steps
    seeds = 1 if args.quick else args.seeds
    out = reporting.output_dir(args.out)
    t0 = time.perf_counter()
    results = run(cfg, seeds, progress=not args.no_progress)
    text = table(results)
    print(text)
    plot(results, out / "transformer_lm.png")
    summary = dict(
        config=cfg,
        seeds=seeds,
        results=results,
        table=text,
        seconds=time.perf_counter() - t0,
    )
    (out / "transformer_lm.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
