"""PRNG key checks shared by every stochastic function in jaxreg.

Every public stochastic function takes its key as the first argument and passes it
through :func:`as_key`, which accepts

* typed keys made by :func:`jax.random.key` (any implementation: ``threefry2x32``,
  ``rbg``, ``unsafe_rbg``), and
* legacy raw ``uint32`` keys made by :func:`jax.random.PRNGKey` (shape ``(2,)`` for
  threefry, ``(4,)`` for the rbg family),

and returns a scalar typed key. Anything else gets an error that says how to fix it.

Raw key data does not record its implementation: a ``(2,)`` raw key is read as
``threefry2x32``, a ``(4,)`` raw key as ``rbg``, or as ``unsafe_rbg`` when that is
the default implementation (``jax_default_prng_impl``). Prefer typed keys, which
carry their implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key"]

_RAW_KEY_IMPLS = {2: "threefry2x32", 4: "rbg"}


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"an array of shape {tuple(shape)} and dtype {dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def as_key(key, *, name: str = "key", why: str = "this call is stochastic"):
    """Validate a PRNG key and return it as a scalar typed key.

    Args:
      key: a typed key (``jax.random.key``) or a legacy ``uint32`` key
        (``jax.random.PRNGKey``), of any PRNG implementation.
      name: the argument name used in error messages.
      why: the reason a key is needed, used in the message for a missing key.

    Returns:
      A scalar typed PRNG key.

    Raises:
      ValueError: if ``key`` is None (missing), or is a batch of keys.
      TypeError: if ``key`` is not a PRNG key at all.
    """
    if key is None:
        raise ValueError(
            f"`{name}` is None, but {why}. Pass a PRNG key, for example "
            f"`{name}=jax.random.key(0)`, and split it for every call "
            "(`key, sub = jax.random.split(key)`); or request the deterministic "
            "(inference) path with `deterministic=True`."
        )
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise TypeError(
            f"`{name}` must be a JAX PRNG key made by `jax.random.key(seed)` or "
            f"`jax.random.PRNGKey(seed)`; got {_describe(key)}."
        )
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim != 0:
            raise ValueError(
                f"`{name}` is a batch of keys with shape {key.shape}; jaxreg functions "
                "take one key. To apply a function to many keys, map it with "
                f"`jax.vmap(lambda k: f(k, ...))({name})`."
            )
        return key
    if key.dtype == np.uint32 and key.ndim >= 1 and key.shape[-1] in _RAW_KEY_IMPLS:
        if key.ndim != 1:
            raise ValueError(
                f"`{name}` is a batch of legacy keys with shape {key.shape}; jaxreg "
                "functions take one key. To apply a function to many keys, map it "
                f"with `jax.vmap(lambda k: f(k, ...))({name})`."
            )
        default = jax.config.jax_default_prng_impl
        impl = _RAW_KEY_IMPLS[key.shape[0]]
        if default in ("rbg", "unsafe_rbg") and key.shape[0] == 4:
            impl = default
        return jax.random.wrap_key_data(jnp.asarray(key), impl=impl)
    raise TypeError(
        f"`{name}` must be a JAX PRNG key made by `jax.random.key(seed)` or "
        f"`jax.random.PRNGKey(seed)`; got {_describe(key)}. A raw key is a uint32 "
        "array of shape (2,) (threefry) or (4,) (rbg)."
    )
