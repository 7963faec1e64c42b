"""The authenticator's checks, counted by reason, and its crash safety (core, in process).

Storage here is a dict behind the same three calls the KVS client offers; the
whole path through real processes and the real KVS is in test_ingest_e2e.py.
"""

import dataclasses
import datetime as dt

import numpy as np
import pytest

from securecloud.apps.metering import frames, store
from securecloud.apps.metering.authenticator import Authenticator
from securecloud.apps.metering.meter import MeterSession
from securecloud.apps.metering.model import consumer_for, day_readings
from securecloud.apps.metering.ownership import Ownership
from securecloud.apps.metering.registry import MeterRecord, Registry
from securecloud.crypto import ProofError, SignatureError, generate_signing_key, suite1
from securecloud.crypto.agreement import public_bytes


class MissingObject(Exception):
    status = 404


class DictStorage:
    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.fail = False

    def put(self, bucket, key, data):
        if self.fail:
            raise ConnectionError("KVS unreachable")
        self.objects[key] = data
        return {}

    def get(self, bucket, key):
        if key not in self.objects:
            raise MissingObject(key)
        return self.objects[key]

    def batch(self, bucket, operations):
        if self.fail:
            raise ConnectionError("KVS unreachable")
        self.objects.update({op["key"]: op["data"] for op in operations})
        return [{} for _ in operations]

    def list(self, bucket, prefix="", start_after="", limit=1000):
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)
        return [{"key": k, "size": len(self.objects[k])} for k in keys[:limit]]


@pytest.fixture
def rig():
    auth_key = suite1.generate_meter_key()
    meter_key = suite1.generate_meter_key()
    registry = Registry({7: MeterRecord(7, public_bytes(meter_key.public_key()), "lv1")})
    storage = DictStorage()
    signing = generate_signing_key("p256")
    auth = Authenticator("auth-t", auth_key, signing, registry, storage)
    session = MeterSession(7, meter_key, auth_key.public_key())
    reply = run(auth, [session.hello(0)])[0][0]
    session.accept(frames.decode_downlink(reply))
    consumer = dataclasses.replace(consumer_for(1, 7), meter_class="lv1")
    reports, _ = day_readings(consumer, dt.date(2026, 3, 2), 1, 0.0, np.random.default_rng(0))
    return auth, session, reports, storage, (auth_key, signing, registry)


def run(auth, batch):
    out = auth.process(batch)
    auth.store(out)
    return out.replies


def statuses(replies):
    return [frames.decode_downlink(r[0]) for r in replies]


def test_reports_are_acknowledged_only_after_the_batch_is_stored(rig):
    auth, session, reports, storage, _ = rig
    replies = run(auth, [session.seal(r.encode())[1] for r in reports[:3]])
    acks = statuses(replies)
    assert [a.status for a in acks] == [frames.STORED] * 3
    for ack in acks:
        session.check_ack(ack)
    header, leaves = store.decode_batch(storage.objects[store.batch_key("auth-t", 1)])
    assert header["size"] == 3 and len(leaves) == 3


def test_duplicate_is_acknowledged_and_counted_gap_is_missing_late_report_fills_it(rig):
    auth, session, reports, _storage, _ = rig
    run(auth, [session.seal(reports[0].encode())[1], session.seal(reports[3].encode())[1]])
    assert auth.status(7)["missing_counters"] == [2, 3]
    dup = statuses(run(auth, [session.seal(reports[0].encode())[1]]))[0]
    assert dup.status == frames.DUPLICATE
    run(auth, [session.seal(reports[1].encode())[1]])
    state = auth.status(7)
    assert state["missing_counters"] == [3] and state["duplicates"] == 1 and state["accepted"] == 3


