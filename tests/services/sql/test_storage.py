"""The store's scans against a plain dict: log, memtable, blocks and a transaction's
overlay merged in key order, forwards and backwards, across checkpoints."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedDict

from securecloud.services.sql import storage
from securecloud.services.sql.storage import Store
from tests.services.sql.memory import MemoryObjects

keys = st.binary(min_size=1, max_size=3)
values = st.one_of(st.none(), st.binary(min_size=1, max_size=40))
commits = st.lists(st.dictionaries(keys, values, min_size=1, max_size=30), max_size=8)


def _expected(model: dict, overlay: dict, low: bytes, high: bytes | None, reverse: bool):
    merged = {**model, **overlay}
    live = sorted((k, v) for k, v in merged.items() if v is not None)
    chosen = [(k, v) for k, v in live if k >= low and (high is None or k < high)]
    return chosen[::-1] if reverse else chosen


@settings(max_examples=150, deadline=None)
@given(
    commits,
    st.lists(st.booleans(), min_size=8, max_size=8),
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
        store.commit(SortedDict(batch), store.seq)
        model.update(batch)
        if checkpoints[n]:
            store.checkpoint()
    got = list(store.scan(low, high, reverse, SortedDict(overlay)))
    assert got == _expected(model, overlay, low, high, reverse)
    assert all(chunk for chunk in store.scan_chunks(low, high, reverse, SortedDict(overlay)))
    reopened = Store(store.objects)  # manifest + log replay gives the same answers
    assert list(reopened.scan(low, high, reverse)) == _expected(model, {}, low, high, reverse)


class FailingBatches(MemoryObjects):
    """Object storage whose batches of new blocks fail (a KVS timing out)."""

    def batch(self, ops):
        if any(op.key.startswith("blk/") for op in ops):
            raise TimeoutError("the KVS did not answer")
        return super().batch(ops)


def test_a_failed_checkpoint_does_not_fail_the_commit_it_follows():
    objects = FailingBatches()
    store = Store(objects, checkpoint_entries=3)
    for n in range(5):
        store.commit(SortedDict({bytes([n]): b"v"}), store.seq)  # acknowledged: durable
    assert store.checkpoint_failures >= 1 and store.checkpoints == 0
    assert len(list(Store(objects).scan(b"", None))) == 5  # all in the log
