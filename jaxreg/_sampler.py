"""The one Bernoulli keep-mask sampler of jaxreg.

Every random mask in the library (dropout, spatial dropout, drop-path, DropBlock,
zoneout, DropConnect, ...) is drawn by :func:`keep_mask`, and every scale factor is
computed from :func:`keep_probability`, the keep probability the sampler *actually
realises*. That pairing is what makes ``E[dropout(x)] == x`` exact even though the
rate is quantized.

Design
------
*Keep decision.* For each mask element one 32-bit word ``u`` is generated, and the
element is kept iff ``u >= t`` with the integer threshold
``t = round(rate * 2**32)``. Hence

* the realised keep probability is exactly ``(2**32 - t) / 2**32``, which is what
  :func:`keep_probability` returns;
* the largest deviation of the realised rate from the nominal one is ``2**-33``
  (about ``1.2e-10``), far below what any statistical test can see: at ``10**7``
  draws one binomial sigma is ``>= 1e-5`` for ``0.001 <= rate <= 0.999``, so the
  bias is below ``1.2e-5`` sigma (a 16-bit threshold would allow ``2**-17``, about
  ``0.76`` sigma at rate 0.001, which is why the full 32 bits are kept);
* no low-precision float is ever compared, whatever the dtype of the data.

*Generator.* The words are not drawn with :func:`jax.random.bits` over the whole
mask (threefry costs about 20 rounds of 32-bit arithmetic per word, and autodiff
would keep its output for the backward pass). Instead two 32-bit seed words
``(k0, k1) = jax.random.bits(key, (2,), uint32)`` are drawn from the key (any PRNG
implementation, typed or legacy key), and the word of an element is a keyed
counter-based generator (Salmon et al. 2011) of the element's 64-bit counter
``(hi, lo)``: a balanced Feistel network of three rounds on two 32-bit halves,
the construction of Philox with a multiply-xorshift round function::

    (L, R) = (lo, hi);  three times: (L, R) = (R, L ^ g(R ^ K_r));  u = R
    g(x) = x ^ (x >> 16);  x *= 0x7feb352d;  x ^= x >> 15;  x *= 0x846ca68b;
           x ^= x >> 16                                      (all mod 2**32)

``g`` is the "lowbias32" mixer found by C. Wellons' hash prospector
(https://github.com/skeeto/hash-prospector), a bijection of the 32-bit words with
near-ideal avalanche. The round keys come from the seed words through four
rounds of the same network on scalars (round constants ``(r + 1) * 0x9E3779B9``
in place of keys, after Philox's Weyl key schedule): ``(K_0, K_1)`` is its
output and ``K_2 = g(K_0 ^ 5 * 0x9E3779B9)`` (:func:`_round_keys`), so every
round key depends on all 64 seed bits and seeds that differ in one bit have
unrelated round keys: the related-key
structure of the generator used before (the seed entered by XOR before its last
two mixer rounds, so a one-bit change passed a single round) is gone. Three
Feistel rounds with pseudo-random round functions give a pseudo-random
permutation of the 64-bit counters (Luby and Rackoff 1988); the word is its
right half, a 32-bit function of the counter that is *not* a bijection of the
index, so words repeat as for draws with replacement. The counter is the
element's global row-major linear index (``hi = 0``) for masks of at most
``2**32`` elements; for larger masks ``hi`` and ``lo`` are the row-major indices
over the axes before and from the first axis at which the rest of the mask
fits in ``2**32`` elements (:func:`_counter`). With ``hi = 0`` the first round's
``g(K_0)`` is a scalar, so a word costs two rounds of ``g`` (4 multiplies, 6
xorshifts, 4 xors; the generator used before cost 6 multiplies, 9 xorshifts and
2 xors). Properties:

* *Exact marginals.* For a fixed counter and a fixed ``K_0`` (hence ``K_2``),
  ``u`` is a bijection of ``K_1`` (``K_1`` passes a XOR, ``g``, a XOR, ``g``
  and a XOR); the key schedule is a bijection of the seed words, so for
  uniform seed words ``(K_0, K_1)`` is uniform and ``u`` is exactly uniform over
  the ``2**32`` words: every element is kept with probability exactly
  ``keep_probability(rate)`` over the key (``E[output] == input`` exactly).
* *Elementwise, hence layout-free.* The hash only needs the element's global
  index (an ``iota``), so the mask is identical for every layout and every
  device computes its own block with no communication (:func:`_linear_index`
  builds the indices, in one place):

  - under ``jit`` on an Auto mesh, XLA's partitioner splits the iota like the
    data;
  - on an Explicit mesh (``jax.set_mesh``), the iotas are built with the data's
    sharding (``out_sharding``) and the mask is broadcast onto the data with it,
    so the output's type keeps the input's sharding, also where the mask is
    shared along a split axis (``broadcast_dims``); :func:`keep_mask` takes
    ``out_sharding=`` for a mask without data;
  - inside ``jax.shard_map``, ``shard_spec=`` (the data's ``in_specs`` entry)
    gives each shard its block's offset in the global mask (from
    ``lax.axis_index`` and the mesh's axis sizes, :func:`_shard_block`), so the
    shard_map program draws exactly the mask of the global ``jit`` program;
    DropBlock's shards also draw the ``block_size - 1`` seed rows and columns
    past their block (a halo), and on an Explicit mesh whose spatial axes are
    split DropBlock runs that shard_map form itself;
  - across processes (``jax.distributed``) nothing changes: a device's block
    depends only on the key and the global indices it holds.
* *Key-only memory.* Regenerating a mask costs about 20 integer operations per
  element and needs only the seed words, so :func:`masked_scale` (used by
  :func:`jaxreg.dropout` and hence spatial dropout and drop-path) and
  :func:`masked_select` (used by :func:`jaxreg.zoneout`) keep the seed words, not
  the mask, for the backward pass (:func:`masked_select` also serves alpha
  dropout, with a scalar fill value); so does :func:`masked_scale_blocks`
  (DropBlock, which regenerates the seeds and the window minimum that grows them
  into blocks).
  :func:`masked_activation_scale` (``jaxreg.dropout(..., activation=f)``) goes
  one step further for activations whose derivative is a function of their
  output (tanh, sigmoid, relu, elu, softplus): a ``custom_jvp`` whose tangent
  rule is such a checkpoint reads ``f'`` off the dropout output itself, so the
  backward pass keeps neither the mask nor ``f(x)``, only the output the next
  layer keeps anyway.
* *Tested quality.* ``tests/test_generator.py`` checks byte-frequency
  chi-square, bit balance per bit position, serial correlation of neighbouring
  words and words a row apart, and cross-key correlation at every lag (also for
  seeds that differ in a single bit), each at a stated threshold; and runs the
  project's own battery (``tests/_randomness.py``: monobit, bit positions, byte
  frequency, GF(2) rank of 32x32 and 128x128 bit matrices, adjacent xor,
  birthday collisions) on one mask's words, on split keys interleaved, on the
  interleaved words of seeds one bit apart and on the keep bits at rates 0.5
  and 0.1, with the generator used before as the known-bad control (its
  related-seed words fail the 128x128 rank test at ``p < 1e-100`` and its words
  never repeat, birthday ``p = 5e-56``, at the sizes the tests use).
  ``tests/test_dieharder.py`` passes the words of two keys, of split keys, of
  seeds one bit apart and the rate-0.5 keep bits through Debian's dieharder
  (birthdays, 6x8 rank, bitstream, STS monobit, DAB DCT: no FAILED).
  ``benchmarks/generator_quality.py`` streams the same words to dieharder, the
  own battery and PractRand; its table is in ``docs/benchmarks.md``
  ("Generator quality").
  Measured (``docs/benchmarks.md``): no own test and no dieharder test fails on
  any of those streams (the previous generator: birthday ``p = 5e-56`` on one
  mask, rank ``p = 6e-57`` on seeds one bit apart); PractRand 0.95 sees no
  anomaly to 32 GB on one mask's words, on the words of 1024 split keys
  interleaved and on the 65 interleaved seeds one bit apart (the previous
  generator FAILs the latter at 256 MB), on the rate-0.5 keep bits, and on
  the rate-0.1 keep bits through Elias' extractor (exactly fair bits from
  independent decisions; Elias 1972).
* *Cost.* Per element 4 uint32 multiplies, 6 shifts and 10 XORs in XLA's
  optimized HLO (previously 6, 9 and 11). ``python
  benchmarks/generator_quality.py --cost`` (2**24 elements, jitted,
  interleaved medians): a mask costs 0.71x (wall) to 0.76x (CPU) the previous
  generator's, a fused dropout 0.94x to 0.97x.

*Limits.* The hash is not cryptographic (do not use it where an adversary picks
the inputs). Words of one mask repeat like independent draws (about
``n**2 / 2**33`` equal pairs among ``n`` words), which is what independent
elements require. A mask whose counter does not split into two 32-bit indices
(more than ``2**64`` elements, or one axis longer than ``2**32``) is an error.

References:
  J. K. Salmon, M. A. Moraes, R. O. Dror and D. E. Shaw, "Parallel random
  numbers: as easy as 1, 2, 3", SC 2011. https://doi.org/10.1145/2063384.2063405
  M. Luby and C. Rackoff, "How to construct pseudorandom permutations from
  pseudorandom functions", SIAM J. Comput. 17(2), 1988.
  https://doi.org/10.1137/0217022
  P. Elias, "The efficient construction of an unbiased random sequence",
  Ann. Math. Statist. 43(3), 865-870, 1972.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg._checks import (
    check_broadcast_dims,
    check_out_sharding,
    check_rate,
    check_shape,
    check_shard_spec,
    compute_dtype,
    spec_entries,
    static_value,
)
from jaxreg._keys import as_key

__all__ = ["keep_mask", "keep_probability"]

_TWO32 = 4294967296  # 2**32
_MAX_RATE_ERROR = 2.0**-33
# The lowbias32 multipliers (Wellons' hash prospector).
_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)


def _threshold(rate):
    """Integer threshold and realised keep probability for a drop ``rate``.

    For a concrete rate both are Python numbers (the threshold an int in
    ``[0, 2**32]``); for a traced rate they are a ``uint32`` scalar, a bool "drop
    everything" flag and a float32 scalar.
    """
    value = static_value(rate)
    if value is not None:
        t = round(value * _TWO32)
        return t, (_TWO32 - t) / _TWO32
    r = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    t = jnp.round(r * jnp.float32(_TWO32))
    drop_all = t >= jnp.float32(_TWO32)
    keep = jnp.where(drop_all, 0.0, (jnp.float32(_TWO32) - t) / jnp.float32(_TWO32))
    return (jnp.where(drop_all, 0.0, t).astype(jnp.uint32), drop_all), keep


def _threshold_arrays(rate):
    """``(t, drop_all)`` as a ``uint32`` and a bool scalar, concrete or traced."""
    threshold, _ = _threshold(rate)
    if isinstance(threshold, int):
        if threshold >= _TWO32:
            return np.uint32(0), np.bool_(True)
        return np.uint32(threshold), np.bool_(False)
    return threshold


def _mix(x: jax.Array) -> jax.Array:
    """One round of the lowbias32 integer mixer (a bijection of uint32)."""
    x = x ^ (x >> 16)
    x = x * _M1
    x = x ^ (x >> 15)
    x = x * _M2
    return x ^ (x >> 16)


class _Layout(NamedTuple):
    """Where the drawn array lies in the global mask (static and hashable).

    ``shape`` is the shape of the array drawn: the whole mask, or inside
    ``jax.shard_map`` this shard's block (size 1 on broadcast axes). ``manual`` is
    None, or per axis the names of the manual mesh axes that split the global
    mask along it (see :func:`jaxreg._checks.check_shard_spec`). ``halo`` is
    per axis the number of elements a block has beyond its share of the global
    axis (DropBlock's padding, shared by neighbouring blocks), or ``()``.
    """

    shape: tuple[int, ...]
    manual: tuple[tuple[str, ...], ...] | None = None
    halo: tuple[int, ...] = ()


def _shard_block(layout: _Layout):
    """``(global_shape, offsets)`` of this shard's block, inside ``shard_map``.

    Along an axis split over manual mesh axes ``(a, b, ...)`` the shard's
    position is the row-major index of its coordinates ``(axis_index(a), ...)``
    (JAX's order for a tuple entry of a PartitionSpec), its block starts at that
    position times its share, and the global axis is the share times the number
    of shards, plus the halo.
    """
    sizes = dict(jax.sharding.get_abstract_mesh().shape)
    halo = layout.halo or (0,) * len(layout.shape)
    global_shape, offsets = [], []
    for size, axes, extra in zip(layout.shape, layout.manual, halo, strict=True):
        share = size - extra
        count = math.prod(sizes[name] for name in axes)
        global_shape.append(share * count + extra)
        offsets.append(shard_position(axes, jnp.uint32) * share if axes else 0)
    return tuple(global_shape), tuple(offsets)


def shard_position(axes: tuple[str, ...], dtype=jnp.int32) -> jax.Array:
    """This shard's position along an array axis split over the manual mesh
    ``axes`` (inside ``shard_map``): the row-major index of its coordinates
    ``(axis_index(a) for a in axes)``, JAX's order for a tuple entry of a
    PartitionSpec."""
    sizes = dict(jax.sharding.get_abstract_mesh().shape)
    position = jnp.zeros((), dtype)
    for name in axes:
        position = position * sizes[name] + lax.axis_index(name).astype(dtype)
    return position


def _linear_index(
    shape: tuple[int, ...], *, sharding=None, block=None, axes=None
) -> jax.Array:
    """Global row-major linear index of every element, as uint32 (``size <= 2**32``).

    The array built has shape ``shape``; it is the whole mask (``block=None``) or
    the block at ``offsets`` of a mask of ``global_shape``
    (``block=(global_shape, offsets)``, see :func:`_shard_block`). ``sharding``
    is the explicit sharding of the array built (None: unconstrained), given to
    every iota so that each device builds only its own indices. ``axes`` (a
    ``range``, default all) restricts the index to those axes: the row-major
    index of the element within the sub-array they span (see :func:`_counter`).
    """
    global_shape, offsets = block if block is not None else (shape, (0,) * len(shape))
    axes = range(len(shape)) if axes is None else axes
    index = None
    stride = 1
    for d in reversed(axes):
        if global_shape[d] > 1:
            iota = lax.broadcasted_iota(jnp.uint32, shape, d, out_sharding=sharding)
            if not isinstance(offsets[d], int) or offsets[d]:
                iota = iota + offsets[d]
            term = iota * np.uint32(stride) if stride > 1 else iota
            index = term if index is None else index + term
        stride *= global_shape[d]
    if index is None:
        index = jnp.zeros(shape, jnp.uint32, out_sharding=sharding)
    return index


def _seed(key) -> jax.Array:
    """The two uint32 seed words of a key (the only state a mask depends on)."""
    return jax.random.bits(as_key(key), (2,), jnp.uint32)


def _round_keys(seed: jax.Array):
    """The three uint32 round keys of the Feistel network, from the seed words.

    A scalar computation (once per mask, not per element): the seed ``(k0, k1)``
    goes through four rounds of the same Feistel network, with the Weyl round
    constants ``(r + 1) * 0x9E3779B9`` in place of keys, and its two halves are
    ``K_0, K_1``; ``K_2 = g(K_0 ^ 5 * 0x9E3779B9)``. The four rounds are a
    bijection of the 64 seed bits in which a one-bit change of either seed word
    passes at least two mixer rounds, so seeds one bit apart get unrelated round
    keys; and as ``K_2`` depends on ``K_0`` alone, a word is a bijection of
    ``K_1`` for fixed ``K_0`` (see "Exact marginals" in the module docstring).
    """
    a, b = seed[0], seed[1]
    for r in range(4):
        a, b = b, a ^ _mix(b ^ _weyl(r + 1))
    return a, b, _mix(a ^ _weyl(5))


def _weyl(r: int) -> np.uint32:
    """``r`` times the golden-ratio constant ``0x9E3779B9`` (mod ``2**32``)."""
    return np.uint32(r * 0x9E3779B9 % _TWO32)


def _hash(seed: jax.Array, lo: jax.Array, hi: jax.Array | None = None) -> jax.Array:
    """The word of every element from its counter ``(hi, lo)`` (uint32 arrays).

    A three-round balanced Feistel network on the 64-bit counter, round ``r``
    mapping ``(L, R)`` to ``(R, L ^ g(R ^ K_r))`` with ``g`` = :func:`_mix`, from
    ``(L, R) = (lo, hi)``; the word is the right half after the last round.
    ``hi=None`` stands for ``hi == 0`` (every mask below ``2**32`` elements):
    the first round's ``g(0 ^ K_0)`` is then a scalar, so a word costs two
    rounds of ``g``. Elementwise in the counter: this is what makes masks
    layout-independent (a shard computes its block from its own indices alone).
    """
    k = _round_keys(seed)
    if hi is None:
        c = _mix(k[0])
        r1 = lo ^ c
        r2 = _mix(lo ^ (c ^ k[1]))
    else:
        r1 = lo ^ _mix(hi ^ k[0])
        r2 = hi ^ _mix(r1 ^ k[1])
    return r1 ^ _mix(r2 ^ k[2])


def _counter(shape, *, sharding=None, block=None):
    """The counter ``(hi, lo)`` of every element (``hi`` None where it is 0).

    For a mask of at most ``2**32`` elements ``lo`` is the global row-major
    linear index and ``hi`` is 0. A larger mask is cut before the first axis
    ``s`` with ``prod(global_shape[s:]) <= 2**32``: ``hi`` is the row-major index
    over the axes before ``s`` and ``lo`` over the axes from ``s`` on, so the
    counter is distinct for every element. ``sharding`` and ``block`` as in
    :func:`_linear_index`.

    Raises:
      ValueError: a mask that no such cut splits into two 32-bit indices (more
        than ``2**64`` elements, or one axis longer than ``2**32``).
    """
    global_shape = block[0] if block is not None else shape
    size = math.prod(global_shape)
    if size <= _TWO32:
        return None, _linear_index(shape, sharding=sharding, block=block)
    cut = next(
        s for s in range(len(shape) + 1) if math.prod(global_shape[s:]) <= _TWO32
    )
    if math.prod(global_shape[:cut]) > _TWO32:
        raise ValueError(
            f"A mask of shape {tuple(global_shape)} cannot be drawn: its element "
            "counter must split into two 32-bit row-major indices (at most 2**64 "
            "elements, no axis longer than 2**32)."
        )
    hi = _linear_index(shape, sharding=sharding, block=block, axes=range(cut))
    lo = _linear_index(
        shape, sharding=sharding, block=block, axes=range(cut, len(shape))
    )
    return hi, lo


def _bits(seed: jax.Array, shape, *, sharding=None, block=None) -> jax.Array:
    """One uniform uint32 word per element of ``shape``, from the seed words.

    ``sharding`` and ``block`` as in :func:`_linear_index`.
    """
    hi, lo = _counter(tuple(shape), sharding=sharding, block=block)
    return _hash(seed, lo, hi)


def _keep(seed, layout: _Layout, t, drop_all, sharding=None) -> jax.Array:
    """The keep decisions of the elements of ``layout`` (an array of its shape)."""
    block = _shard_block(layout) if layout.manual is not None else None
    bits = _bits(seed, layout.shape, sharding=sharding, block=block)
    return (bits >= t) & ~drop_all


def explicit_sharding(x):
    """The sharding of ``x`` over Explicit mesh axes, or None when it has none."""
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    if spec is None or all(entry is None for entry in spec):
        return None
    return sharding


def _restrict(sharding, shape: tuple[int, ...]):
    """``sharding`` (of the data) for an array of ``shape`` that broadcasts to them.

    Axes of size 1 (broadcast axes of a mask) are not split; None when nothing
    remains split.
    """
    if sharding is None:
        return None
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    entries = [None if size == 1 else e for e, size in zip(spec, shape, strict=True)]
    if all(e is None for e in entries):
        return None
    return NamedSharding(sharding.mesh, P(*entries))


def _broadcast_like(a: jax.Array, like: jax.Array) -> jax.Array:
    """``a`` broadcast to the shape of ``like``, with ``like``'s explicit sharding.

    Broadcasting a size-1 axis onto an axis split over devices is local (each
    device repeats its own values), so no collective is needed.
    """
    if a.shape == like.shape:
        return a
    sharding = explicit_sharding(like)
    return jnp.broadcast_to(a, like.shape, out_sharding=sharding)


def _keep_like(seed, layout: _Layout, t, drop_all, like: jax.Array) -> jax.Array:
    """The keep decisions of ``layout``, laid out like the data ``like``."""
    sharding = _restrict(explicit_sharding(like), layout.shape)
    return _keep(seed, layout, t, drop_all, sharding)


def _key_only(fn, static_argnum: int = 5):
    """``fn`` jitted as a checkpoint that saves nothing.

    Differentiating through it saves only its non-linear inputs (the seed words,
    the threshold and scalars such as the scale): the backward pass regenerates
    the mask instead of storing it. Unlike a custom_vjp this keeps forward-mode
    autodiff (jvp, jacfwd, hessian) working. The jit makes the eager path one
    dispatch. Argument ``static_argnum`` (a :class:`_Layout`) is static.
    """
    static = (static_argnum,)
    policy = jax.checkpoint_policies.nothing_saveable
    return jax.jit(
        jax.checkpoint(fn, policy=policy, static_argnums=static),
        static_argnums=static,
    )


def _scale_where(keep, x, scale):
    """``where(keep, x * scale, 0)`` in (at least) float32, rounded once."""
    ct = compute_dtype(x)
    y = x.astype(ct) * scale.astype(ct)
    keep = _broadcast_like(keep, y)
    return lax.select(keep, y, jnp.zeros_like(y)).astype(x.dtype)


def _select_scaled(seed, t, drop_all, scale, x, layout):
    """``where(keep, x * scale, 0)`` with the mask regenerated from the seed."""
    return _scale_where(_keep_like(seed, layout, t, drop_all, x), x, scale)


_select_scaled_remat = _key_only(_select_scaled)


def _select_keep(seed, t, drop_all, on_keep, on_drop, layout):
    keep = _broadcast_like(_keep_like(seed, layout, t, drop_all, on_keep), on_keep)
    return lax.select(keep, on_keep, _broadcast_like(on_drop, on_keep))


_select_keep_remat = _key_only(_select_keep)


def _mask_layout(shape, broadcast_dims=(), manual=None) -> _Layout:
    """The :class:`_Layout` of the mask of data of ``shape`` (size 1 on the
    ``broadcast_dims``, which no shard splits)."""
    mask_shape = tuple(1 if i in broadcast_dims else s for i, s in enumerate(shape))
    if manual is not None:
        manual = tuple(() if i in broadcast_dims else a for i, a in enumerate(manual))
    return _Layout(mask_shape, manual)


def masked_scale(
    key, x: jax.Array, rate, scale, *, broadcast_dims=(), manual=None
) -> jax.Array:
    """``where(keep_mask(key, x.shape, rate, ...), x * scale, 0)`` in one pass.

    The mask is exactly the one :func:`keep_mask` draws for the same arguments,
    but it is never materialised: the product is fused with the hash, and under
    autodiff only the key's two seed words are kept for the backward pass.
    ``rate`` must already be checked (a float in ``[0, 1)`` or a traced scalar) and
    ``broadcast_dims`` normalised; ``scale`` is a float or a scalar array (no
    gradient flows to it through the rate's rounding). ``manual`` is a checked
    ``shard_spec`` (:func:`jaxreg._checks.check_shard_spec`): ``x`` is then this
    shard's block and the mask is its block of the global mask.
    """
    layout = _mask_layout(x.shape, broadcast_dims, manual)
    t, drop_all = _threshold_arrays(rate)
    seed = _seed(key)
    return _select_scaled_remat(
        seed, jnp.asarray(t), jnp.asarray(drop_all), jnp.asarray(scale), x, layout
    )


def mask_words(key, rate):
    """The state a mask is regenerated from: ``(seed, t, drop_all)`` arrays.

    ``seed`` are the key's two uint32 seed words, ``t`` the uint32 threshold and
    ``drop_all`` the bool "drop everything" flag (rate 1). Together with the
    data's shape and ``broadcast_dims`` they determine the mask exactly, so a
    caller may keep these three small arrays for a backward pass instead of
    the mask (see :func:`select_scaled`). ``rate`` must already be checked.
    """
    t, drop_all = _threshold_arrays(rate)
    return _seed(key), jnp.asarray(t), jnp.asarray(drop_all)


def select_scaled(words, x: jax.Array, scale, *, broadcast_dims=(), manual=None):
    """``where(keep, x * scale, 0)`` with the mask regenerated from ``words``.

    ``words`` come from :func:`mask_words`; the mask is exactly
    ``keep_mask(key, x.shape, rate, broadcast_dims=broadcast_dims)``, laid out
    like ``x`` (Explicit sharding) and, with ``manual`` (a checked
    ``shard_spec``), this shard's block of the global mask. Not a checkpoint:
    the caller decides what autodiff keeps.
    """
    seed, t, drop_all = words
    layout = _mask_layout(x.shape, broadcast_dims, manual)
    return _select_scaled(seed, t, drop_all, jnp.asarray(scale), x, layout)


def masked_select(
    key, rate, on_keep: jax.Array, on_drop: jax.Array, *, broadcast_dims=(), manual=None
) -> jax.Array:
    """``where(keep_mask(key, on_keep.shape, rate), on_keep, on_drop)``, key-only.

    Same mask as :func:`keep_mask`; like :func:`masked_scale` it is regenerated
    in the backward pass instead of stored. ``rate`` must already be checked;
    ``on_drop`` has the dtype of ``on_keep`` and its shape, or is a scalar (a
    fill value, broadcast inside the region so that no array of that shape is
    kept for the backward pass). ``broadcast_dims`` (normalised) share one
    decision, and ``manual``, as in :func:`masked_scale`.
    """
    value = static_value(rate)
    if value == 0.0:
        return on_keep
    if value == 1.0:
        return _broadcast_like(on_drop, on_keep)
    t, drop_all = _threshold_arrays(rate)
    return _select_keep_remat(
        _seed(key),
        jnp.asarray(t),
        jnp.asarray(drop_all),
        on_keep,
        on_drop,
        _mask_layout(on_keep.shape, broadcast_dims, manual),
    )


# Elementwise activations whose derivative is a function of their *output* ``y``.
# Fused with dropout, they need only the dropout output for the backward pass
# (where an element was dropped its incoming gradient is zero anyway, and where it
# was kept ``y`` is the output divided by the scale). Each entry: the activation
# and its derivative written in terms of ``y`` (for tanh and sigmoid the forms of
# JAX's default-accuracy rules). As ``y`` is recovered from the rounded, scaled
# output, it can be one rounding further from f(x) than the activation's own
# output; where the activation saturates (``|tanh| -> 1``) the derivative's relative
# error grows like that rounding over ``1 - |y|``, as it does for JAX's rules.
_ACTIVATIONS = {
    "tanh": (jnp.tanh, lambda y: (1 + y) * (1 - y)),
    "sigmoid": (jax.nn.sigmoid, lambda y: y * (1 - y)),
    "relu": (jax.nn.relu, lambda y: (y > 0).astype(y.dtype)),
    "elu": (jax.nn.elu, lambda y: jnp.where(y > 0, 1, y + 1).astype(y.dtype)),
    "softplus": (jax.nn.softplus, lambda y: -jnp.expm1(-y)),
}
# The same activations given as functions (flax.linen and flax.nnx re-export
# these very objects).
_ACTIVATION_NAMES = {
    jnp.tanh: "tanh",
    lax.tanh: "tanh",
    jax.nn.sigmoid: "sigmoid",
    lax.logistic: "sigmoid",
    jax.nn.relu: "relu",
    jax.nn.elu: "elu",
    jax.nn.softplus: "softplus",
}


def activation_name(activation) -> str | None:
    """The registry name of a fusable ``activation`` (a name or function), or None.

    Raises:
      ValueError: an unknown name or function.
    """
    if activation is None:
        return None
    if isinstance(activation, str):
        name = activation
    else:
        try:
            name = _ACTIVATION_NAMES.get(activation)
        except TypeError:  # unhashable
            name = None
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` must be None, one of {sorted(_ACTIVATIONS)} or the "
            f"matching jax.nn / jax.numpy function; got {activation!r}. The fused "
            "form needs an activation whose derivative is a function of its "
            "output; apply any other activation before dropout."
        )
    return name


def activation_fn(name: str):
    """The activation function registered under ``name``."""
    return _ACTIVATIONS[name][0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(6, 7))
def _activation_select(seed, t, drop_all, scale, unscale, x, name, layout):
    """``where(keep, f(x) * scale, 0)``; ``unscale`` (``1 / scale``, or 0 when
    ``scale`` is 0) only serves the derivative rule."""
    del unscale
    keep = _keep_like(seed, layout, t, drop_all, x)
    ct = compute_dtype(x)
    fx = _ACTIVATIONS[name][0](x.astype(ct))
    return _scale_where(keep, fx, scale).astype(x.dtype)


# Activations whose derivative, written in terms of the output, is 0 where the
# output is 0 (relu, sigmoid, softplus): where the dropout output ``z`` is 0 the
# tangent is 0 whether the element was dropped or kept, and where ``z`` is not 0
# the element was kept. Their tangent rule reads the mask off ``z`` and draws no
# random words in the backward pass. (tanh and elu have ``f'(0) = 1``: an element
# kept with ``f(x) == 0`` needs the regenerated mask.)
_MASK_FROM_OUTPUT = frozenset({"relu", "sigmoid", "softplus"})


def _activation_tangent(seed, t, drop_all, scale, unscale, z, tx, name, layout):
    """Tangent ``where(keep, tx * scale * f'(x), 0)`` with ``f'(x)`` computed from
    the kept output ``z = f(x) * scale`` and the mask regenerated from the seed
    (or, for the activations of ``_MASK_FROM_OUTPUT``, read off ``z != 0``)."""
    if name in _MASK_FROM_OUTPUT:
        keep = z != 0
    else:
        keep = _keep_like(seed, layout, t, drop_all, z)
    ct = compute_dtype(z)
    slope = _ACTIVATIONS[name][1](z.astype(ct) * unscale.astype(ct))
    return _scale_where(keep, tx.astype(ct) * slope, scale).astype(tx.dtype)


# Linearizing the tangent rule keeps only its non-linear inputs, i.e. the seed
# words, the scalars and the output ``z`` (which the next layer keeps anyway):
# neither the mask nor the activation's own output is stored.
_activation_tangent_remat = jax.checkpoint(
    _activation_tangent,
    policy=jax.checkpoint_policies.nothing_saveable,
    static_argnums=(7, 8),
)


@_activation_select.defjvp
def _activation_select_jvp(name, layout, primals, tangents):
    # The scale comes from the rounded threshold, so its derivative is zero and
    # only the tangent of x contributes.
    seed, t, drop_all, scale, unscale, x = primals
    z = _activation_select(seed, t, drop_all, scale, unscale, x, name, layout)
    tz = _activation_tangent_remat(
        seed, t, drop_all, scale, unscale, z, tangents[5], name, layout
    )
    return z, tz


_activation_select_jit = jax.jit(_activation_select, static_argnums=(6, 7))


def masked_activation_scale(
    key,
    x: jax.Array,
    rate,
    scale,
    unscale,
    activation: str,
    *,
    broadcast_dims=(),
    manual=None,
) -> jax.Array:
    """``where(keep_mask(key, x.shape, rate, ...), f(x) * scale, 0)`` in one pass.

    ``f`` is the registered ``activation`` (a name from :func:`activation_name`).
    Like :func:`masked_scale` the mask is regenerated in the backward pass, and
    in addition the activation's output is not kept: the derivative is computed
    from the returned array. ``unscale`` is ``1 / scale`` (0 when ``scale`` is 0);
    ``manual`` as in :func:`masked_scale`.
    """
    t, drop_all = _threshold_arrays(rate)
    return _activation_select_jit(
        _seed(key),
        jnp.asarray(t),
        jnp.asarray(drop_all),
        lax.stop_gradient(jnp.asarray(scale, jnp.float32)),
        lax.stop_gradient(jnp.asarray(unscale, jnp.float32)),
        x,
        activation,
        _mask_layout(x.shape, broadcast_dims, manual),
    )


def seed_words(key) -> jax.Array:
    """The two uint32 seed words of ``key``: all a mask depends on besides its
    shape and rate (``keep_mask(key, ...)`` is a function of them alone)."""
    return _seed(key)


def stacked_keep(seeds: jax.Array, shape, rate, *, manual=None) -> jax.Array:
    """Keep decisions of a stack of masks: ``(k, *shape)`` booleans.

    Row ``r`` is exactly ``keep_mask(key_r, shape, rate)`` for the key with
    ``seed_words(key_r) == seeds[r]`` (``seeds`` has shape ``(k, 2)``); inside
    ``jax.shard_map``, ``manual`` (a checked ``shard_spec`` of ``shape``) makes
    each row this shard's block of the global mask. Meant to be fused by XLA into
    the elementwise or reducing consumer of the decisions (per-example
    DropConnect), so that the stack is never materialised. ``rate`` must already
    be checked.
    """
    t, drop_all = _threshold_arrays(rate)
    layout = _mask_layout(tuple(shape), (), manual)
    return jax.vmap(lambda seed: _keep(seed, layout, t, drop_all))(seeds)


def keep_probability(rate):
    """The keep probability that :func:`keep_mask` realises for a drop ``rate``.

    It is ``(2**32 - t) / 2**32`` with ``t = round(rate * 2**32)``, i.e.
    ``1 - rate`` up to ``2**-33``. jaxreg scales by this value (not by
    ``1 - rate``) so that expectations are preserved exactly.

    Args:
      rate: drop probability in ``[0, 1]``; a Python float or a traced scalar.

    Returns:
      A Python float for a concrete ``rate``, otherwise a float32 scalar array.

    Raises:
      ValueError: if a concrete ``rate`` is outside ``[0, 1]`` or NaN.

    Examples:
      >>> import jaxreg
      >>> jaxreg.keep_probability(0.25)
      0.75
      >>> abs(jaxreg.keep_probability(0.1) - 0.9) < 2**-33
      True
    """
    rate = check_rate(rate)
    return _threshold(rate)[1]


def _is_explicit(sharding) -> bool:
    """True if ``sharding`` splits over at least one Explicit mesh axis."""
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types, strict=True))
    names = [n for e in sharding.spec for n in (e if isinstance(e, tuple) else (e,))]
    return any(types.get(n) == AxisType.Explicit for n in names if n is not None)


def _keep_mask(seed, t, drop_all, layout, shape, sharding):
    """The mask of ``layout`` broadcast to ``shape``, laid out by ``sharding``."""
    if sharding is not None and _is_explicit(sharding):
        mask = _keep(seed, layout, t, drop_all, _restrict(sharding, layout.shape))
        return jnp.broadcast_to(mask, shape, out_sharding=sharding)
    mask = jnp.broadcast_to(_keep(seed, layout, t, drop_all), shape)
    if sharding is not None:  # Auto axes: a constraint the partitioner follows
        mask = lax.with_sharding_constraint(mask, sharding)
    return mask


_keep_mask_jit = jax.jit(_keep_mask, static_argnums=(3, 4, 5))


def keep_mask(
    key,
    shape: Sequence[int],
    rate,
    *,
    broadcast_dims: Sequence[int] = (),
    out_sharding=None,
    shard_spec=None,
) -> jax.Array:
    """Draw a Bernoulli keep-mask: ``True`` with probability ``1 - rate``.

    The decision is made in integer bit space: element ``i`` is kept iff its
    32-bit word ``u(i)`` (a keyed hash of ``i``, see the module docstring) is at
    least ``t = round(rate * 2**32)``. So the realised keep probability is exactly
    ``keep_probability(rate) = (2**32 - t) / 2**32`` and the realised rate deviates
    from ``rate`` by at most ``2**-33``.

    The word of an element depends only on the key and the element's global
    index, so a mask is the same whatever its layout: laid out over devices with
    ``out_sharding`` (each device computes its own part, no communication), or
    drawn shard by shard inside ``jax.shard_map`` with ``shard_spec``.

    Args:
      key: a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``, any
        implementation). The same key gives the same mask.
      shape: shape of the mask (with ``shard_spec``: of this shard's block).
      rate: drop probability in ``[0, 1]``: a Python float (validated now) or a
        traced scalar (not validated; values outside ``[0, 1]`` act as the
        nearest end point). Note: the rate is not the keep rate!
      broadcast_dims: axes along which the mask is shared (drawn with size 1 and
        broadcast), e.g. the time axis for variational RNN dropout.
      out_sharding: None, or the sharding of the result: a ``NamedSharding`` or
        a ``PartitionSpec`` of the mesh set with ``jax.set_mesh`` (as for
        ``jax.random.bits``). Over Explicit mesh axes the result has this
        sharding in its type; over Auto axes it is a sharding constraint. Pass
        ``jax.typeof(x).sharding`` to get a mask laid out like ``x``.
      shard_spec: None, or inside ``jax.shard_map`` the ``PartitionSpec`` (over
        the manual mesh axes) by which the global mask is split into the blocks
        the shards draw, i.e. the ``in_specs`` entry of the data the mask goes
        with. Each shard then gets its block of the mask that the same call
        outside ``shard_map`` draws for the global shape, with no
        communication. Broadcast axes are shared by all shards along them.

    Returns:
      A boolean array of shape ``shape``.

    Raises:
      ValueError: bad ``rate``, ``broadcast_dims`` or ``shard_spec`` (rank
        larger than the mask's, an unknown or non-manual mesh axis, an axis
        used twice, used outside ``shard_map``), an ``out_sharding`` spec of
        larger rank than the mask, a negative size in ``shape``, missing or
        batched ``key``.
      TypeError: ``key`` is not a PRNG key; ``out_sharding`` or ``shard_spec``
        of the wrong type; ``shape`` is not a sequence of ints (floats such as
        ``2.5`` and strings such as ``"12"`` are rejected, not converted).

    Examples:
      >>> import jax, jaxreg
      >>> m = jaxreg.keep_mask(jax.random.key(0), (2, 3), 0.5, broadcast_dims=(0,))
      >>> m.shape, bool((m[0] == m[1]).all())
      ((2, 3), True)

      Inside ``shard_map``, each shard draws its block of the global mask:

      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> key = jax.random.key(0)
      >>> @jax.shard_map(mesh=mesh, in_specs=(), out_specs=P("data"))
      ... def block():
      ...     return jaxreg.keep_mask(key, (8,), 0.5, shard_spec=P("data"))
      >>> bool((block() == jaxreg.keep_mask(key, (8,), 0.5)).all())
      True

    References:
      Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting", JMLR 2014. https://jmlr.org/papers/v15/srivastava14a.html
    """
    rate = check_rate(rate)
    shape = check_shape(shape)
    dims = check_broadcast_dims(broadcast_dims, len(shape))
    sharding = check_out_sharding(out_sharding, len(shape))
    manual = check_shard_spec(shard_spec, len(shape))
    if key is not None:  # checked even where rate 0 or 1 makes it unused
        as_key(key)
    value = static_value(rate)
    if sharding is None and value in (0.0, 1.0):
        return jnp.full(shape, value == 0.0)
    seed = _seed(key) if value not in (0.0, 1.0) else jnp.zeros(2, jnp.uint32)
    t, drop_all = _threshold_arrays(rate)
    layout = _mask_layout(shape, dims, manual)
    return _keep_mask_jit(seed, t, drop_all, layout, shape, sharding)


# --- DropBlock, which grows the mask into blocks before the select. As above, a
# jitted checkpoint with nothing saveable: differentiating keeps only the seed
# words and scalars, and the backward pass regenerates the blocks.


def _block_keep(seed, t, drop_all, x, block_size, manual, coupled=False):
    """DropBlock's keep-mask of an NHWC ``x``: a position is kept iff no seed
    of ``keep_mask`` drops in the ``block_size x block_size`` window of the grid
    padded by ``block_size - 1`` that ends at it.

    The window minimum is separable (a minimum over rows, then over columns), so
    it costs ``2 * block_size`` comparisons per element instead of
    ``block_size**2``; the minimum of 0/1 values is exact, so the mask equals the
    one of the 2-D window. ``uint8`` with the identity 255 makes it XLA's
    min-reduce-window, on a quarter of the bytes of the ``uint32`` words.

    Inside ``shard_map`` (``manual`` not None) a shard draws the seeds of its
    block of the padded grid: its own positions plus the ``block_size - 1``
    rows and columns after them (the halo, which its neighbour draws too), so
    blocks that cross shard borders are whole without communication.

    ``coupled``: one seed grid per example, shared by every channel (size 1 on
    the channel axis, which no shard then splits).
    """
    n, h, w, c = x.shape
    pad = block_size - 1
    halo = (0, pad, pad, 0) if manual is not None else ()
    if coupled and manual is not None:
        manual = (*manual[:3], ())
    layout = _Layout((n, h + pad, w + pad, 1 if coupled else c), manual, halo)
    m = _keep_like(seed, layout, t, drop_all, x).astype(jnp.uint8)
    for window in ((1, block_size, 1, 1), (1, 1, block_size, 1)):
        m = lax.reduce_window(m, np.uint8(255), lax.min, window, (1, 1, 1, 1), "VALID")
    return m.astype(bool)


def _select_scaled_blocks(seed, t, drop_all, scale, x, params):
    block_size, manual, coupled = params
    sharding = explicit_sharding(x)
    split = None if sharding is None else spec_entries(sharding.spec, 4)
    if split is None or not (split[1] or split[2]):
        keep = _block_keep(seed, t, drop_all, x, block_size, manual, coupled)
        return _scale_where(keep, x, scale)
    # The spatial axes are split over Explicit mesh axes: blocks cross device
    # borders, so each device draws its block with its halo, as inside
    # shard_map (the shard's position along an axis is major over the outer
    # shard_map's axes, minor over these).
    outer = manual if manual is not None else ((),) * 4
    inner = tuple(a + b for a, b in zip(outer, split, strict=True))

    def local(seed, t, drop_all, scale, x):
        keep = _block_keep(seed, t, drop_all, x, block_size, inner, coupled)
        return _scale_where(keep, x, scale)

    spec = P(*sharding.spec)
    return jax.shard_map(
        local,
        mesh=sharding.mesh,
        in_specs=(P(), P(), P(), P(), spec),
        out_specs=spec,
        axis_names={name for entry in split for name in entry},
    )(seed, t, drop_all, scale, x)


_select_scaled_blocks_remat = _key_only(_select_scaled_blocks)


def masked_scale_blocks(
    key, x: jax.Array, rate, scale, block_size: int, manual=None, coupled=False
):
    """``where(blocks, x * scale, 0)`` for an NHWC ``x``, key-only.

    ``blocks`` is the keep-mask ``keep_mask(key, (N, H + b - 1, W + b - 1, C),
    rate)`` after a ``b x b`` window minimum (``b = block_size``), see
    :func:`_block_keep`. Computed in (at least) float32 and rounded once to
    ``x.dtype``; under autodiff only the seed words and scalars are kept, the
    backward pass regenerates the blocks. ``rate`` (the seed rate) must already be
    checked; ``manual`` as in :func:`masked_scale`; ``coupled`` shares one
    block mask across the channels.
    """
    t, drop_all = _threshold_arrays(rate)
    return _select_scaled_blocks_remat(
        _seed(key),
        jnp.asarray(t),
        jnp.asarray(drop_all),
        jnp.asarray(scale),
        x,
        (block_size, manual, coupled),
    )
