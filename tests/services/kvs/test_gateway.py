"""The gateway over nine local pack stores: versions, quorum, verification, repair."""

import os
import threading

import pytest

from securecloud.services.kvs.codec import KvsKeys
from securecloud.services.kvs.coder import ZfecCoder
from securecloud.services.kvs.errors import BadRequest, NotFound, PreconditionFailed, QuorumLost
from securecloud.services.kvs.gateway import Gateway
from securecloud.services.kvs.index import Index
from securecloud.services.kvs.packstore import PackStore
from securecloud.services.kvs.placement import place
from securecloud.services.kvs.policy import parse_policy

MASTER = os.urandom(32)


class Switchable:
    """A real pack store that can be taken offline, as a killed node process is."""

    def __init__(self, store):
        self.store, self.name, self.down = store, store.name, False

    def _live(self):
        if self.down:
            raise ConnectionError(f"{self.name} is down")
        return self.store

    def put(self, fid, data):
        self._live().put(fid, data)

    def put_many(self, fragments):
        self._live().put_many(fragments)

    def get(self, fid):
        return self._live().get(fid)

    def delete(self, fid):
        self._live().delete(fid)

    def list(self, after="", limit=1000):
        return self._live().list(after, limit)

    def close(self):
        self.store.close()


def open_gateway(directory):
    keys = KvsKeys.from_master(MASTER)
    stores = [Switchable(PackStore(directory / f"node-{i}")) for i in range(9)]
    index = Index(directory / "index.log", keys.index_key)
    gateway = Gateway(keys, stores, index, ZfecCoder())
    return gateway, stores


@pytest.fixture
def gateway(tmp_path):
    gw, stores = open_gateway(tmp_path)
    gw.create_bucket("meters")
    yield gw, stores, tmp_path
    gw.close()


@pytest.mark.parametrize("policy", [None, "replicate:3", "ec:6+3", "hybrid:1+6+2"])
@pytest.mark.parametrize("size", [0, 1, 1024, 200_000])
def test_round_trip_under_every_policy(gateway, policy, size):
    gw, _, _ = gateway
    data = os.urandom(size)
    meta = gw.put("meters", f"obj-{size}", data, policy=policy)
    assert gw.get("meters", f"obj-{size}") == (meta, data)
    expected = policy or ("replicate:3" if size < 128 * 1024 else "ec:6+3")
    assert meta.policy == expected


def node_files(directory):
    return [p for p in directory.rglob("pack-*.dat")]


def test_nodes_and_index_hold_no_plaintext_and_no_names(gateway):
    gw, _, directory = gateway
    secret = b"consumer 4711 used 12.5 kWh at 02:15 " * 20
    gw.put("meters", "customer-4711/2026-11-21", secret, policy="hybrid:1+6+2")
    gw.put("meters", "customer-4711/small", secret[:100])
    for path in [*node_files(directory), directory / "index.log"]:
        content = path.read_bytes()
        for needle in (secret[:40], b"customer-4711", b"meters", b"12.5 kWh"):
            assert needle not in content, (path, needle)


def test_versions_increase_and_if_match_guards_updates(gateway):
    gw, _, _ = gateway
    assert gw.put("meters", "k", b"one").version == 1
    assert gw.put("meters", "k", b"two", if_match=1).version == 2
    with pytest.raises(PreconditionFailed):
        gw.put("meters", "k", b"stale", if_match=1)
    with pytest.raises(PreconditionFailed):
        gw.put("meters", "new", b"x", if_match=3)
    assert gw.put("meters", "new", b"x", if_match=0).version == 1
    assert gw.get("meters", "k")[1] == b"two"


def test_up_to_m_nodes_down_every_object_reads(gateway):
    gw, stores, _ = gateway
    data = os.urandom(300_000)
    gw.put("meters", "big", data, policy="ec:6+3")
    object_id = gw.keys.object_id("meters", "big")
    holders = place(object_id, gw.nodes, 9)
    for name in holders[:3]:
        next(s for s in stores if s.name == name).down = True
    assert gw.get("meters", "big")[1] == data


def test_more_than_m_nodes_down_a_write_fails_cleanly_and_nothing_is_visible(gateway):
    gw, stores, _ = gateway
    gw.put("meters", "k", b"old value", policy="ec:6+3")
    for store in stores[:4]:
        store.down = True
    with pytest.raises(QuorumLost):
        gw.put("meters", "k", b"new value", policy="ec:6+3")
    for store in stores[:4]:
        store.down = False
    meta, data = gw.get("meters", "k")
    assert (meta.version, data) == (1, b"old value")


