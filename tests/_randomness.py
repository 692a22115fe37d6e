"""Statistical tests of streams of 32-bit words, written for jaxreg (no tests here).

Used by ``tests/test_generator.py`` (quick runs in the suite) and by
``benchmarks/generator_quality.py`` (longer runs next to dieharder and PractRand).
Every test takes a 1-D ``uint32`` numpy array and returns a :class:`Result` with
a p-value under the hypothesis "independent uniform words"; :data:`ALPHA` is the
threshold below which a result counts as a failure. All p-values are two-sided
where a too-regular stream is as suspect as a too-irregular one (a bijection of
a counter makes byte counts *too* even, and gives no collisions at all).

The tests:

* :func:`monobit`: the number of one bits, normal approximation of the
  binomial ``B(32 n, 1/2)``;
* :func:`bit_positions`: the ones of each of the 32 bit positions, chi-square
  with 32 degrees of freedom;
* :func:`byte_frequency`: the counts of the 256 values of each of the 4 byte
  lanes, chi-square with ``4 * 255`` degrees of freedom;
* :func:`matrix_rank`: GF(2) ranks of square bit matrices filled row by row
  from consecutive words (``size / 32`` words a row), chi-square of the counts
  of ranks ``size``, ``size - 1`` and ``<= size - 2`` against the exact rank
  distribution of a uniform matrix (Marsaglia and Tsay 1985; the binary-matrix
  rank test of NIST SP 800-22). It finds GF(2)-linear relations between bits
  of nearby words, e.g. between the interleaved words of two related seeds;
* :func:`adjacent_xor`: the bit positions of ``w[2j] ^ w[2j+1]`` (chi-square,
  32 degrees of freedom), a first-order differential of interleaved pairs;
* :func:`birthday`: the number of repeated values among the words, Poisson
  with mean ``n (n - 1) / 2**33`` (Marsaglia's birthday spacings idea in its
  simplest form). A bijection of a counter never repeats a word: at
  ``n = 2**20`` words the expected count is 128 and 0 has probability
  ``exp(-128)``.

References:
  G. Marsaglia and L.-H. Tsay, "Matrix analysis and the rank of random
  matrices", Linear Algebra Appl. 67 (1985). A. Rukhin et al., "A Statistical
  Test Suite for Random and Pseudorandom Number Generators", NIST SP 800-22
  Rev. 1a (2010), sections 2.1 and 2.5.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from scipy import stats

from jaxreg._sampler import _mix

#: A test fails when its p-value is below this (per test; a run of ``m`` tests
#: of a good generator fails with probability about ``m * ALPHA``).
ALPHA = 1e-6


class Result(NamedTuple):
    """One test's outcome: its name, statistic and p-value."""

    name: str
    statistic: float
    p: float

    @property
    def passed(self) -> bool:
        return self.p >= ALPHA


def _two_sided(sf: float, cdf: float) -> float:
    return float(min(1.0, 2 * min(sf, cdf)))


def _chi2(observed, expected, dof: int, name: str) -> Result:
    observed = np.asarray(observed, np.float64)
    expected = np.asarray(expected, np.float64)
    chi = float(((observed - expected) ** 2 / expected).sum())
    return Result(
        name, chi, _two_sided(stats.chi2.sf(chi, dof), stats.chi2.cdf(chi, dof))
    )


