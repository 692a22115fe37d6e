"""Keys for every layer and call site from one step key, without ``split_rngs``.

A model whose layers are stacked and run with ``jax.lax.scan`` (or ``nn.scan``,
``nnx.scan``, ``vmap`` over layers) needs a different dropout key in every layer,
at every call site inside a layer, and at every training step. Splitting keys by
hand in such code is where bugs hide: a key closed over by the scanned body is the
*same* in every layer (every layer drops the same units), and a key folded with
``step + layer`` repeats across steps (layer 1 at step 0 equals layer 0 at step 1).

:func:`derive_key` names a key by a path instead: ``derive_key(key, "attn", i)``
is a function of the key, the site name ``"attn"`` and the layer index ``i``
only, built with :func:`jax.random.fold_in`. The index may be traced (the loop
counter of a ``scan``, the batch index of a ``vmap``), so one step key, closed
over by the scanned body, gives every layer and site its own key.
:func:`layer_keys` returns the keys of all layers at once, to be scanned alongside
stacked parameters.

Distinct paths give independent keys: every path element is folded in with
:func:`jax.random.fold_in` (a keyed pseudo-random function), names and indices
are mapped to disjoint sets of 32-bit words (indices to ``[0, 2**31)``, names to
``[2**31, 2**32)`` by a stable hash of their UTF-8 bytes), so a name never aliases
an index, and the path ``(a, b)`` differs from ``(b, a)`` and from ``(a,)``. (Two
distinct names share a word with probability ``2**-31``; the hash is the same in
every process and Python version, unlike ``hash(str)``.)
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._checks import check_int, static_value
from jaxreg._keys import as_key

__all__ = ["derive_key", "layer_keys"]

_INDEX_LIMIT = 2**31  # indices use the words [0, 2**31), names [2**31, 2**32)


def _is_typed(key) -> bool:
    return isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _name_word(name: str) -> int:
    """A stable 32-bit word with the top bit set for a site name."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") | _INDEX_LIMIT


def _path_word(part, position: int):
    """The word that :func:`jax.random.fold_in` folds in for one path element."""
    where = f"path element {position}"
    if isinstance(part, str):
        return _name_word(part)
    if isinstance(part, (bool, np.bool_)) or not isinstance(
        part, (int, np.integer, np.ndarray, jax.Array)
    ):
        raise TypeError(
            f"`path` elements must be names (str) or integer indices; {where} is "
            f"{type(part).__name__} {part!r}."
        )
    if isinstance(part, (np.ndarray, jax.Array)):
        if not jnp.issubdtype(part.dtype, jnp.integer):
            raise TypeError(
                f"`path` indices must have an integer dtype; {where} has dtype "
                f"{part.dtype}."
            )
        if part.ndim != 0:
            raise ValueError(
                f"`path` indices must be scalars; {where} has shape {part.shape}. "
                "For one key per index use `layer_keys`, or map with `jax.vmap`."
            )
    value = static_value(part)
    if value is not None and not 0 <= value < _INDEX_LIMIT:
        raise ValueError(
            f"`path` indices must lie in [0, 2**31); {where} is {int(value)}."
        )
    if value is not None:
        return int(value)
    return jnp.asarray(part).astype(jnp.uint32)


