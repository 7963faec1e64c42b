"""CascaDB's ordered key space on the secure KVS: a log and sorted runs of blocks.

One sorted space of byte keys (keys.py) holds every table and index. A
commit appends its write set as one KVS object `wal/<seq>` (conditional:
must not exist yet, so a second writer on the same database is noticed) and
only then is acknowledged; the entries also go into an in-memory table (the
memtable, its keys put in order when a read asks: writes.py). A checkpoint
writes the memtable as a new sorted run, on a thread of its own while commits
go on (the full memtable is frozen and read after the new one until its run
is in the manifest): blocks of about BLOCK_BYTES, immutable, each a KVS
object `blk/<n>`, deletes kept as tombstones while older runs may hold the
key. Runs are listed newest first in
`manifest`, which moves in one atomic KVS batch. Runs are merged size-tiered
(a run is merged into when the newer data reaches TIER_RATIO times its size;
never more than MAX_RUNS), so a key is rewritten a logarithmic number of times
instead of its whole block at every checkpoint that touches it: time-major
metering inserts touch every meter's block at every checkpoint. At start the
manifest is read and the log after it replayed, so nothing acknowledged is
lost and nothing uncommitted appears.

Reads merge the overlay (a transaction's own writes), the memtable and the
runs newest to oldest, a list at a time: up to the smallest last key of the
lists at hand, the newer entries win (a dict), then one sort. The first entry
of a range (LIMIT 1, a unique key) is one seek in each source instead (`first`);
a point read skips the runs whose key filter rules the key out (keyfilter.py).

A transaction's writes stay in its session until commit; a commit fails with
`WriteConflict` when a key it writes was committed by someone else after the
transaction began (first committer wins). Decoded blocks are kept in an LRU
cache inside the trusted process; the KVS only ever sees ciphertext.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter

from securecloud.services.sql.keyfilter import KeyFilter
from securecloud.services.sql.objects import ObjectStore, Op, VersionConflict
from securecloud.services.sql.writes import Memtable, Writes

BLOCK_BYTES = 128 * 1024
# entries that fill the memtable: larger means fewer rewrites of old runs (time-major
# loads rewrite about log2(rows / this) times) but more memory and more log to
# replay at start; 500,000 readings take about 150 MB and replay in seconds
CHECKPOINT_ENTRIES = 500_000
# what the memtables hold at most (filling, being written, kept for conflict checks),
# at about 300 bytes a metering reading: part of the heap the service declares
MEMTABLES_MB = 3 * CHECKPOINT_ENTRIES * 300 // 2**20
BATCH_LIMIT = 1000
BATCH_BYTES = 8 * 1024 * 1024  # per KVS batch of new blocks: well inside its timeout
TIER_RATIO = 2  # merge into a run once the newer data is twice its size
MAX_RUNS = 8
CHUNK = 1024  # the most entries per scan chunk
_HEADER = struct.Struct("<I")
_TOMBSTONE = 0xFFFFFFFF
log = logging.getLogger("securecloud.sql")

Entry = tuple[bytes, bytes | None]
_KEY, _VALUE = itemgetter(0), itemgetter(1)  # of an entry, or a memtable's (seq, value)
_NEVER = (0, None)


class WriteConflict(Exception):
    """Another transaction committed one of these keys first: retry."""


def encode_run(keys: list[bytes], values: list[bytes | None]) -> bytes:
    """count | key lengths (u16 each) | value lengths (u32, FFFFFFFF: deleted) | keys | values"""
    if None in values:
        lengths = [_TOMBSTONE if v is None else len(v) for v in values]
        values = [v for v in values if v is not None]
    else:
        lengths = list(map(len, values))
    return b"".join(
        [
            _HEADER.pack(len(keys)),
            struct.pack(f"<{len(keys)}H", *map(len, keys)),
            struct.pack(f"<{len(lengths)}I", *lengths),
            *keys,
            *values,
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
    values: list[bytes | None]  # None: deleted (a tombstone)
    size: int  # encoded bytes


class BlockCache:
    """Decoded blocks by name (names are never reused), least recently used out first;
    shared by the statements and the checkpoint writer thread (a lock for changes)."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self._blocks: OrderedDict[str, Block] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, name: str) -> Block | None:
        # no lock on this path (a point read's cost was a third lock): each OrderedDict
        # call is one step under the GIL, and a block evicted between the two is still
        # the right block (names are never reused); a hit or miss counted at the same
        # moment by the checkpoint thread may be lost from the counts
        blocks = self._blocks
        block = blocks.get(name)
        if block is None:
            self.misses += 1
            return None
        try:  # noqa: SIM105 (contextlib.suppress: a context manager on every hit)
            blocks.move_to_end(name)
        except KeyError:
            pass  # evicted meanwhile
        self.hits += 1
        return block

    def put(self, block: Block) -> None:
        with self._lock:
            if block.name in self._blocks:
                return
            self._blocks[block.name] = block
            self.used += block.size
            while self.used > self.budget and len(self._blocks) > 1:
                _, old = self._blocks.popitem(last=False)
                self.used -= old.size

    def drop(self, name: str) -> None:
        with self._lock:
            block = self._blocks.pop(name, None)
            if block is not None:
                self.used -= block.size


