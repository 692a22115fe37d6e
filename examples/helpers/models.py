"""The models of the examples: a plain-JAX MLP with regularizer hooks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["Params", "accuracy", "cross_entropy", "init_mlp", "mlp_apply"]

Params = list  # list of {"w": (d_in, d_out), "b": (d_out,)} dicts


def init_mlp(key, sizes: Sequence[int]) -> Params:
    """He-normal initialised MLP parameters for layer widths ``sizes``.

    ``sizes = (40, 256, 256, 10)`` gives two hidden layers. Weights are
    ``N(0, 2 / fan_in)``, biases zero.

    Args:
      key: a PRNG key, or a Python int seed: then the draw is made on the host
        with numpy (no XLA compilation, which matters on a busy CPU).
      sizes: input width, hidden widths..., number of outputs.

    Returns:
      A list of ``{"w": (d_in, d_out), "b": (d_out,)}`` dicts (a pytree).
    """
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    if isinstance(key, int | np.integer):
        rng = np.random.default_rng([int(key), 0])
        return [
            {
                "w": jnp.asarray(rng.standard_normal((m, n)) * np.sqrt(2.0 / m), "f4"),
                "b": jnp.zeros((n,), jnp.float32),
            }
            for m, n in pairs
        ]
    keys = jax.random.split(key, len(pairs))
    return [
        {
            "w": jax.random.normal(k, (m, n), jnp.float32) * jnp.sqrt(2.0 / m),
            "b": jnp.zeros((n,), jnp.float32),
        }
        for k, (m, n) in zip(keys, pairs, strict=True)
    ]


def mlp_apply(
    params: Params,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    hidden: Callable[[jax.Array, jax.Array, int], jax.Array] | None = None,
    inputs: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
    return_hidden: bool = False,
):
    """Apply the MLP, optionally regularizing the input and each hidden layer.

    Args:
      params: from :func:`init_mlp`.
      x: inputs ``(B, D)``.
      key: PRNG key for the stochastic hooks (split per layer); may be None when
        the hooks are deterministic.
      hidden: ``hidden(key, h, i) -> h`` applied after the activation of hidden
        layer ``i`` (0-based), e.g.
        ``lambda k, h, i: jaxreg.dropout(k, h, 0.5)``.
      inputs: ``inputs(key, x) -> x`` applied to the input, e.g. input noise or
        input dropout.
      activation: hidden nonlinearity (ReLU by default).
      return_hidden: also return the list of hidden activations (after the
        ``hidden`` hook, i.e. what the next layer sees).

    Returns:
      Logits ``(B, num_outputs)``, or ``(logits, [h_0, h_1, ...])``.
    """
    n = len(params)
    keys = jax.random.split(key, n) if key is not None else [None] * n
    h = x
    if inputs is not None:
        h = inputs(keys[-1], h)
    hs = []
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < n - 1:
            h = activation(h)
            if hidden is not None:
                h = hidden(keys[i], h, i)
            hs.append(h)
    return (h, hs) if return_hidden else h


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of correct argmax predictions."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