def test_each_bad_frame_is_refused_with_its_reason_and_nothing_is_stored(rig):
    auth, session, reports, storage, _ = rig
    _inv, good = session.seal(reports[0].encode())
    flipped = bytearray(good)
    flipped[30] ^= 1  # a bit flip in the ciphertext...
    crc_ok = bytes(flipped[:-2]) + frames.crc(bytes(flipped[:-2])).to_bytes(2, "little")
    unknown = bytearray(good)
    unknown[1:5] = (99).to_bytes(4, "big")
    unknown = bytes(unknown[:-2]) + frames.crc(bytes(unknown[:-2])).to_bytes(2, "little")
    batch = [bytes(flipped), crc_ok, unknown, good[:200], b"\x55" + good[1:]]
    replies = statuses(run(auth, batch))
    reasons = [r.reason_name for r in replies]
    assert reasons == ["crc", "auth-failed", "unknown-meter", "length", "unknown-code"]
    assert not any(k.startswith("batches/") for k in storage.objects)
    run(auth, [good])
    replayed = statuses(run(auth, [good]))[0]
    assert replayed.reason_name == "replay"
    assert auth.status()["rejected_by_reason"]["replay"] == 1


def test_revoked_meter_and_wrong_meter_key_are_refused(rig):
    auth, session, _reports, _storage, _ = rig
    impostor = MeterSession(7, suite1.generate_meter_key(), session.authenticator_key)
    assert statuses(run(auth, [impostor.hello(0)]))[0].reason_name == "bad-signature"
    auth.registry.revoke(7)
    assert statuses(run(auth, [session.hello(0)]))[0].reason_name == "revoked-meter"


def test_a_meter_of_another_shard_is_refused_even_when_routed_here(rig):
    _auth, session, reports, storage, (auth_key, signing, registry) = rig
    other = Authenticator(
        "auth-o", auth_key, signing, registry, storage, ownership=Ownership(4, 1, 2)
    )  # meter 7 is in partition 3, which shard 1/2 serves; shard 0/2 must refuse it
    assert other.ownership.owns(7)
    wrong = Authenticator(
        "auth-w", auth_key, signing, registry, storage, ownership=Ownership(4, 0, 2)
    )
    before = dict(storage.objects)
    replies = statuses(run(wrong, [session.hello(0), session.seal(reports[0].encode())[1]]))
    assert [r.reason_name for r in replies] == ["not-owner", "not-owner"]
    assert wrong.status()["rejected_by_reason"] == {"not-owner": 2}
    assert storage.objects == before


def test_implausible_reading_is_quarantined_with_its_reason_not_dropped(rig):
    auth, session, reports, storage, _ = rig
    bad = dataclasses.replace(reports[0], frequency=75.0)
    ack = statuses(run(auth, [session.seal(bad.encode())[1]]))[0]
    assert ack.status == frames.QUARANTINED
    header, leaves = store.decode_batch(storage.objects[store.batch_key("auth-t", 1)])
    assert leaves == [] and header["quarantine"][0]["reason"] == "frequency-out-of-range"
    assert auth.status()["quarantined_by_reason"] == {"frequency-out-of-range": 1}
    resent = statuses(run(auth, [session.seal(bad.encode())[1]]))[0]
    assert resent.status == frames.QUARANTINED  # not "duplicate": it is not a stored reading


def test_failed_store_undoes_the_batch_and_nacks_unavailable(rig):
    auth, session, reports, storage, _ = rig
    storage.fail = True
    _inv, frame = session.seal(reports[0].encode())
    assert statuses(run(auth, [frame]))[0].reason_name == "unavailable"
    assert auth.status(7) == {"meter": 7, "known": False}  # as if never seen
    storage.fail = False
    assert statuses(run(auth, [session.seal(reports[0].encode())[1]]))[0].status == frames.STORED


def test_restart_restores_counters_from_checkpoint_and_log(rig):
    auth, session, reports, storage, (auth_key, signing, registry) = rig
    run(auth, [session.seal(r.encode())[1] for r in reports[:10]])
    auth.flush()
    _inv, frame = session.seal(reports[10].encode())
    run(auth, [frame])
    restarted = Authenticator("auth-t", auth_key, signing, registry, storage)
    assert restarted.restore() == 1  # one batch after the checkpoint
    assert restarted.status(7)["last_report"] == 11
    assert statuses(run(restarted, [frame]))[0].reason_name == "replay"
    segments = [k for k in storage.objects if k.startswith("readings/")]
    stored = [r for k in segments for r in store.decode_segment(storage.objects[k])]
    assert sorted(int.from_bytes(r.report[:4], "big") for r in stored) == list(range(1, 11))


