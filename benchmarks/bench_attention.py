"""Attention dropout in a transformer: memory and step time relative to no dropout.

Usage::

    python benchmarks/bench_attention.py              # T = 512 and T = 1024
    python benchmarks/bench_attention.py --quick      # T = 128, 3 repeats (smoke test)
    python benchmarks/bench_attention.py --seq 512    # one length
    python benchmarks/bench_attention.py --seq 1024 --no-time   # memory only

The model: 4 pre-norm transformer blocks (flax.linen), batch 8, width 256, 8
heads, MLP width 1024, dropout 0.1 on the attention probabilities and on both
residual branches; the step is ``jax.grad`` of the sum of squares of the output
with respect to the parameters, jitted. Compared, both with ``broadcast_dropout``
True (one mask shared by batch and heads) and False (per-element masks):

* jaxreg: ``attention_fn=jaxreg.attention.dot_product_attention`` and
  ``jaxreg.linen.Dropout`` on the residual branches;
* Flax: the default ``attention_fn`` and ``flax.linen.Dropout``;

each divided by the same model without dropout (Flax's attention,
``deterministic=True``). Memory is the compiled step's temporary memory
(``compile().memory_analysis().temp_size_in_bytes``); time is the median of
interleaved runs in one process. Targets for jaxreg: memory <= 1.05x, time <= 1.10x.
"""

from __future__ import annotations

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from _harness import (
    cpu_model,
    interleaved_medians,
    load_note,
    table,
    versions,
)

import jaxreg
import jaxreg.linen

RATE = 0.1
LAYERS, BATCH, WIDTH, HEADS = 4, 8, 256, 8


class _Config(nn.Module):
    """The dropout configuration shared by the block and the model."""

    rate: float
    broadcast: bool
    attention_fn: object
    dropout_cls: type


class Block(_Config):
    """Pre-norm block: x + drop(attn(LN x)), then x + drop(mlp(LN x))."""

    @nn.compact
    def __call__(self, x, deterministic):
        h = nn.MultiHeadDotProductAttention(
            num_heads=HEADS,
            dropout_rate=self.rate,
            broadcast_dropout=self.broadcast,
            attention_fn=self.attention_fn,
        )(nn.LayerNorm()(x), deterministic=deterministic)
        x = x + self.dropout_cls(self.rate)(h, deterministic=deterministic)
        h = nn.Dense(4 * WIDTH)(nn.LayerNorm()(x))
        h = nn.Dense(WIDTH)(nn.gelu(h))
        return x + self.dropout_cls(self.rate)(h, deterministic=deterministic)


class Model(_Config):
    """``LAYERS`` blocks and a final LayerNorm."""

    @nn.compact
    def __call__(self, x, deterministic):
        for _ in range(LAYERS):
            x = Block(self.rate, self.broadcast, self.attention_fn, self.dropout_cls)(
                x, deterministic
            )
        return nn.LayerNorm()(x)


def variants():
    """name -> (model, deterministic)."""
    out = {"no dropout": (Model(0.0, True, nn.dot_product_attention, nn.Dropout), True)}
    for broadcast in (True, False):
        out[f"jaxreg, broadcast={broadcast}"] = (
            Model(
                RATE,
                broadcast,
                jaxreg.attention.dot_product_attention,
                jaxreg.linen.Dropout,
            ),
            False,
        )
        out[f"flax, broadcast={broadcast}"] = (
            Model(RATE, broadcast, nn.dot_product_attention, nn.Dropout),
            False,
        )
    return out


def step_fn(model, deterministic):
    def loss(params, x, key):
        y = model.apply(params, x, deterministic, rngs={"dropout": key})
        return jnp.sum(jnp.square(y))

    return jax.jit(jax.grad(loss))


def measure(seq: int, repeats: int, timed: bool = True):
    x = jax.random.normal(jax.random.key(0), (BATCH, seq, WIDTH))
    key = jax.random.key(1)
    base_model = variants()["no dropout"][0]
    params = base_model.init(jax.random.key(2), x, True)
    memory, fns = {}, {}
    for name, (model, det) in variants().items():
        step = step_fn(model, det)
        compiled = step.lower(params, x, key).compile()
        memory[name] = compiled.memory_analysis().temp_size_in_bytes
        fns[name] = functools.partial(compiled, params, x, key)
    if not timed:
        return memory, None
    times = interleaved_medians(fns, repeats=repeats, warmup=1)
    return memory, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="T=128, 3 repeats")
    parser.add_argument("--no-time", action="store_true", help="memory only")
    args = parser.parse_args()
    seqs = args.seq or ([128] if args.quick else [512, 1024])
    repeats = 3 if args.quick else args.repeats
    print(f"<!-- {versions()} -->")
    print(f"<!-- CPU: {cpu_model()}; {load_note()} at start -->\n")
    for seq in seqs:
        memory, times = measure(seq, repeats, timed=not args.no_time)
        base_m = memory["no dropout"]
        rows = []
        for name in memory:
            row = [
                f"`{name}`",
                f"{memory[name] / 2**20:.0f} MiB",
                f"{memory[name] / base_m:.2f}x",
            ]
            if times is not None:
                base_t = times["no dropout"]
                row += [f"{times[name] * 1e3:.0f} ms", f"{times[name] / base_t:.2f}x"]
            rows.append(row)
        header = ["variant", "temp memory", "memory ratio"]
        if times is not None:
            header += ["time", "time ratio"]
        print(
            f"T = {seq}: {LAYERS} pre-norm blocks, batch {BATCH}, width {WIDTH}, "
            f"{HEADS} heads, dropout {RATE} on attention probabilities and both "
            f"residual branches, jax.grad step; median of {repeats} interleaved "
            "runs (targets for jaxreg: memory <= 1.05x, time <= 1.10x)\n"
        )
        print(table(header, rows))
        print(f"\n<!-- {load_note()} after T = {seq} -->\n")


if __name__ == "__main__":
    main()