@dataclass(frozen=True)
class Run:
    """A sorted run of blocks: the first key and the name of each, in key order."""

    fences: list[bytes]
    names: list[str]
    entries: int
    tombstones: bool  # may hold deletes (every run but the oldest)
    # its keys, deletes included, when this process wrote it (None: read at start)
    key_filter: KeyFilter | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        return {
            "blocks": [[f.hex(), n] for f, n in zip(self.fences, self.names, strict=True)],
            "entries": self.entries,
            "tombstones": self.tombstones,
        }

    @classmethod
    def from_json(cls, doc: dict) -> Run:
        return cls(
            [bytes.fromhex(f) for f, _ in doc["blocks"]],
            [n for _, n in doc["blocks"]],
            doc["entries"],
            doc["tombstones"],
        )


class Store:
    def __init__(
        self,
        objects: ObjectStore,
        cache_bytes: int = 256 * 1024 * 1024,
        checkpoint_entries: int = CHECKPOINT_ENTRIES,
        background: bool = True,
    ):
        """`background`: a full memtable is written by a thread while commits go on (off:
        in the commit that filled it, which tests of the merge policy want)."""
        self.objects = objects
        self.background = background
        self.cache = BlockCache(cache_bytes)
        self.checkpoint_entries = checkpoint_entries
        self.lock = threading.RLock()
        self.memtable = Memtable()
        # the memtable being written as a run (read after the memtable, before the runs),
        # the last seq it holds, and the thread writing it with what it left behind
        self.frozen: Memtable | None = None
        self._frozen_seq = 0
        self._writer: threading.Thread | None = None
        self._written: tuple | BaseException | None = None
        self.seq = 0
        self.checkpointed = 0
        self.manifest_version = 0
        self.runs: list[Run] = []  # newest first
        self.next_block = 0
        # keys moved out of the memtable by the last checkpoint, with their commit
        # seq: transactions that began before it are still checked against them
        self._checkpointed: dict = {}  # key -> (seq, value): the last checkpoint's memtable
        self._checkpoint_floor = 0
        self._previous_floor = 0
        self.commits = self.conflicts = self.checkpoints = self.checkpoint_failures = 0
        self.compactions = 0
        self._load()

    # -- start ------------------------------------------------------------------------
    def _load(self) -> None:
        found = self.objects.get("manifest")
        if found is not None:
            doc = json.loads(found[0])
            self.manifest_version = found[1]
            self.checkpointed = self.seq = doc["seq"]
            self.next_block = doc["next_block"]
            self.runs = [Run.from_json(r) for r in doc["runs"]]
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
            self._apply(seq, *decode_run(found[0]))
            applied += 1
        return applied

    def _apply(self, seq: int, keys: list[bytes], values: list[bytes | None]) -> None:
        self.memtable.apply(seq, keys, values)
        self.seq = seq

    def close(self) -> None:
        """Let a checkpoint under way finish (its run saves replaying its log at start)."""
        with self.lock:
            self._finish_background(wait=True)

    # -- reads ------------------------------------------------------------------------
    def _block(self, name: str) -> Block:
        block = self.cache.get(name)
        if block is None:
            found = self.objects.get(name)
            if found is None:
                raise RuntimeError(f"block {name} is missing from the KVS")
            keys, values = decode_run(found[0])
            block = Block(name, keys, values, len(found[0]))
            self.cache.put(block)
        return block

    def get(self, key: bytes) -> bytes | None:
        hit = self.memtable.get(key)
        if hit is None and self.frozen is not None:
            hit = self.frozen.get(key)
        if hit is not None:
            return hit[1]
        for run in self.runs:
            if run.key_filter is not None and not run.key_filter.may_hold(key):
                continue  # most new keys of an INSERT: no block searched
            position = bisect.bisect_right(run.fences, key) - 1
            if position < 0:
                continue
            block = self._block(run.names[position])
            i = bisect.bisect_left(block.keys, key)
            if i < len(block.keys) and block.keys[i] == key:
                return block.values[i]
        return None

    def first(
        self, low: bytes, high: bytes | None, reverse: bool = False, overlay: Writes | None = None
    ) -> Entry | None:
        """The first live entry `scan` would give, found by one seek in each source instead
        of setting up a merged scan: what a LIMIT 1 or a unique key reads."""
        frozen, runs = self.frozen, self.runs  # the order scan_chunks reads them in
        while True:
            best = None  # sources newest first: on a tie the newer entry stays
            if overlay:
                key = overlay.nearest(low, high, reverse)
                if key is not None:
                    best = (key, overlay[key])
            for table in (self.memtable, frozen):
                if table:
                    best = _nearer(best, _table_first(table, low, high, reverse), reverse)
            for run in runs:
                best = _nearer(best, self._run_first(run, low, high, reverse), reverse)
            if best is None or best[1] is not None:
                return best
            if reverse:  # a delete: seek on past it
                high = best[0]
            else:
                low = best[0] + b"\x00"  # the least key after it

    def _run_first(self, run: Run, low: bytes, high: bytes | None, reverse: bool):
        fences, names = run.fences, run.names
        if reverse:
            position = (len(fences) if high is None else bisect.bisect_left(fences, high)) - 1
            if position < 0:
                return None
            block = self._block(names[position])
            keys = block.keys  # keys[0] (the fence) < high, so i >= 0
            i = (len(keys) if high is None else bisect.bisect_left(keys, high)) - 1
            return (keys[i], block.values[i]) if keys[i] >= low else None
        position = max(0, bisect.bisect_right(fences, low) - 1)
        block = self._block(names[position])
        i = bisect.bisect_left(block.keys, low)
        if i == len(block.keys):  # past this block's last key: the next block's first
            position, i = position + 1, 0
            if position == len(names):
                return None
            block = self._block(names[position])
        key = block.keys[i]
        return (key, block.values[i]) if high is None or key < high else None

    def scan(
        self,
        low: bytes,
        high: bytes | None,
        reverse: bool = False,
        overlay: Writes | None = None,
    ) -> Iterator[Entry]:
        """Live entries with low <= key < high in key order; `overlay` (a transaction's
        own writes: key -> value or None) wins over the store."""
        return itertools.chain.from_iterable(self.scan_chunks(low, high, reverse, overlay))

    def scan_chunks(
        self,
        low: bytes,
        high: bytes | None,
        reverse: bool = False,
        overlay: Writes | None = None,
        first: int = 16,
    ) -> Iterator[list[Entry]]:
        """`scan` as non-empty lists of entries, so that callers step through a list
        instead of a generator chain per row; slices start at `first` entries (a skip
        scan, which seeks again after each first chunk, wants them whole)."""
        frozen, runs = self.frozen, self.runs  # this order: a checkpoint sets runs, then frozen
        sources = []
        if overlay:
            own = [(k, overlay[k]) for k in overlay.irange(low, high)]
            if reverse:
                own.reverse()
            if own:
                sources.append((iter([own]), True))
        for table in (self.memtable, frozen):
            if table:
                keys = table.ordered()
                start = bisect.bisect_left(keys, low)
                end = len(keys) if high is None else bisect.bisect_left(keys, high)
                if start < end:
                    sources.append((_table_chunks(table, start, end, reverse, first), True))
        sources += [
            (self._run_chunks(run, low, high, reverse, first), run.tombstones) for run in runs
        ]
        return _merged(sources, reverse, drop_tombstones=True)

    def _run_chunks(self, run: Run, low: bytes, high: bytes | None, reverse: bool, first=16):
        """The run's entries in [low, high), each block's slice in pieces that grow from
        16 entries (_slices): a LIMIT 1 copies a few entries, not a block."""
        fences = run.fences
        lowest = max(0, bisect.bisect_right(fences, low) - 1)
        last = len(fences) if high is None else bisect.bisect_left(fences, high)
        positions = range(lowest, last)
        for position in reversed(positions) if reverse else positions:
            block = self._block(run.names[position])
            keys, values = block.keys, block.values
            start = bisect.bisect_left(keys, low)
            end = len(keys) if high is None else bisect.bisect_left(keys, high)
            for i, j in _slices(start, end, reverse, first):
                chunk = list(zip(keys[i:j], values[i:j], strict=True))
                if reverse:
                    chunk.reverse()
                yield chunk

    # -- writes -----------------------------------------------------------------------
    def commit(self, writes: Writes, started: int) -> int:
        """Make `writes` (key -> value, None: delete) durable; return its seq."""
        if not writes:
            return self.seq
        record = encode_run(list(writes), list(writes.values()))
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
            self._apply(seq, list(writes), list(writes.values()))
            self.commits += 1
            if self.background:
                self._checkpoint_in_background()
            elif len(self.memtable) >= self.checkpoint_entries:
                try:
                    self.checkpoint()
                except Exception as exc:  # the commit is durable: say so, checkpoint later
                    self.checkpoint_failures += 1
                    log.warning("checkpoint failed, will retry at the next commit: %s", exc)
            return seq

    def _check_conflicts(self, writes: Writes, started: int) -> None:
        memtable = self.memtable
        older = started < self._checkpoint_floor
        if started < self._previous_floor:
            self.conflicts += 1
            raise WriteConflict(
                "could not serialize access: the transaction is older than two checkpoints"
            )
        frozen = self.frozen or {}
        for key in writes:
            hit = memtable.get(key) or frozen.get(key)
            if (hit is not None and hit[0] > started) or (
                older and self._checkpointed.get(key, _NEVER)[0] > started
            ):
                self.conflicts += 1
                raise WriteConflict(
                    "could not serialize access: a row this transaction writes was "
                    "changed by another transaction that committed first"
                )

    def checkpoint(self) -> int:
        """Write the memtable as a new run, merged with as many of the newest runs as the
        tiering asks for (_merge_depth), now; returns the number of blocks written. A
        checkpoint under way in the background is finished first."""
        with self.lock:
            self._finish_background(wait=True)
            if self.frozen is None:
                if not self.memtable:
                    return 0
                self._freeze()
            return self._install(self._write_frozen())

    def _checkpoint_in_background(self) -> None:
        """After a commit: install a run the writer thread finished (or count its failure),
        then start writing the memtable once it is full, or the frozen one again after a
        failure; commits go on meanwhile, reading the frozen memtable."""
        self._finish_background(wait=False)
        if self._writer is not None:
            return
        if self.frozen is None and len(self.memtable) >= self.checkpoint_entries:
            self._freeze()
        if self.frozen is not None:
            self._writer = threading.Thread(
                target=self._write_in_background, name="cascadb-checkpoint", daemon=True
            )
            self._writer.start()

    def _write_in_background(self) -> None:
        try:
            self._written = self._write_frozen()
        except BaseException as exc:  # reported by _finish_background
            self._written = exc

    def _finish_background(self, wait: bool) -> None:
        writer = self._writer
        if writer is None or (writer.is_alive() and not wait):
            return
        writer.join()
        self._writer, written, self._written = None, self._written, None
        try:
            if isinstance(written, BaseException):
                raise written
            self._install(written)
        except Exception as exc:  # the log holds every commit: retried after the next one
            self.checkpoint_failures += 1
            log.warning("checkpoint failed, will retry at the next commit: %s", exc)

    def _freeze(self) -> None:
        self.memtable.ordered()  # sorted here, not by the writer thread and a reader at once
        self.frozen, self._frozen_seq, self.memtable = self.memtable, self.seq, Memtable()

    def _write_frozen(self) -> tuple[Run, list[Block], list[Run]]:
        """The frozen memtable merged with the newest runs the tiering picks, written as
        new blocks that nothing references yet: (the run, its blocks, the runs merged)."""
        frozen = self.frozen
        keys = frozen.ordered()
        values = map(_VALUE, map(dict.__getitem__, repeat(frozen), keys))
        entries = list(zip(keys, values, strict=True))
        depth = _merge_depth([len(entries)] + [run.entries for run in self.runs])
        merging = self.runs[:depth]
        oldest = depth == len(self.runs)  # deletes need not be kept below the last run
        sources = [(iter([entries]), True)] + [
            (self._run_chunks(run, b"", None, False), run.tombstones) for run in merging
        ]
        run, written = self._write_run(_merged(sources, False, drop_tombstones=oldest))
        return run, written, merging

    def _install(self, written: tuple[Run, list[Block], list[Run]]) -> int:
        """Move the manifest to the new run (one conditional KVS batch), then forget the
        frozen memtable, the merged runs' blocks and the log it covered."""
        run, blocks, merging = written
        runs = ([run] if run.names else []) + self.runs[len(merging) :]
        retired = [name for old in merging for name in old.names]
        manifest = json.dumps(
            {"seq": self._frozen_seq, "next_block": self.next_block,
             "runs": [r.to_json() for r in runs]}
        ).encode()  # fmt: skip
        try:
            self.objects.batch(
                [Op("manifest", manifest, if_match=self.manifest_version)]
                + [Op(name, None) for name in retired[: BATCH_LIMIT - 1]]
            )
        except VersionConflict:
            # another server checkpointed: ours is garbage, theirs is the truth
            self._delete([b.name for b in blocks])
            raise
        self.manifest_version += 1
        self._delete(retired[BATCH_LIMIT - 1 :])
        self._drop_log(self.checkpointed, self._frozen_seq)
        for name in retired:
            self.cache.drop(name)
        for block in blocks:
            self.cache.put(block)
        self.runs = runs  # before frozen goes: a reader sees the keys in one or the other
        self._checkpointed = self.frozen
        self.frozen = None
        self._previous_floor = self._checkpoint_floor
        self._checkpoint_floor = self.checkpointed = self._frozen_seq
        self.checkpoints += 1
        self.compactions += bool(merging)
        return len(blocks)

    def _write_run(self, chunks: Iterator[list[Entry]]) -> tuple[Run, list[Block]]:
        """Cut sorted entries into blocks of about BLOCK_BYTES and store them, in KVS
        batches of at most BATCH_BYTES; they stay unreferenced until the manifest moves."""
        blocks: list[Block] = []
        pending: list[Op] = []
        pending_bytes = count = 0
        tombstones = False
        keys: list[bytes] = []
        values: list[bytes | None] = []
        size = 0

        def seal() -> None:
            nonlocal pending, pending_bytes, keys, values, size
            name = f"blk/{self.next_block:012d}"
            self.next_block += 1
            data = encode_run(keys, values)
            blocks.append(Block(name, keys, values, len(data)))
            if pending and (len(pending) == BATCH_LIMIT or pending_bytes + len(data) > BATCH_BYTES):
                self.objects.batch(pending)
                pending, pending_bytes = [], 0
            pending.append(Op(name, data, if_match=0))
            pending_bytes += len(data)
            keys, values, size = [], [], 0

        for chunk in chunks:  # a chunk at a time, cut where the running size crosses
            chunk_keys, chunk_values = list(map(_KEY, chunk)), list(map(_VALUE, chunk))
            if None in chunk_values:
                tombstones = True
                sizes = [len(k) + (0 if v is None else len(v)) + 6 for k, v in chunk]
            else:
                sizes = map(sum, zip(map(len, chunk_keys), map(len, chunk_values), repeat(6)))
            ends = list(itertools.accumulate(sizes))  # ends[i]: entries 0..i's bytes
            start, before = 0, 0  # the chunk's entries already placed, and their bytes
            while start < len(chunk):
                # the first entry that brings the block to BLOCK_BYTES ends it
                last = bisect.bisect_left(ends, BLOCK_BYTES - size + before, start)
                if last == len(chunk):
                    keys += chunk_keys[start:]
                    values += chunk_values[start:]
                    size += ends[-1] - before
                    break
                keys += chunk_keys[start : last + 1]
                values += chunk_values[start : last + 1]
                seal()
                start, before = last + 1, ends[last]
            count += len(chunk)
        if keys:
            seal()
        if pending:
            self.objects.batch(pending)
        hashes = array("q")
        for block in blocks:
            hashes.extend(map(hash, block.keys))
        fences, names = [b.keys[0] for b in blocks], [b.name for b in blocks]
        return Run(fences, names, count, tombstones, KeyFilter(hashes)), blocks

    def _delete(self, names: list[str]) -> None:
        for start in range(0, len(names), BATCH_LIMIT):
            self.objects.batch([Op(n, None) for n in names[start : start + BATCH_LIMIT]])

    def _drop_log(self, after: int, upto: int) -> None:
        try:
            self._delete([f"wal/{seq:016d}" for seq in range(after + 1, upto + 1)])
        except Exception as exc:  # the manifest moved past them: only garbage remains
            log.warning("could not delete old log records: %s", exc)

    def stats(self) -> dict:
        return {
            "seq": self.seq,
            "checkpointed": self.checkpointed,
            "memtable_entries": len(self.memtable),
            "checkpointing_entries": len(self.frozen) if self.frozen is not None else 0,
            "runs": len(self.runs),
            "blocks": sum(len(run.names) for run in self.runs),
            "key_filter_bytes": sum(r.key_filter.size_bytes for r in self.runs if r.key_filter),
            "cache_bytes": self.cache.used,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "commits": self.commits,
            "conflicts": self.conflicts,
            "checkpoints": self.checkpoints,
            "checkpoint_failures": self.checkpoint_failures,
            "compactions": self.compactions,
        }


