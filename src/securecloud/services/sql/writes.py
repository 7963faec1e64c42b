"""Dicts of byte keys whose keys are put in order only when a reader asks for a range:
a transaction's own writes, and the store's memtable of recent commits.

A bulk INSERT puts thousands of keys and never scans them before COMMIT, so
keeping them sorted on every put (a sorted map: a fifth of the engine's cost per
inserted row in a transaction, a tenth in the memtable) is wasted. Keys new since
the last read are kept aside; a read sorts them and merges them in: one by one
(bisect and insert) when few, by slices of the old order when many, by one sort
when they are most of it.
"""

from __future__ import annotations

import bisect
from itertools import filterfalse, repeat

_PLACE_ONE_BY_ONE = 32  # unsorted keys placed by insort below this
_SORT_ALL = 4  # ... merged by slices below 1/_SORT_ALL of the sorted keys, else one sort


class KeysInOrder(dict):
    __slots__ = ("_sorted", "_unsorted")

    def __init__(self):
        super().__init__()
        self._sorted: list[bytes] | None = []  # None: rebuild from the dict
        self._unsorted: list[bytes] = []  # new keys not yet in _sorted

    def ordered(self) -> list[bytes]:
        """Every key in order (a list the caller must not change)."""
        if self._sorted is None:
            self._sorted, self._unsorted = sorted(self), []
        elif self._unsorted:
            self._sorted = _merge(self._sorted, self._unsorted)
            self._unsorted = []
        return self._sorted

    def irange(self, low: bytes, high: bytes | None) -> list[bytes]:
        """The keys with low <= key < high (no upper bound for None), in order."""
        keys = self.ordered()
        start = bisect.bisect_left(keys, low)
        end = len(keys) if high is None else bisect.bisect_left(keys, high)
        return keys[start:end]

    def nearest(self, low: bytes, high: bytes | None, reverse: bool) -> bytes | None:
        """The first key of irange(low, high) (the last when `reverse`), or None."""
        keys = self.ordered()
        if reverse:
            i = (len(keys) if high is None else bisect.bisect_left(keys, high)) - 1
            return keys[i] if i >= 0 and keys[i] >= low else None
        i = bisect.bisect_left(keys, low)
        return keys[i] if i < len(keys) and (high is None or keys[i] < high) else None


def _merge(old: list[bytes], new: list[bytes]) -> list[bytes]:
    """`old` (sorted) with the `new` keys (none of them in old) in order."""
    if len(new) < _PLACE_ONE_BY_ONE:
        for key in new:
            bisect.insort(old, key)
        return old
    new = sorted(new)
    if len(new) * _SORT_ALL >= len(old):
        return sorted(old + new)
    merged: list[bytes] = []
    start = 0
    for key, at in zip(new, map(bisect.bisect_left, repeat(old), new), strict=True):
        merged += old[start:at]
        merged.append(key)
        start = at
    merged += old[start:]
    return merged


class Writes(KeysInOrder):
    """A transaction's writes: key -> value (None: deleted)."""

    __slots__ = ()

    def __setitem__(self, key: bytes, value: bytes | None) -> None:
        if key not in self:
            self._unsorted.append(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self._sorted, self._unsorted = None, []  # only a statement's undo deletes

    def _unsupported(self, *args, **kwargs):
        raise TypeError("Writes change by `writes[key] = value` and `del writes[key]` only")

    update = pop = popitem = setdefault = clear = _unsupported  # they would skip the above


class Memtable(KeysInOrder):
    """Committed entries not yet in a run: key -> (commit seq, value or None: deleted).
    Keys are never removed (a delete is a None value); a full memtable is frozen and a
    new one started."""

    __slots__ = ()

    def apply(self, seq: int, keys: list[bytes], values: list[bytes | None]) -> None:
        """One commit's entries, at C speed: no Python step per key."""
        self._unsorted += filterfalse(self.__contains__, keys)
        self.update(zip(keys, zip(repeat(seq), values, strict=False), strict=True))