def derive_key(key, *path):
    """The key of one call site in one layer (at one step), derived from ``key``.

    ``derive_key(key, p1, p2, ...)`` is ``fold_in(fold_in(key, w(p1)), w(p2))...``
    where ``w`` maps a name to a stable 32-bit hash with the top bit set and an
    index to itself. It is a pure function of ``key`` and the path: the same
    inputs give the same key in any program, eagerly or under ``jit``, and
    distinct paths give independent keys (names never collide with indices, the
    order of the path matters). Indices may be traced, so inside a ``scan`` over
    layers the layer counter selects the key::

        def block(h, xs):
            params, i = xs                       # i: the traced layer index
            k_attn = jaxreg.derive_key(step_key, "attn", i)
            k_mlp = jaxreg.derive_key(step_key, "mlp", i)
            ...

    where ``step_key = jaxreg.derive_key(base_key, step)`` (or a key split per
    step) makes the keys differ from step to step as well.

    Args:
      key: a PRNG key (typed, ``jax.random.key``, or legacy uint32,
        ``jax.random.PRNGKey``, any implementation).
      *path: names (``str``, static) and indices (Python ints or integer scalar
        arrays, possibly traced) in ``[0, 2**31)``. A traced index cannot be
        checked; a negative traced index aliases the name words (its two's
        complement has the top bit set).

    Returns:
      A key of the kind given: a scalar typed key for a typed ``key``, raw
      ``uint32`` key data of the same implementation for a legacy one. With an
      empty path, ``key`` itself (as that kind).

    Raises:
      TypeError: a path element that is neither a name nor an integer (floats,
        bools, float arrays); a ``key`` that is not a PRNG key.
      ValueError: a concrete index outside ``[0, 2**31)``, a non-scalar index
        array, a batch of keys.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> key = jax.random.key(0)
      >>> k0 = jaxreg.derive_key(key, "drop_path", 0)
      >>> k1 = jaxreg.derive_key(key, "drop_path", 1)
      >>> bool(jnp.all(jax.random.key_data(k0) == jax.random.key_data(k1)))
      False

      One step key serves every layer of a scanned stack:

      >>> def body(h, i):
      ...     k = jaxreg.derive_key(key, "dropout", i)
      ...     return h, jaxreg.keep_mask(k, (4,), 0.5)
      >>> _, masks = jax.lax.scan(body, 0.0, jnp.arange(3))
      >>> masks.shape
      (3, 4)

    References:
      Salmon, Moraes, Dror, Shaw. "Parallel Random Numbers: As Easy as 1, 2, 3."
      SC 2011 (counter-based generators; ``fold_in`` is threefry's keyed hash).
      https://doi.org/10.1145/2063384.2063405
    """
    out = as_key(key)
    legacy = not _is_typed(key)
    for position, part in enumerate(path):
        out = jax.random.fold_in(out, _path_word(part, position))
    return jax.random.key_data(out) if legacy else out


def layer_keys(key, num_layers: int, *path):
    """The keys of ``num_layers`` layers at one call site, stacked on axis 0.

    ``layer_keys(key, n, *path)[i] == derive_key(key, *path, i)``: the batch of
    keys to scan over alongside stacked layer parameters (and per-layer rates)::

        keys = jaxreg.layer_keys(step_key, depth, "drop_path")
        h, _ = jax.lax.scan(block, h, (stacked_params, rates, keys))

    Inside a layer, further sites take ``derive_key(layer_key, "attn")`` etc.

    Args:
      key: a PRNG key (typed or legacy, any implementation).
      num_layers: the number of layers, a Python int ``>= 1``.
      *path: names and indices folded in before the layer index (see
        :func:`derive_key`).

    Returns:
      Keys of shape ``(num_layers,)`` (typed) or ``(num_layers, *key_data)``
      (legacy), the same kind as ``key``.

    Raises:
      TypeError: ``num_layers`` not an int; bad path elements or key.
      ValueError: ``num_layers < 1``; bad path elements or key.

    Examples:
      >>> import jax, jaxreg
      >>> keys = jaxreg.layer_keys(jax.random.key(0), 4, "drop_path")
      >>> keys.shape
      (4,)
      >>> k2 = jaxreg.derive_key(jax.random.key(0), "drop_path", 2)
      >>> bool((jax.random.key_data(keys[2]) == jax.random.key_data(k2)).all())
      True
    """
    num_layers = check_int(num_layers, "num_layers", minimum=1)
    base = derive_key(as_key(key), *path)
    legacy = not _is_typed(key)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(num_layers, dtype=jnp.uint32)
    )
    return jax.random.key_data(keys) if legacy else keys