def _table_chunks(table: Memtable, start: int, end: int, reverse: bool, first: int = 16):
    """A memtable's positions start..end in slices (_slices), deletes as None."""
    keys = table.ordered()
    lookup = functools.partial(dict.__getitem__, table)
    second = itemgetter(1)
    for i, j in _slices(start, end, reverse, first):
        sliced = keys[i:j]
        chunk = list(zip(sliced, map(second, map(lookup, sliced)), strict=True))
        if reverse:
            chunk.reverse()
        yield chunk


def _table_first(table: Memtable, low: bytes, high: bytes | None, reverse: bool):
    """A memtable's first entry in [low, high) (the last when `reverse`), or None."""
    key = table.nearest(low, high, reverse)
    return None if key is None else (key, table[key][1])


def _nearer(best: Entry | None, found: Entry | None, reverse: bool) -> Entry | None:
    """`found` if it comes strictly before `best` in scan order, else `best`."""
    if found is None or best is None:
        return best or found
    if reverse:
        return found if found[0] > best[0] else best
    return found if found[0] < best[0] else best


def _slices(start: int, end: int, reverse: bool, first: int = 16) -> Iterator[tuple[int, int]]:
    """[i, j) pieces of start..end from the front (or the back), `first` positions first
    and growing to CHUNK: a LIMIT 1 query copies 16 entries, a full scan big slices."""
    step = min(first, CHUNK)
    if reverse:
        while end > start:
            yield max(start, end - step), end
            end, step = end - step, min(step * 4, CHUNK)
    else:
        while start < end:
            yield start, min(end, start + step)
            start, step = start + step, min(step * 4, CHUNK)