def test_corrupt_missing_and_replayed_fragments_are_never_served_and_are_repaired(gateway):
    gw, stores, _ = gateway
    gw.put("meters", "k", b"v1" * 1000, policy="ec:6+3")
    object_id = gw.keys.object_id("meters", "k")
    holders = place(object_id, gw.nodes, 9)
    by_name = {s.name: s for s in stores}
    old = by_name[holders[1]].get(gw.keys.fragment_id(object_id, 1, 1))
    gw.put("meters", "k", b"v2" * 1000, policy="ec:6+3")
    fid = [gw.keys.fragment_id(object_id, 2, i) for i in range(9)]
    blob = bytearray(by_name[holders[0]].get(fid[0]))
    blob[100] ^= 0xFF
    by_name[holders[0]].put(fid[0], bytes(blob))  # corrupted
    by_name[holders[1]].put(fid[1], old)  # replaced by the older version's fragment
    by_name[holders[2]].delete(fid[2])  # lost
    _, health = gw.stat("meters", "k")
    assert [h.state for h in health[:3]] == ["invalid", "invalid", "missing"]
    assert gw.get("meters", "k")[1] == b"v2" * 1000
    _, health = gw.stat("meters", "k")
    assert all(h.state == "ok" for h in health)  # read repair rewrote them


def test_delete_then_recreate_continues_versions_across_restarts(tmp_path):
    gw, _ = open_gateway(tmp_path)
    gw.create_bucket("meters")
    gw.put("meters", "k", b"a")
    gw.put("meters", "k", b"b")
    assert gw.delete("meters", "k").version == 3
    with pytest.raises(NotFound):
        gw.get("meters", "k")
    gw.close()
    gw, _ = open_gateway(tmp_path)
    assert gw.put("meters", "k", b"c").version == 4
    assert gw.get("meters", "k")[1] == b"c"
    gw.close()


def test_policy_change_re_encodes_without_changing_content(gateway):
    gw, _, _ = gateway
    data = os.urandom(50_000)
    gw.put("meters", "k", data, policy="replicate:3")
    moved = gw.set_policy("meters", "k", "hybrid:1+6+2")
    assert moved.policy == "hybrid:1+6+2" and moved.version == 2
    assert gw.get("meters", "k")[1] == data
    _, health = gw.stat("meters", "k")
    assert len(health) == 9 and all(h.state == "ok" for h in health)


def test_listing_is_ordered_with_prefix_start_after_end_and_limit(gateway):
    gw, _, _ = gateway
    for key in ["b/2", "a/1", "b/1", "c", "b/3"]:
        gw.put("meters", key, b"x")
    keys = lambda **kw: [m.key for m in gw.list("meters", **kw)]  # noqa: E731
    assert keys() == ["a/1", "b/1", "b/2", "b/3", "c"]
    assert keys(prefix="b/") == ["b/1", "b/2", "b/3"]
    assert keys(prefix="b/", start_after="b/1") == ["b/2", "b/3"]
    assert keys(start_after="a/1", end="b/3") == ["b/1", "b/2"]
    assert keys(limit=2) == ["a/1", "b/1"]


