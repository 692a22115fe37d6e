"""The generator's words through an independent battery: Debian's ``dieharder``.

Each stream of raw 32-bit words (``dieharder -g 200`` reads them from stdin) is
the library's own: ``jaxreg._sampler._bits`` of a mask, for two keys; word ``j``
of 64 split keys in turn; the words of two seeds one bit apart, interleaved (bit
0 of the first seed word, bit 31 of the second: the pair whose words had
GF(2)-linear relations under the generator used before); and the keep decisions
at rate 0.5 packed 32 a word. Each runs dieharder's birthday spacings (``-d
0``), 6x8 binary rank (``-d 3``), bitstream (``-d 4``), STS monobit (``-d
100``) and DAB DCT (``-d 206``) tests. No verdict may be FAILED (dieharder's
``p < 1e-6``; about 30 p-values in all, so a correct generator fails with
probability about ``3e-5``; WEAK, ``p < 0.005``, is allowed). The keys are
fixed, so the run is deterministic. The whole module takes under two minutes.

``.ci/run`` installs dieharder where it is missing; these tests skip only where
it is not installed.
"""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _randomness import dieharder, interleave, pack_bits

from jaxreg._sampler import _bits, _seed, _threshold

pytestmark = pytest.mark.skipif(
    shutil.which("dieharder") is None,
    reason="dieharder is not installed (Debian: apt-get install -y dieharder; "
    ".ci/run installs it)",
)

CHUNK = 2**20


@functools.partial(jax.jit, static_argnums=2)
def _block(seed, start, n):
    # Words start .. start + n of a 1-D mask of 2**32 elements, as the library
    # draws them (a block at an offset, like a shard inside shard_map).
    return _bits(seed, (n,), block=((2**32,), (start,)))


def _mask_words(seed):
    for j in range(0, 2**32, CHUNK):
        yield np.asarray(_block(seed, jnp.uint32(j), CHUNK))


def _split_words(key, count=64):
    seeds = jax.vmap(_seed)(jax.random.split(key, count))
    many = jax.jit(jax.vmap(_block, in_axes=(0, None, None)), static_argnums=2)
    for j in range(0, 2**32, CHUNK // count):
        yield np.asarray(many(seeds, jnp.uint32(j), CHUNK // count)).T.ravel()


def _related_words(word, bit):
    seed = _seed(jax.random.key(31))
    flipped = seed.at[word].set(seed[word] ^ np.uint32(1 << bit))
    for a, b in zip(_mask_words(seed), _mask_words(flipped), strict=True):
        yield interleave(a, b)


def _keep_bits(seed):
    t = np.uint32(_threshold(0.5)[0])
    for words in _mask_words(seed):
        yield pack_bits(words >= t)


STREAMS = {
    "mask, key 0": lambda: _mask_words(_seed(jax.random.key(0))),
    "mask, key 1": lambda: _mask_words(_seed(jax.random.key(1))),
    "split keys": lambda: _split_words(jax.random.key(2)),
    "seeds one bit apart (word 0, bit 0)": lambda: _related_words(0, 0),
    "seeds one bit apart (word 1, bit 31)": lambda: _related_words(1, 31),
    "keep bits at rate 0.5": lambda: _keep_bits(_seed(jax.random.key(3))),
}


@pytest.mark.parametrize("stream", list(STREAMS))
def test_no_dieharder_failure(stream):
    for test in (0, 3, 4, 100, 206):
        verdicts = dieharder(STREAMS[stream](), test)
        assert "FAILED" not in verdicts, f"{stream}: dieharder -d {test}: {verdicts}"