def _merge_depth(sizes: list[int]) -> int:
    """How many of the newest runs to merge with the new one (sizes[0], the runs after
    it newest first): the most j such that the newer data reaches TIER_RATIO times run
    j's size, and always enough to keep at most MAX_RUNS."""
    depth = 0
    for j in range(1, len(sizes)):
        if sum(sizes[:j]) >= TIER_RATIO * sizes[j]:
            depth = j
    return max(depth, len(sizes) - MAX_RUNS)


class _Stream:
    """One sorted source of chunks and how far into its current chunk we are."""

    __slots__ = ("chunk", "chunks", "position", "tombstones")

    def __init__(self, chunks: Iterator[list[Entry]], tombstones: bool):
        self.chunks, self.tombstones = chunks, tombstones
        self.chunk: list[Entry] = []
        self.position = 0

    def ready(self) -> bool:
        """Something left in the current chunk, pulling the next one if needed."""
        while self.position >= len(self.chunk):
            chunk = next(self.chunks, None)
            if chunk is None:
                return False
            self.chunk, self.position = chunk, 0
        return True

    def take(self, stop: int) -> list[Entry]:
        whole = self.position == 0 and stop == len(self.chunk)
        part = self.chunk if whole else self.chunk[self.position : stop]
        self.position = stop
        return part