def test_concurrent_writers_leave_one_value_and_one_history(gateway):
    gw, _, _ = gateway
    values = [f"writer-{i}".encode() for i in range(8)]
    threads = [threading.Thread(target=gw.put, args=("meters", "hot", v)) for v in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    meta, data = gw.get("meters", "hot")
    assert data in values and meta.version == 8


def test_index_survives_a_restart(tmp_path):
    gw, _ = open_gateway(tmp_path)
    gw.create_bucket("meters")
    gw.put("meters", "k", b"persisted")
    gw.close()
    gw, _ = open_gateway(tmp_path)
    assert gw.get("meters", "k")[1] == b"persisted"
    gw.close()


def test_clear_errors_for_unknown_buckets_bad_names_and_oversize_keys(gateway):
    gw, _, _ = gateway
    with pytest.raises(NotFound, match="no bucket"):
        gw.put("nope", "k", b"x")
    with pytest.raises(BadRequest, match="bucket"):
        gw.create_bucket("Bad_Name")
    with pytest.raises(BadRequest, match="key"):
        gw.put("meters", "k" * 1025, b"x")
    with pytest.raises(BadRequest, match="11 fragments"):
        gw.put("meters", "k", b"x", policy="ec:2+9")
    assert parse_policy("ec:6+3", 9).write_quorum() == (0, 6)


def test_batch_is_all_or_nothing(gateway):
    from securecloud.services.kvs.gateway import BatchOp

    gw, stores, _ = gateway
    gw.put("meters", "old", b"to be deleted")
    gw.put("meters", "kept", b"v1")
    result = gw.batch(
        "meters", [BatchOp("a", b"A"), BatchOp("b", b"B" * 200_000), BatchOp("old", delete=True)]
    )
    assert [m.key for m in result] == ["a", "b", "old"]
    assert gw.get("meters", "a")[1] == b"A" and gw.get("meters", "b")[1] == b"B" * 200_000
    with pytest.raises(NotFound):
        gw.get("meters", "old")
    with pytest.raises(PreconditionFailed):  # one stale precondition: nothing happens
        gw.batch("meters", [BatchOp("c", b"C"), BatchOp("kept", b"v2", if_match=7)])
    with pytest.raises(NotFound):
        gw.head("meters", "c")
    held = {s.name: s.list(limit=10_000) for s in stores}
    for store in stores[:4]:
        store.down = True
    with pytest.raises(QuorumLost):  # storage fails midway: nothing becomes visible
        gw.batch("meters", [BatchOp("d", b"D" * 300_000, policy="ec:6+3"), BatchOp("kept", b"v2")])
    for store in stores[:4]:
        store.down = False
    # and nothing is left behind: the live nodes dropped what they took of both operations
    assert {s.name: s.list(limit=10_000) for s in stores} == held
    assert gw.get("meters", "kept") == (gw.head("meters", "kept"), b"v1")
    with pytest.raises(NotFound):
        gw.head("meters", "d")


def test_a_batch_writes_its_operations_together_sharing_fsyncs(gateway, monkeypatch):
    """Each small object is three replicas, each durable before the batch answers; written
    one operation after another that was three fsyncs per operation (900 here). Now each
    node takes its share at once: one fsync per node, one for the index record."""
    from securecloud.services.kvs.gateway import BatchOp

    gw, _, _ = gateway
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    gw.batch("meters", [BatchOp(f"bill-{i}", b"x" * 1200) for i in range(300)])
    assert len(calls) <= 9 + 1, f"{len(calls)} fsyncs for 300 operations on 9 nodes"
    assert all(gw.get("meters", f"bill-{i}")[1] == b"x" * 1200 for i in range(300))


def test_a_torn_batch_record_is_dropped_whole_on_restart(tmp_path):
    from securecloud.services.kvs.gateway import BatchOp

    gw, _ = open_gateway(tmp_path)
    gw.create_bucket("meters")
    gw.put("meters", "before", b"x")
    size_before = (tmp_path / "index.log").stat().st_size
    gw.batch("meters", [BatchOp(f"k{i}", b"v") for i in range(5)])
    gw.close()
    log = tmp_path / "index.log"
    log.write_bytes(log.read_bytes()[: size_before + 40])  # the crash cut the batch record
    gw, _ = open_gateway(tmp_path)
    assert [m.key for m in gw.list("meters")] == ["before"]
    gw.close()


def test_scrub_refills_a_replaced_node(tmp_path):
    import shutil

    gw, _ = open_gateway(tmp_path)
    gw.create_bucket("meters")
    data = {f"k{i}": os.urandom(150_000 + i) for i in range(12)}
    for key, value in data.items():
        gw.put("meters", key, value, policy="hybrid:1+6+2")
    gw.close()
    shutil.rmtree(tmp_path / "node-4")  # the disk of one node is replaced by an empty one
    gw, _ = open_gateway(tmp_path)
    report = gw.scrub()
    assert report["objects"] == 12 and report["repaired"] > 0 and not report["unreadable"]
    for key in data:
        _, health = gw.stat("meters", key)
        assert all(h.state == "ok" for h in health)
    assert gw.scrub()["repaired"] == 0
    gw.close()


def test_the_index_is_rebuilt_from_the_nodes(tmp_path):
    gw, _ = open_gateway(tmp_path)
    gw.create_bucket("meters")
    gw.put("meters", "a", b"first")
    gw.put("meters", "a", b"second")
    gw.put("meters", "b", os.urandom(200_000), policy="ec:6+3")
    gw.put("meters", "gone", b"x")
    gw.delete("meters", "gone")
    expected_b = gw.get("meters", "b")[1]
    gw.close()
    (tmp_path / "index.log").unlink()  # the gateway's index is lost
    gw, _ = open_gateway(tmp_path)
    report = gw.rebuild_index()
    assert (report["objects"], report["deleted"]) == (2, 1)
    assert gw.get("meters", "a") == (gw.head("meters", "a"), b"second")
    assert gw.head("meters", "a").version == 2
    assert gw.get("meters", "b")[1] == expected_b
    with pytest.raises(NotFound):
        gw.head("meters", "gone")
    assert gw.put("meters", "gone", b"again").version == 3  # above the tombstone
    gw.close()


def test_retiring_many_old_versions_never_starves_new_writes(tmp_path):
    """A batch that replaces more objects than the gateway has I/O threads queues that
    many retirements; writes after it must still find threads to put their fragments."""
    from securecloud.services.kvs.gateway import BatchOp

    keys = KvsKeys.from_master(MASTER)
    stores = [PackStore(tmp_path / f"node-{i}") for i in range(9)]
    gw = Gateway(keys, stores, Index(tmp_path / "index.log", keys.index_key), ZfecCoder(), 4)
    gw.create_bucket("meters")
    names = [f"k{i}" for i in range(40)]
    gw.batch("meters", [BatchOp(k, b"v1" * 1000) for k in names])
    gw.batch("meters", [BatchOp(k, b"v2" * 1000) for k in names])  # retires 40 versions
    done = threading.Event()

    def write():
        gw.put("meters", "after", b"x" * 100_000)
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(30), "a write after the batch never finished: the I/O pool is starved"
    assert gw.get("meters", "after")[1] == b"x" * 100_000
    gw.close()
