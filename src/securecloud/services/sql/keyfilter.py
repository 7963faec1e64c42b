"""Which keys a sorted run may hold: a Bloom filter, so that inserting a new key does
not search every run for it.

Each INSERT must know that its key is new. Finding that out in a run means a binary
search through a block of keys scattered over memory: at a few million rows that
was the engine's largest cost per inserted row (cache misses, not comparisons).
The filter answers "certainly not here" for most new keys with two bit tests.

Bits come from Python's own hash of the key (64 bits, two 32-bit halves as the
two probes): a dict lookup of the same key object has already computed and cached
it, so a probe costs no hashing. That hash is salted per process, so a filter is
built when its run is written and lives in memory only; runs read from the
manifest at start have none and are searched as before.
"""

from __future__ import annotations

from array import array

import numpy as np

BITS_PER_KEY = 16  # two probes: about 1.4 % of absent keys still searched
_U64 = (1 << 64) - 1


class KeyFilter:
    __slots__ = ("_bits", "_mask")

    def __init__(self, hashes: array):
        """`hashes`: hash(key) of every key of the run (typecode "q")."""
        size = 64
        while size < BITS_PER_KEY * len(hashes):
            size *= 2
        self._mask = size - 1
        unsigned = np.frombuffer(hashes, np.int64).view(np.uint64)
        flags = np.zeros(size, bool)
        flags[unsigned & np.uint64(self._mask)] = True
        flags[(unsigned >> np.uint64(32)) & np.uint64(self._mask)] = True
        self._bits = np.packbits(flags, bitorder="little").tobytes()

    def may_hold(self, key: bytes) -> bool:
        h = hash(key) & _U64
        bits, mask = self._bits, self._mask
        low, high = h & mask, (h >> 32) & mask
        return bool(bits[low >> 3] >> (low & 7) & 1 and bits[high >> 3] >> (high & 7) & 1)

    @property
    def size_bytes(self) -> int:
        return len(self._bits)
