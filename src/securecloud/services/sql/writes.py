"""A transaction's own writes: key -> value (None: deleted), in key order on demand.

A bulk INSERT puts thousands of keys and never scans them before COMMIT, so
the keys are sorted only when a scan asks for a range: a sorted map kept them
in order on every put, which was a fifth of the engine's cost per inserted row.
A scan after a few puts places them one by one; after many, one sort.
"""

from __future__ import annotations

import bisect

_PLACE_ONE_BY_ONE = 32  # unsorted keys placed by insort below this, by one sort above


class Writes(dict):
    __slots__ = ("_sorted", "_unsorted")

    def __init__(self):
        super().__init__()
        self._sorted: list[bytes] | None = []  # None: rebuild from the dict
        self._unsorted: list[bytes] = []  # new keys not yet in _sorted

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

    def irange(self, low: bytes, high: bytes | None) -> list[bytes]:
        """The keys with low <= key < high (no upper bound for None), in order."""
        keys = self._ordered()
        start = bisect.bisect_left(keys, low)
        end = len(keys) if high is None else bisect.bisect_left(keys, high)
        return keys[start:end]

    def nearest(self, low: bytes, high: bytes | None, reverse: bool) -> bytes | None:
        """The first key of irange(low, high) (the last when `reverse`), or None."""
        keys = self._ordered()
        if reverse:
            i = (len(keys) if high is None else bisect.bisect_left(keys, high)) - 1
            return keys[i] if i >= 0 and keys[i] >= low else None
        i = bisect.bisect_left(keys, low)
        return keys[i] if i < len(keys) and (high is None or keys[i] < high) else None

    def _ordered(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted, self._unsorted = sorted(self), []
        elif self._unsorted:
            if len(self._unsorted) < _PLACE_ONE_BY_ONE:
                for key in self._unsorted:
                    bisect.insort(self._sorted, key)
            else:
                self._sorted += self._unsorted
                self._sorted.sort()
            self._unsorted = []
        return self._sorted