def _bits(words: np.ndarray) -> np.ndarray:
    """``(n, 32)`` 0/1 array of the bits of ``words``, least significant first."""
    return (words[:, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)


def monobit(words: np.ndarray) -> Result:
    """Total number of one bits against ``B(32 n, 1/2)``."""
    n = 32 * words.size
    ones = int(np.unpackbits(words.view(np.uint8)).sum())
    z = (ones - n / 2) / math.sqrt(n / 4)
    return Result("monobit", z, float(2 * stats.norm.sf(abs(z))))


def bit_positions(words: np.ndarray, name: str = "bit positions") -> Result:
    """Ones at each bit position: chi-square, 32 degrees of freedom."""
    n = words.size
    ones = _bits(words).sum(0, dtype=np.int64)
    z2 = (ones - n / 2) ** 2 / (n / 4)
    chi = float(z2.sum())
    return Result(
        name, chi, _two_sided(stats.chi2.sf(chi, 32), stats.chi2.cdf(chi, 32))
    )


def byte_frequency(words: np.ndarray) -> Result:
    """Counts of each byte value in each of the 4 byte lanes: chi-square, 1020 dof."""
    lanes = words.view(np.uint8).reshape(-1, 4)
    counts = np.stack([np.bincount(lanes[:, b], minlength=256) for b in range(4)])
    return _chi2(
        counts, np.full(counts.shape, words.size / 256), 4 * 255, "byte frequency"
    )


def adjacent_xor(words: np.ndarray) -> Result:
    """Bit positions of ``w[2j] ^ w[2j + 1]``: 32 degrees of freedom."""
    m = words.size // 2
    return bit_positions(words[0 : 2 * m : 2] ^ words[1 : 2 * m : 2], "adjacent xor")


def rank_probabilities(size: int) -> dict[int, float]:
    """``P(rank = r)`` of a uniform ``size x size`` GF(2) matrix, for the top ranks.

    ``P(r) = 2**(r (2 size - r) - size**2) * prod_{i<r} (1 - 2**(i - size))**2 /
    (1 - 2**(i - r))`` (Marsaglia and Tsay 1985).
    """
    out = {}
    for r in range(size - 8, size + 1):
        p = 2.0 ** (r * (2 * size - r) - size * size)
        for i in range(r):
            p *= (1 - 2.0 ** (i - size)) ** 2 / (1 - 2.0 ** (i - r))
        out[r] = p
    return out


def gf2_ranks(words: np.ndarray, size: int) -> np.ndarray:
    """GF(2) ranks of consecutive ``size x size`` bit matrices (``size`` a multiple
    of 64, or 32); row ``i`` of a matrix is ``size / 32`` consecutive words."""
    if size == 32:
        limbs = 1
        rows = words.astype(np.uint64)
    else:
        limbs = size // 64
        pairs = words[: words.size // 2 * 2].astype(np.uint64).reshape(-1, 2)
        rows = pairs[:, 0] | (pairs[:, 1] << np.uint64(32))
    width = 32 if size == 32 else 64
    count = rows.size // (size * limbs)
    rows = rows[: count * size * limbs].reshape(count, size, limbs).copy()
    rank = np.zeros(count, np.int64)
    free = np.ones((count, size), bool)  # rows not used as a pivot yet
    every = np.arange(count)
    for c in range(size):
        limb, bit = divmod(c, width)
        col = ((rows[:, :, limb] >> np.uint64(bit)) & np.uint64(1)).astype(bool) & free
        found = col.any(1)
        pivot = col.argmax(1)
        pivot_row = rows[every, pivot]
        col[every, pivot] = False
        rows ^= np.where(col[:, :, None], pivot_row[:, None, :], np.uint64(0))
        free[every, pivot] &= ~found
        rank += found
    return rank


def matrix_rank(words: np.ndarray, size: int = 32) -> Result:
    """GF(2) ranks of ``size x size`` matrices: counts of ranks ``size``,
    ``size - 1`` and ``<= size - 2``, chi-square with 2 degrees of freedom."""
    ranks = gf2_ranks(words, size)
    probs = rank_probabilities(size)
    p_full, p_one = probs[size], probs[size - 1]
    observed = [
        (ranks == size).sum(),
        (ranks == size - 1).sum(),
        (ranks < size - 1).sum(),
    ]
    expected = np.array([p_full, p_one, 1 - p_full - p_one]) * ranks.size
    return _chi2(observed, expected, 2, f"rank {size}x{size}")


def birthday(words: np.ndarray) -> Result:
    """Repeated values among ``n`` words against Poisson(``n (n - 1) / 2**33``)."""
    n = words.size
    repeats = n - np.unique(words).size
    mean = n * (n - 1) / 2.0**33
    p = _two_sided(
        stats.poisson.sf(repeats - 1, mean), stats.poisson.cdf(repeats, mean)
    )
    return Result("birthday", float(repeats), p)


def battery(words: np.ndarray, *, rank_sizes=(32, 128)) -> list[Result]:
    """All the tests above on one stream (the birthday test on its first
    ``2**20`` words, where a bijection has probability ``exp(-128)``)."""
    words = np.ascontiguousarray(words, np.uint32).ravel()
    results = [monobit(words), bit_positions(words), byte_frequency(words)]
    results += [matrix_rank(words, size) for size in rank_sizes]
    results.append(adjacent_xor(words))
    if words.size >= 2**20:
        results.append(birthday(words[: 2**20]))
    return results


def interleave(*streams: np.ndarray) -> np.ndarray:
    """``a[0], b[0], ..., a[1], b[1], ...`` of equally long streams."""
    return np.stack(streams, axis=1).ravel()


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """A boolean mask's bits packed 32 a word, element ``32 j + k`` in bit ``k``
    of word ``j`` (a tail shorter than 32 is dropped)."""
    m = np.asarray(mask, bool).ravel()
    packed = np.packbits(m[: m.size // 32 * 32], bitorder="little")  # bit k of byte i
    return packed.view("<u4").astype(np.uint32, copy=False)  # bytes 4j..4j+3: word j


def elias_table(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Elias' extractor for blocks of ``n`` biased bits, as a lookup table.

    Returns ``(values, lengths)`` indexed by the block's bits read as an
    integer (bit ``k`` = element ``k``): the block gives the ``lengths[b]``
    low bits of ``values[b]``. The ``C(n, w)`` blocks of weight ``w`` are
    numbered ``r = 0 .. C(n, w) - 1`` in increasing order; writing
    ``C(n, w)`` as a sum of distinct powers of two ``2**e`` (largest first), a
    block whose number falls in the part ``2**e`` gives ``r`` minus the parts
    before it, as ``e`` bits. The highest bit where ``r`` and ``C(n, w)``
    differ is that ``e``, and the parts before it are the bits of ``C(n, w)``
    above ``e``. For independent Bernoulli(``p``) elements every block of one
    weight is equally likely, so given the lengths the output bits are
    independent and exactly fair, whatever ``p``; any bias or correlation left
    in them comes from dependence between the elements. At ``p = 0.1`` and
    ``n = 16`` a block gives 0.29 bits per element (von Neumann's pairs: 0.09;
    the entropy bound: 0.47).

    References:
      P. Elias, "The efficient construction of an unbiased random sequence",
      Ann. Math. Statist. 43(3) (1972).
    """
    blocks = np.arange(2**n, dtype=np.int64)
    weight = np.unpackbits(blocks.astype("<u4").view(np.uint8)).reshape(-1, 32).sum(1)
    order = np.argsort(weight, kind="stable")  # by weight, increasing within one
    start = np.searchsorted(weight[order], np.arange(n + 1))
    rank = np.empty_like(blocks)
    rank[order] = blocks - start[weight[order]]
    size = np.array([math.comb(n, w) for w in range(n + 1)], np.int64)[weight]
    powers = 2 ** np.arange(n + 1, dtype=np.int64)
    length = (size ^ rank)[:, None] >= powers  # size > rank, so size ^ rank >= 1
    length = length.sum(1) - 1  # the highest bit of size ^ rank
    return (rank & (powers[length] - 1)).astype(np.uint32), length.astype(np.uint8)


def elias_bits(mask, values, lengths, xp=np):
    """The output of :func:`elias_table`'s ``(values, lengths)`` on consecutive
    blocks of a mask whose size is a multiple of the block length, as
    ``(bits, used)``: each block's value as bits (lowest first) and which of
    them it gives (its first ``length``); ``bits[used]`` is the output. ``xp``
    is ``numpy`` or ``jax.numpy`` (then inside a jitted function)."""
    n = int(values.size).bit_length() - 1
    position = xp.arange(n, dtype=xp.uint32)
    block = (mask.reshape(-1, n).astype(xp.uint32) << position).sum(1)
    bits = (values[block, None] >> position) & 1
    return bits.astype(bool), position < lengths[block, None]


def elias(mask: np.ndarray, n: int = 16) -> np.ndarray:
    """Fair bits from a biased mask by :func:`elias_table` over consecutive
    blocks of ``n`` elements, packed into words (a tail shorter than a block
    is dropped)."""
    m = np.asarray(mask, bool).ravel()
    bits, used = elias_bits(m[: m.size // n * n], *elias_table(n))
    return pack_bits(bits[used])


def pipe_to(command: list[str], chunks: Iterable[np.ndarray], limit_s: float) -> str:
    """Feed uint32 ``chunks`` to ``command``'s stdin until it exits (or for
    ``limit_s`` seconds); its output."""
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    start = time.monotonic()
    try:
        for chunk in chunks:
            proc.stdin.write(np.asarray(chunk, np.uint32).tobytes())
            if time.monotonic() - start > limit_s:
                break
        proc.stdin.close()
    except BrokenPipeError:
        pass
    out = proc.stdout.read().decode(errors="replace")
    proc.wait()
    return out


def dieharder(chunks: Iterable[np.ndarray], test: int) -> list[str]:
    """Verdicts (PASSED, WEAK or FAILED, one per p-value) of ``dieharder -g 200
    -d test`` reading the raw words of ``chunks`` from stdin."""
    out = pipe_to(["dieharder", "-g", "200", "-d", str(test)], chunks, 600)
    verdicts = re.findall(r"\|\s*(PASSED|WEAK|FAILED)\s*$", out, re.M)
    if not verdicts:
        raise RuntimeError(f"dieharder -d {test} gave no verdict:\n{out}")
    return verdicts


# --- The generator jaxreg used before issue 17, kept as the known-bad control:
# its words are a bijection of the index (no repeats, byte counts too even), and
# a one-bit change of the second seed word passes a single mixer round, so the
# interleaved words of the two seeds have GF(2)-linear relations.


def previous_hash(seed, index):
    """The previous word of linear ``index``: ``g(g(g(i) ^ k0) ^ k1)`` with the
    lowbias32 round ``g`` (:func:`jaxreg._sampler._mix`), on uint32 arrays."""
    return _mix(_mix(_mix(index) ^ seed[0]) ^ seed[1])
