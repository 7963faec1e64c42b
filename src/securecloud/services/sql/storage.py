"""CascaDB's ordered key space on the secure KVS: a log and sorted blocks.

One sorted space of byte keys (keys.py) holds every table and index. A
commit appends its write set as one KVS object `wal/<seq>` (conditional:
must not exist yet, so a second writer on the same database is noticed) and
only then is acknowledged; the entries also go into an in-memory sorted table
(the memtable). A checkpoint merges the memtable into blocks: sorted runs of
about BLOCK_BYTES, immutable, each a KVS object `blk/<n>`, listed with their
first keys in `manifest`, which is swapped together with the new blocks in
one atomic KVS batch. At start the manifest is read and the log after it
replayed, so nothing acknowledged is lost and nothing uncommitted appears.

A transaction's writes stay in its session until commit; a commit fails with
`WriteConflict` when a key it writes was committed by someone else after the
transaction began (first committer wins). Decoded blocks are kept in an LRU
cache inside the trusted process; the KVS only ever sees ciphertext.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from sortedcontainers import SortedDict

from securecloud.services.sql.objects import ObjectStore, Op, VersionConflict

BLOCK_BYTES = 128 * 1024
BATCH_LIMIT = 1000
BATCH_BYTES = 8 * 1024 * 1024  # per KVS batch of new blocks: well inside its timeout
CHUNK = 512  # the most memtable entries per scan chunk
_HEADER = struct.Struct("<I")
_TOMBSTONE = 0xFFFFFFFF
log = logging.getLogger("securecloud.sql")

Entry = tuple[bytes, bytes | None]


class WriteConflict(Exception):
    """Another transaction committed one of these keys first: retry."""


def encode_run(entries: list[Entry]) -> bytes:
    """count | key lengths (u16 each) | value lengths (u32, FFFFFFFF: deleted) | keys | values"""
    keys = [k for k, _ in entries]
    values = [v for _, v in entries]
    return b"".join(
        [
            _HEADER.pack(len(entries)),
            struct.pack(f"<{len(keys)}H", *map(len, keys)),
            struct.pack(f"<{len(values)}I", *(_TOMBSTONE if v is None else len(v) for v in values)),
            *keys,
            *(v for v in values if v is not None),
        ]
    )


def decode_run(data: bytes) -> tuple[list[bytes], list[bytes | None]]:
    (count,) = _HEADER.unpack_from(data)
    key_lengths = struct.unpack_from(f"<{count}H", data, 4)
    value_lengths = struct.unpack_from(f"<{count}I", data, 4 + 2 * count)
    position = 4 + 6 * count
    keys = []
    for length in key_lengths:
        keys.append(data[position : position + length])
        position += length
    values: list[bytes | None] = []
    for length in value_lengths:
        if length == _TOMBSTONE:
            values.append(None)
        else:
            values.append(data[position : position + length])
            position += length
    if position != len(data):
        raise ValueError("run: lengths do not add up to its size")
    return keys, values


@dataclass
class Block:
    name: str
    keys: list[bytes]
    values: list[bytes]

    @property
    def size(self) -> int:
        return sum(map(len, self.keys)) + sum(map(len, self.values)) + 6 * len(self.keys)


class BlockCache:
    """Decoded blocks by name (names are never reused), least recently used out first."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self._blocks: OrderedDict[str, Block] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, name: str) -> Block | None:
        block = self._blocks.get(name)
        if block is not None:
            self._blocks.move_to_end(name)
            self.hits += 1
        else:
            self.misses += 1
        return block

    def put(self, block: Block) -> None:
        if block.name in self._blocks:
            return
        self._blocks[block.name] = block
        self.used += block.size
        while self.used > self.budget and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self.used -= old.size

    def drop(self, name: str) -> None:
        block = self._blocks.pop(name, None)
        if block is not None:
            self.used -= block.size