def _merged(sources, reverse: bool, drop_tombstones: bool) -> Iterator[list[Entry]]:
    """Sorted chunk streams, newest first, as one: each key's newest entry, deletes
    dropped when `drop_tombstones`. Each step takes from every stream what lies up to
    the lowest last key among the chunks at hand (nothing later in any stream can come
    before it); one stream's part passes as it is, several are merged by a dict and
    one sort."""
    streams = [_Stream(chunks, tombstones) for chunks, tombstones in sources]
    live = [s for s in streams if s.ready()]
    key = itemgetter(0)
    while live:
        if len(live) == 1:
            only = live[0]
            parts = [(only.take(len(only.chunk)), only.tombstones)]
        else:
            ends = [s.chunk[-1][0] for s in live]
            bound = max(ends) if reverse else min(ends)
            parts = []
            for s in live:
                stop = (
                    _cut_descending(s.chunk, s.position, bound)
                    if reverse
                    else bisect.bisect_right(s.chunk, bound, s.position, key=key)
                )
                if stop > s.position:
                    parts.append((s.take(stop), s.tombstones))
        if len(parts) == 1:
            chunk, tombstones = parts[0]
        else:
            newest: dict = {}
            for part, _ in reversed(parts):  # oldest first: newer entries overwrite
                newest.update(part)
            chunk = sorted(newest.items(), reverse=reverse)
            tombstones = any(t for _, t in parts)
        if tombstones and drop_tombstones:
            chunk = [e for e in chunk if e[1] is not None]
        if chunk:
            yield chunk
        live = [s for s in live if s.ready()]


def _cut_descending(chunk: list[Entry], start: int, bound: bytes) -> int:
    """The end of the entries with key >= bound in a chunk sorted descending."""
    low, high = start, len(chunk)
    while low < high:
        middle = (low + high) // 2
        if chunk[middle][0] >= bound:
            low = middle + 1
        else:
            high = middle
    return low
