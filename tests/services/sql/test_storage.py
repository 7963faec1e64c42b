"""The store's scans and reads against a plain dict: log, memtable, runs of blocks and
a transaction's overlay merged in key order, forwards and backwards, across
checkpoints and the merges of runs they set off."""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.services.sql import storage
from securecloud.services.sql.storage import Store, WriteConflict
from securecloud.services.sql.writes import Memtable, Writes
from tests.services.sql.memory import MemoryObjects

keys = st.binary(min_size=1, max_size=3)
values = st.one_of(st.none(), st.binary(min_size=1, max_size=40))
commits = st.lists(st.dictionaries(keys, values, min_size=1, max_size=30), max_size=12)


def _writes(entries: dict) -> Writes:
    writes = Writes()
    for key, value in entries.items():
        writes[key] = value
    return writes


def _expected(model: dict, overlay: dict, low: bytes, high: bytes | None, reverse: bool):
    merged = {**model, **overlay}
    live = sorted((k, v) for k, v in merged.items() if v is not None)
    chosen = [(k, v) for k, v in live if k >= low and (high is None or k < high)]
    return chosen[::-1] if reverse else chosen


@settings(max_examples=150, deadline=None)
@given(
    commits,
    st.lists(st.booleans(), min_size=12, max_size=12),
    st.dictionaries(keys, values, max_size=10),
    keys,
    st.one_of(st.none(), keys),
    st.booleans(),
)
def test_scans_equal_a_dict_whatever_is_checkpointed(
    writes, checkpoints, overlay, low, high, reverse
):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "BLOCK_BYTES", 64)  # many small blocks
        patch.setattr(storage, "CHUNK", 3)  # many memtable chunks
        _check(writes, checkpoints, overlay, low, high, reverse)


def _check(writes, checkpoints, overlay, low, high, reverse):
    store = Store(MemoryObjects(), checkpoint_entries=10**9)
    model: dict = {}
    for n, batch in enumerate(writes):
        store.commit(_writes(batch), store.seq)
        model.update(batch)
        if checkpoints[n]:
            store.checkpoint()
    got = list(store.scan(low, high, reverse, _writes(overlay)))
    assert got == _expected(model, overlay, low, high, reverse)
    assert store.first(low, high, reverse, _writes(overlay)) == next(iter(got), None)
    for key in model:  # a seek at every key of the model, onto and past deletes
        wanted = _expected(model, {}, key, high, reverse=False)
        assert store.first(key, high) == next(iter(wanted), None)
        wanted = _expected(model, {}, low, key, reverse=True)
        assert store.first(low, key, reverse=True) == next(iter(wanted), None)
    assert all(chunk for chunk in store.scan_chunks(low, high, reverse, _writes(overlay)))
    for key, value in model.items():
        assert store.get(key) == value
    reopened = Store(store.objects)  # manifest + log replay gives the same answers
    assert list(reopened.scan(low, high, reverse)) == _expected(model, {}, low, high, reverse)
    assert not any(v is None for _, v in Store(store.objects).scan(b"", None))


def test_runs_stay_few_and_rows_are_rewritten_a_few_times_not_at_every_checkpoint():
    """Time-major metering inserts touch every meter's key range at every checkpoint;
    merging size-tiered keeps both the runs and the bytes rewritten logarithmic."""
    objects = CountingObjects()
    store = Store(objects, checkpoint_entries=500, background=False)
    meters, intervals = 50, 200
    for t in range(intervals):
        batch = {
            meter.to_bytes(2, "big") + t.to_bytes(4, "big"): b"r" * 60 for meter in range(meters)
        }
        store.commit(_writes(batch), store.seq)
    store.checkpoint()
    table_bytes = sum(len(objects.objects[n][0]) for run in store.runs for n in run.names)
    assert store.checkpoints == meters * intervals // 500 and store.compactions > 0
    assert len(store.runs) <= 4
    assert objects.block_bytes <= 4 * table_bytes  # merging into every block each time: ~10x
    assert len(list(store.scan(b"", None))) == meters * intervals
    # a delete is kept in a newer run while an older run holds the key...
    gone = next(store.scan(b"", None))[0]
    store.commit(_writes({gone: None}), store.seq)
    store.checkpoint()
    assert store.runs[0].tombstones and store.runs[0].entries == 1
    assert store.get(gone) is None and next(store.scan(b"", None))[0] != gone
    # ...and dropped when the merge reaches the oldest run
    store.commit(_writes({k: None for k, _ in store.scan(b"", None)}), store.seq)
    store.checkpoint()
    assert store.runs == [] and list(store.scan(b"", None)) == []


class CountingObjects(MemoryObjects):
    """Memory objects that count the bytes of blocks written."""

    def __init__(self):
        super().__init__()
        self.block_bytes = 0

    def batch(self, ops):
        super().batch(ops)
        self.block_bytes += sum(len(op.data) for op in ops if op.key.startswith("blk/") and op.data)


class FailingBatches(MemoryObjects):
    """Object storage whose batches of new blocks fail (a KVS timing out)."""

    def batch(self, ops):
        if any(op.key.startswith("blk/") for op in ops):
            raise TimeoutError("the KVS did not answer")
        return super().batch(ops)