class Store:
    def __init__(
        self,
        objects: ObjectStore,
        cache_bytes: int = 256 * 1024 * 1024,
        checkpoint_entries: int = 200_000,
    ):
        self.objects = objects
        self.cache = BlockCache(cache_bytes)
        self.checkpoint_entries = checkpoint_entries
        self.lock = threading.RLock()
        self.memtable: SortedDict = SortedDict()  # key -> (seq, value or None)
        self.seq = 0
        self.checkpointed = 0
        self.manifest_version = 0
        self.fences: list[bytes] = []  # first key of each block
        self.block_names: list[str] = []
        self.next_block = 0
        # keys moved out of the memtable by the last checkpoint, with their commit
        # seq: transactions that began before it are still checked against them
        self._checkpointed_seqs: dict[bytes, int] = {}
        self._checkpoint_floor = 0
        self._previous_floor = 0
        self.commits = self.conflicts = self.checkpoints = self.checkpoint_failures = 0
        self._load()

    # -- start ------------------------------------------------------------------------
    def _load(self) -> None:
        found = self.objects.get("manifest")
        if found is not None:
            doc = json.loads(found[0])
            self.manifest_version = found[1]
            self.checkpointed = self.seq = doc["seq"]
            self.next_block = doc["next_block"]
            self.fences = [bytes.fromhex(f) for f, _ in doc["blocks"]]
            self.block_names = [n for _, n in doc["blocks"]]
        self._checkpoint_floor = self._previous_floor = self.seq
        replayed = self._catch_up()
        if replayed:
            log.info("replayed %d committed transactions from the log", replayed)

    def _catch_up(self) -> int:
        """Apply log records that others (or our past self) committed after self.seq."""
        names = self.objects.list("wal/", start_after=f"wal/{self.seq:016d}")
        applied = 0
        for name in names:
            seq = int(name.removeprefix("wal/"))
            if seq != self.seq + 1:
                break
            found = self.objects.get(name)
            if found is None:
                break
            keys, values = decode_run(found[0])
            self._apply(seq, zip(keys, values, strict=True))
            applied += 1
        return applied

    def _apply(self, seq: int, entries) -> None:
        memtable = self.memtable
        for key, value in entries:
            memtable[key] = (seq, value)
        self.seq = seq

    # -- reads ------------------------------------------------------------------------
    def _block(self, position: int) -> Block:
        name = self.block_names[position]
        block = self.cache.get(name)
        if block is None:
            found = self.objects.get(name)
            if found is None:
                raise RuntimeError(f"block {name} is missing from the KVS")
            keys, values = decode_run(found[0])
            block = Block(name, keys, values)  # type: ignore[arg-type]
            self.cache.put(block)
        return block

    def get(self, key: bytes) -> bytes | None:
        hit = self.memtable.get(key)
        if hit is not None:
            return hit[1]
        position = bisect.bisect_right(self.fences, key) - 1
        if position < 0:
            return None
        block = self._block(position)
        i = bisect.bisect_left(block.keys, key)
        if i < len(block.keys) and block.keys[i] == key:
            return block.values[i]
        return None

    def scan(
        self,
        low: bytes,
        high: bytes | None,
        reverse: bool = False,
        overlay: SortedDict | None = None,
    ) -> Iterator[Entry]:
        """Live entries with low <= key < high in key order; `overlay` (a transaction's
        own writes: key -> value or None) wins over the store."""
        return itertools.chain.from_iterable(self.scan_chunks(low, high, reverse, overlay))

    def scan_chunks(
        self,
        low: bytes,
        high: bytes | None,
        reverse: bool = False,
        overlay: SortedDict | None = None,
    ) -> Iterator[list[Entry]]:
        """`scan` as lists of entries (at most a block's worth each), so that callers
        step through a list instead of a generator chain per row. The key space is cut
        at the block fences; each piece is the block's slice, with the memtable's and
        the overlay's entries of that piece merged in only where there are any."""
        fences = self.fences
        pieces: list[tuple[bytes, bytes | None, int | None]] = []
        if not fences or low < fences[0]:
            top = fences[0] if fences else None
            pieces.append((low, _lower(high, top), None))
        if fences:
            first = max(0, bisect.bisect_right(fences, low) - 1)
            last = len(fences) if high is None else bisect.bisect_left(fences, high)
            for position in range(first, last):
                following = fences[position + 1] if position + 1 < len(fences) else None
                pieces.append((max(low, fences[position]), _lower(high, following), position))
        if reverse:
            pieces.reverse()
        for piece_low, piece_high, position in pieces:
            if position is None:
                yield from self._memtable_chunks(piece_low, piece_high, reverse, overlay)
                continue
            block = self._block(position)
            keys = block.keys
            start = bisect.bisect_left(keys, piece_low)
            end = len(keys) if piece_high is None else bisect.bisect_left(keys, piece_high)
            chunk = list(zip(keys[start:end], block.values[start:end], strict=True))
            changes = self._changes(piece_low, piece_high, overlay)
            if changes:
                chunk = _overlaid(chunk, changes)
            if reverse:
                chunk.reverse()
            if chunk:
                yield chunk

    def _changes(self, low: bytes, high: bytes | None, overlay) -> list[Entry]:
        """Memtable entries, then the overlay's, with low <= key < high (later ones win)."""
        memtable = self.memtable
        changes = [(k, memtable[k][1]) for k in memtable.irange(low, high, (True, False))]
        if overlay:
            changes += [(k, overlay[k]) for k in overlay.irange(low, high, (True, False))]
        return changes

    def _memtable_chunks(self, low: bytes, high: bytes | None, reverse: bool, overlay):
        """Keys below the first block (all keys before the first checkpoint), in slices
        of memtable positions (_slices) with the overlay of each slice's span merged in."""
        memtable = self.memtable
        start = memtable.bisect_left(low)
        end = len(memtable) if high is None else memtable.bisect_left(high)
        keys, values = memtable.keys(), memtable.values()
        starts = range(start, end, CHUNK)
        if not starts:
            own = (
                [(k, overlay[k]) for k in overlay.irange(low, high, (True, False))]
                if overlay
                else []
            )
            chunk = [e for e in own if e[1] is not None]
            if reverse:
                chunk.reverse()
            if chunk:
                yield chunk
            return
        for i, j in _slices(start, end, reverse):
            chunk = [(k, v[1]) for k, v in zip(keys[i:j], values[i:j], strict=True)]
            if overlay:
                span_low = low if i == start else keys[i]
                span_high = high if j == end else keys[j]
                own = [(k, overlay[k]) for k in overlay.irange(span_low, span_high, (True, False))]
                chunk = _overlaid(chunk, own)
            elif any(v is None for _, v in chunk):
                chunk = [e for e in chunk if e[1] is not None]
            if reverse:
                chunk.reverse()
            if chunk:
                yield chunk

    # -- writes -----------------------------------------------------------------------
    def commit(self, writes: SortedDict, started: int) -> int:
        """Make `writes` (key -> value, None: delete) durable; return its seq."""
        if not writes:
            return self.seq
        record = encode_run(list(writes.items()))
        with self.lock:
            self._check_conflicts(writes, started)
            while True:
                seq = self.seq + 1
                try:
                    self.objects.batch([Op(f"wal/{seq:016d}", record, if_match=0)])
                    break
                except VersionConflict:
                    # another server committed first: take its records, then recheck
                    self._catch_up()
                    self._check_conflicts(writes, started)
            self._apply(seq, writes.items())
            self.commits += 1
            if len(self.memtable) >= self.checkpoint_entries:
                try:
                    self.checkpoint()
                except Exception as exc:  # the commit is durable: say so, checkpoint later
                    self.checkpoint_failures += 1
                    log.warning("checkpoint failed, will retry at the next commit: %s", exc)
            return seq

    def _check_conflicts(self, writes: SortedDict, started: int) -> None:
        memtable = self.memtable
        older = started < self._checkpoint_floor
        if started < self._previous_floor:
            self.conflicts += 1
            raise WriteConflict(
                "could not serialize access: the transaction is older than two checkpoints"
            )
        for key in writes:
            hit = memtable.get(key)
            if (hit is not None and hit[0] > started) or (
                older and self._checkpointed_seqs.get(key, 0) > started
            ):
                self.conflicts += 1
                raise WriteConflict(
                    "could not serialize access: a row this transaction writes was "
                    "changed by another transaction that committed first"
                )

    def checkpoint(self) -> int:
        """Merge the memtable into blocks; returns the number of blocks written."""
        with self.lock:
            if not self.memtable:
                return 0
            entries = list(self.memtable.items())
            groups: dict[int, list[tuple[bytes, bytes | None]]] = {}
            for key, (_, value) in entries:
                position = max(0, bisect.bisect_right(self.fences, key) - 1)
                groups.setdefault(position if self.fences else -1, []).append((key, value))
            new_fences = list(self.fences)
            new_names = list(self.block_names)
            puts: list[Op] = []
            retired: list[str] = []
            written: list[Block] = []
            # right to left, so that replacing one block by several keeps positions valid
            for position in sorted(groups, reverse=True):
                changes = groups[position]
                if position >= 0:
                    old = self._block(position)
                    merged = _merge_block(old.keys, old.values, changes)
                    retired.append(old.name)
                else:
                    merged = [(k, v) for k, v in changes if v is not None]
                blocks = []
                for run in _split(merged):
                    name = f"blk/{self.next_block:012d}"
                    self.next_block += 1
                    block = Block(name, [k for k, _ in run], [v for _, v in run])
                    blocks.append(block)
                    puts.append(Op(name, encode_run(run), if_match=0))
                written += blocks
                start = max(position, 0)
                stop = position + 1 if position >= 0 else 0
                new_fences[start:stop] = [b.keys[0] for b in blocks]
                new_names[start:stop] = [b.name for b in blocks]
            manifest = json.dumps(
                {
                    "seq": self.seq,
                    "next_block": self.next_block,
                    "blocks": [[f.hex(), n] for f, n in zip(new_fences, new_names, strict=True)],
                }
            ).encode()
            for group in _by_size(puts):  # new blocks: unreferenced until the manifest moves
                self.objects.batch(group)
            try:
                self.objects.batch(
                    [Op("manifest", manifest, if_match=self.manifest_version)]
                    + [Op(name, None) for name in retired[: BATCH_LIMIT - 1]]
                )
            except VersionConflict:
                # another server checkpointed: ours is garbage, theirs is the truth
                self.objects.batch([Op(b.name, None) for b in written][:BATCH_LIMIT])
                raise
            self.manifest_version += 1
            for start in range(BATCH_LIMIT - 1, len(retired), BATCH_LIMIT):
                self.objects.batch([Op(n, None) for n in retired[start : start + BATCH_LIMIT]])
            self._drop_log(self.checkpointed, self.seq)
            for name in retired:
                self.cache.drop(name)
            for block in written:
                self.cache.put(block)
            self.fences, self.block_names = new_fences, new_names
            self._checkpointed_seqs = {k: s for k, (s, _) in entries}
            self._previous_floor = self._checkpoint_floor
            self._checkpoint_floor = self.seq
            self.checkpointed = self.seq
            self.memtable = SortedDict()
            self.checkpoints += 1
            return len(written)

    def _drop_log(self, after: int, upto: int) -> None:
        names = [f"wal/{seq:016d}" for seq in range(after + 1, upto + 1)]
        for start in range(0, len(names), BATCH_LIMIT):
            try:
                self.objects.batch([Op(n, None) for n in names[start : start + BATCH_LIMIT]])
            except Exception as exc:  # the manifest moved past them: only garbage remains
                log.warning("could not delete old log records: %s", exc)

    def stats(self) -> dict:
        return {
            "seq": self.seq,
            "checkpointed": self.checkpointed,
            "memtable_entries": len(self.memtable),
            "blocks": len(self.block_names),
            "cache_bytes": self.cache.used,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "commits": self.commits,
            "conflicts": self.conflicts,
            "checkpoints": self.checkpoints,
            "checkpoint_failures": self.checkpoint_failures,
        }