def test_stored_reading_verifies_against_its_signed_batch_and_tampering_does_not(rig):
    auth, session, reports, storage, (_k, signing, _r) = rig
    run(auth, [session.seal(r.encode())[1] for r in reports[:5]])
    auth.flush()
    key = next(k for k in storage.objects if k.startswith("readings/"))
    records = store.verify_segment(storage.objects[key], [signing.public_key()], proofs=True)
    header, _leaves = store.decode_batch(storage.objects[store.batch_key("auth-t", 1)])
    assert store.segment_roots(storage.objects[key]) == {1: store.signed_root(header)}
    assert len(records) == 5
    for record in records:
        store.verify_stored(record, header, signing.public_key())
    altered = dataclasses.replace(
        records[2], report=bytes([records[2].report[0] ^ 1]) + records[2].report[1:]
    )
    with pytest.raises(ProofError):
        store.verify_stored(altered, header, signing.public_key())
    with pytest.raises(SignatureError):
        store.verify_stored(records[0], header, generate_signing_key("p256").public_key())
    segment = bytearray(storage.objects[key])
    segment[-3] ^= 1  # a reading's value changed in the stored segment
    with pytest.raises(ProofError):
        store.verify_segment(bytes(segment), [signing.public_key()])
    with pytest.raises(SignatureError):
        store.verify_segment(storage.objects[key], [generate_signing_key("p256").public_key()])


def _leaf_key(leaf: bytes) -> tuple:
    """The batch order written out per leaf: (group, day, meter, counter)."""
    meter = int.from_bytes(leaf[:4], "big")
    day, _interval, _offset = store.day_of(int.from_bytes(leaf[8:12], "big"))
    return (store.group_of(meter), day, meter, int.from_bytes(leaf[4:8], "big"))


def test_batch_leaves_sort_into_one_record_range_per_segment():
    rng = np.random.default_rng(5)
    midnight = int(dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp())
    leaves = []
    for _ in range(600):
        meter = int(rng.choice([1, 2, 4095, 4096, 4097, 9000]))
        # interval ends over three days, clock offsets up to +-450 s (the rounding edge)
        stamp = midnight + int(rng.integers(1, 3 * 96 + 1)) * 900 + int(rng.integers(-450, 451))
        head = b"".join(v.to_bytes(4, "big") for v in (meter, int(rng.integers(1, 1 << 31)), stamp))
        leaves.append(head + rng.bytes(store.LEAF_SIZE - 12))
    ordered = store.order_leaves(leaves)
    assert ordered == sorted(leaves, key=_leaf_key)
    slots = store.leaf_slots(ordered)
    assert [lo for _s, lo, _h in slots] == [0] + [hi for _s, _l, hi in slots[:-1]]
    assert slots[-1][2] == len(ordered)
    assert len({slot for slot, _l, _h in slots}) == len(slots) > 6  # one range per segment
    for (day, group), lo, hi in slots:
        assert {_leaf_key(leaf)[:2] for leaf in ordered[lo:hi]} == {(group, day)}
    stamps = np.array([int.from_bytes(leaf[8:12], "big") for leaf in leaves], dtype=">u4")
    offsets = [store.day_of(int(t))[2] for t in stamps]
    assert store.clock_offsets(stamps).tolist() == offsets and {-450, 450} & set(offsets)
    records = store.encode_records(42, ordered)
    size = store.RECORD_SIZE
    for index, leaf in enumerate(ordered):
        expected = (42).to_bytes(4, "big") + index.to_bytes(4, "big") + leaf
        assert records[index * size : (index + 1) * size] == expected


@pytest.mark.parametrize(("objects", "calls"), [(0, 1), (9, 1), (10, 2), (21, 3)])
def test_listing_pages_through_every_object_and_stops_at_a_short_page(monkeypatch, objects, calls):
    monkeypatch.setattr(store, "LIST_PAGE", 10)
    storage = DictStorage()
    storage.objects = {f"readings/x/{i:03d}": b"r" * i for i in range(objects)}
    storage.objects["readings/y/000"] = b"other prefix"
    asked = []
    listing = storage.list
    storage.list = lambda *args: asked.append(args) or listing(*args)
    found = store.list_sized(storage, "readings/x/")
    assert found == [(f"readings/x/{i:03d}", i) for i in range(objects)]
    assert len(asked) == calls