def test_a_failed_checkpoint_does_not_fail_the_commit_it_follows():
    objects = FailingBatches()
    store = Store(objects, checkpoint_entries=3, background=False)
    for n in range(5):
        store.commit(_writes({bytes([n]): b"v"}), store.seq)  # acknowledged: durable
    assert store.checkpoint_failures >= 1 and store.checkpoints == 0
    assert len(list(Store(objects).scan(b"", None))) == 5  # all in the log


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), keys, values),
            st.tuples(st.just("undo"), keys, st.none()),
            st.tuples(st.just("range"), keys, st.one_of(st.none(), keys)),
        ),
        max_size=80,
    )
)
def test_a_transactions_writes_come_back_in_key_order_whatever_came_between(steps):
    """Puts, a statement's undo (del) and range reads in any order, few or many puts
    between reads (placed one by one, or sorted at once), against a plain dict."""
    writes, model = Writes(), {}
    for op, key, other in steps:
        if op == "put":
            writes[key] = model[key] = other
        elif op == "undo" and key in model:
            del writes[key]
            del model[key]
        elif op == "range":
            expected = sorted(k for k in model if k >= key and (other is None or k < other))
            assert writes.irange(key, other) == expected
            assert writes.nearest(key, other, False) == next(iter(expected), None)
            assert writes.nearest(key, other, True) == next(reversed(expected), None)
    assert dict(writes) == model
    assert writes.irange(b"", None) == sorted(model)
    for n in range(100, 0, -1):  # many puts before the next read: one sort
        writes[b"\x7f" + bytes([n])] = model[b"\x7f" + bytes([n])] = b"v"
    assert writes.irange(b"", None) == sorted(model)
    with pytest.raises(TypeError):
        writes.update({b"k": b"v"})  # would bypass the key order's bookkeeping


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.binary(min_size=1, max_size=3), max_size=300), st.booleans()),
        max_size=12,
    )
)
def test_the_memtable_keeps_commits_and_gives_its_keys_in_order(commits):
    """Commits of a few keys or hundreds (new ones placed one by one, merged by slices or
    sorted at once), read or not between them, against a plain dict."""
    memtable, model = Memtable(), {}
    for seq, (keys, read) in enumerate(commits, start=1):
        keys = list(dict.fromkeys(keys))  # a commit writes a key once
        values = [None if k[0] % 5 == 0 else k * 2 for k in keys]
        memtable.apply(seq, keys, values)
        model.update((k, (seq, v)) for k, v in zip(keys, values, strict=True))
        if read:
            assert memtable.ordered() == sorted(model)
    assert dict(memtable) == model
    assert memtable.ordered() == sorted(model)
    assert memtable.irange(b"\x40", b"\x80") == [k for k in sorted(model) if b"\x40" <= k < b"\x80"]
    base = len(commits) + 1
    for seq, (first, step) in enumerate(((0, 2), (1, 14), (3, 26)), start=base):
        # many keys, then fewer that fall between them (merged by slices)
        keys = [b"\x01" + n.to_bytes(2, "big") for n in range(first, 3000, step)]
        memtable.apply(seq, keys, keys)
        model.update((k, (seq, k)) for k in keys)
        assert memtable.ordered() == sorted(model)


class HeldBlocks(MemoryObjects):
    """Batches of new blocks wait for `release` (a checkpoint writer stuck on the KVS),
    then fail if `fail` is set."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.fail = False

    def batch(self, ops):
        if any(op.key.startswith("blk/") and op.data for op in ops):
            assert self.release.wait(30)
            if self.fail:
                raise TimeoutError("the KVS did not answer")
        return super().batch(ops)


def test_commits_and_reads_go_on_while_a_checkpoint_is_written_in_the_background():
    objects = HeldBlocks()
    store = Store(objects, checkpoint_entries=100)
    model: dict = {}

    def commit(entries: dict, started: int | None = None) -> None:
        store.commit(_writes(entries), store.seq if started is None else started)
        model.update(entries)

    for n in range(100):
        if n == 50:
            began = store.seq
        commit({n.to_bytes(2, "big"): b"v%d" % n})
    assert store.frozen is not None and store._writer.is_alive()  # full: being written
    for n in range(90, 130):  # new keys, overwrites and deletes of frozen ones
        commit({n.to_bytes(2, "big"): None if n % 3 == 0 else b"w%d" % n})
    assert store.checkpoints == 0 and store._writer.is_alive()
    assert list(store.scan(b"", None)) == _expected(model, {}, b"", None, False)
    assert list(store.scan(b"", None, reverse=True)) == _expected(model, {}, b"", None, True)
    assert all(store.get(k) == v for k, v in model.items())
    for key in model:  # seeks that find their entry in the memtable or the frozen one
        assert store.first(key, None) == next(iter(_expected(model, {}, key, None, False)), None)
        assert store.first(b"", key, True) == next(iter(_expected(model, {}, b"", key, True)), None)
    with pytest.raises(WriteConflict):  # written by commit 61, frozen since
        store.commit(_writes({(60).to_bytes(2, "big"): b"late"}), began)
    restarted = Store(objects, background=False)  # a restart now replays the whole log
    assert list(restarted.scan(b"", None)) == _expected(model, {}, b"", None, False)

    objects.fail = True  # the writer gives up: counted, the frozen memtable kept
    objects.release.set()
    store.close()
    assert store.checkpoint_failures == 1 and store.frozen is not None
    assert list(store.scan(b"", None)) == _expected(model, {}, b"", None, False)

    objects.fail = False  # the next commit writes it again
    commit({b"\xff": b"last"})
    store.close()
    assert store.checkpoints == 1 and store.frozen is None and len(store.runs) == 1
    assert store.checkpointed == 100 and store.runs[0].entries == 100
    assert not any(name <= f"wal/{100:016d}" for name in objects.list("wal/"))
    with pytest.raises(WriteConflict):  # in a run now, still known to be newer than began
        store.commit(_writes({(60).to_bytes(2, "big"): b"late"}), began)
    commit({(10).to_bytes(2, "big"): b"old enough"}, began)  # written before began
    assert list(store.scan(b"", None)) == _expected(model, {}, b"", None, False)
    assert list(Store(objects).scan(b"", None)) == _expected(model, {}, b"", None, False)