def _by_size(ops: list[Op], limit: int = BATCH_BYTES) -> Iterator[list[Op]]:
    """KVS batches of at most BATCH_LIMIT operations and about `limit` bytes each."""
    group: list[Op] = []
    size = 0
    for op in ops:
        if group and (len(group) == BATCH_LIMIT or size + len(op.data or b"") > limit):
            yield group
            group, size = [], 0
        group.append(op)
        size += len(op.data or b"")
    if group:
        yield group


def _slices(start: int, end: int, reverse: bool) -> Iterator[tuple[int, int]]:
    """[i, j) pieces of start..end from the front (or the back), 16 positions first and
    growing to CHUNK: a LIMIT 1 query copies 16 entries, a full scan big slices."""
    step = min(16, CHUNK)
    if reverse:
        while end > start:
            yield max(start, end - step), end
            end, step = end - step, min(step * 4, CHUNK)
    else:
        while start < end:
            yield start, min(end, start + step)
            start, step = start + step, min(step * 4, CHUNK)


def _lower(a: bytes | None, b: bytes | None) -> bytes | None:
    """The lower of two upper bounds, None meaning unbounded."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _overlaid(chunk: list[Entry], changes: list[Entry]) -> list[Entry]:
    """`chunk` with `changes` applied in order (None deletes), sorted, tombstones gone."""
    merged = dict(chunk)
    merged.update(changes)
    return sorted(e for e in merged.items() if e[1] is not None)


def _merge_block(keys: list[bytes], values: list[bytes], changes: list) -> list:
    merged = dict(zip(keys, values, strict=True))
    for key, value in changes:
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return sorted(merged.items())


def _split(entries: list) -> list[list]:
    runs, current, size = [], [], 0
    for key, value in entries:
        current.append((key, value))
        size += len(key) + len(value) + 6
        if size >= BLOCK_BYTES:
            runs.append(current)
            current, size = [], 0
    if current:
        runs.append(current)
    return runs
