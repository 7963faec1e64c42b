"""How metering data lies in the KVS (bucket `metering`), and reading it back.

    registry/meters.json                     the meter registry
    batches/<auth>/<seq:012d>                one signed batch: the durable log
    readings/<day>/<group:05d>/<auth>-<seq:012d>
                                             a segment: readings of one day for
                                             the meters of one group, with proofs
    state/<auth>.json                        an authenticator's counters + checkpoint
    quarantine counts and reasons            inside each batch

A batch is written before any of its frames is acknowledged. Its leaves are
meter id (4 bytes) || phasor report (121 bytes); its RFC 6962 root is signed
with the regulator-registered key over the canonical statement

    {"type": "securecloud.metering.batch.v1", "authenticator", "seq", "size",
     "root" (hex), "created"}

A group is 4,096 consecutive meter ids (meter_id // 4096): one object per
group and day per flush instead of one per meter and day, so a flush for
65,000 meters writes 16 objects of about 1 MiB, not 65,000 small ones (the
KVS's cost is per object as much as per byte: with groups of 1,024 the same
run was 5 % slower), and billing reads a group at once. Segments
may overlap after an authenticator restarts (the same reading in two
segments); readers keep one reading per (meter, counter).

Batch layout: b"SCMB1" | u32 header length | canonical JSON header | leaves.
Segment layout: b"SCMS2" | u32 roots length | canonical JSON list of the signed
roots of every batch its records cite | records, each
    meter u32 | batch seq u32 | leaf index u32 | proof length u8 | report (121) | proof (32 x n)
plus the authenticator id in the key. A signed root is the batch statement's
fields and the signature (about 250 bytes): with it a segment is enough to
verify each of its readings, without fetching the batches (hundreds of KiB each).
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from securecloud.apps.metering.reading import INTERVAL_S
from securecloud.apps.metering.reading import SIZE as REPORT_SIZE
from securecloud.crypto import canonical, leaf_hash, verify, verify_inclusion

BUCKET = "metering"
GROUP_SIZE = 4096
LEAF_SIZE = 4 + REPORT_SIZE
_BATCH_MAGIC, _SEGMENT_MAGIC = b"SCMB1", b"SCMS2"
ROOT_FIELDS = ("authenticator", "seq", "size", "root", "created")
_RECORD = struct.Struct(">IIIB")


def batch_key(authenticator: str, seq: int) -> str:
    return f"batches/{authenticator}/{seq:012d}"


def segment_key(day: dt.date, group: int, authenticator: str, seq: int) -> str:
    return f"readings/{day.isoformat()}/{group:05d}/{authenticator}-{seq:012d}"


def state_key(authenticator: str) -> str:
    return f"state/{authenticator}.json"


def group_of(meter_id: int) -> int:
    return meter_id // GROUP_SIZE


def day_of(timestamp: int) -> tuple[dt.date, int, int]:
    """(day, interval index 0..95, clock offset s) of a report stamped at an interval's end."""
    nearest = round(timestamp / INTERVAL_S) * INTERVAL_S
    start = nearest - INTERVAL_S
    return _date(start // 86400), (start % 86400) // INTERVAL_S, timestamp - nearest


@lru_cache(maxsize=4096)
def _date(days_since_epoch: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=days_since_epoch)


_EPOCH = dt.date(1970, 1, 1)


def batch_statement(header: dict) -> bytes:
    return canonical.encode(
        {"type": "securecloud.metering.batch.v1", **{k: header[k] for k in ROOT_FIELDS}}
    )


def signed_root(header: dict) -> dict:
    """What a verifier needs of a batch header: the signed fields and the signature."""
    return {**{k: header[k] for k in ROOT_FIELDS}, "signature": header["signature"]}


def encode_batch(header: dict, leaves: list[bytes]) -> bytes:
    head = canonical.encode(header)
    return b"".join([_BATCH_MAGIC, len(head).to_bytes(4, "big"), head, *leaves])


def decode_batch(data: bytes) -> tuple[dict, list[bytes]]:
    if data[:5] != _BATCH_MAGIC:
        raise ValueError("not a metering batch")
    n = int.from_bytes(data[5:9], "big")
    header = canonical.decode(data[9 : 9 + n])
    body = memoryview(data)[9 + n :]
    if len(body) != header["size"] * LEAF_SIZE:
        raise ValueError("batch size does not match its header")
    return header, [bytes(body[i : i + LEAF_SIZE]) for i in range(0, len(body), LEAF_SIZE)]


@dataclass(frozen=True, slots=True)
class StoredReading:
    meter_id: int
    report: bytes
    batch_seq: int
    leaf_index: int
    proof: tuple[bytes, ...]

    def encode(self) -> bytes:
        return encode_record(
            self.meter_id, self.batch_seq, self.leaf_index, self.proof, self.report
        )


def encode_record(meter_id: int, seq: int, index: int, proof, report: bytes) -> bytes:
    return b"".join((_RECORD.pack(meter_id, seq, index, len(proof)), report, *proof))


def record_seq(record: bytes) -> int:
    return int.from_bytes(record[4:8], "big")


def encode_segment(records: list[bytes], roots: list[dict]) -> bytes:
    head = canonical.encode(sorted(roots, key=lambda r: r["seq"]))
    return b"".join([_SEGMENT_MAGIC, len(head).to_bytes(4, "big"), head, *records])


def segment_roots(data: bytes) -> dict[int, dict]:
    """The signed roots a segment carries, by batch seq."""
    if data[:5] != _SEGMENT_MAGIC:
        raise ValueError("not a metering segment")
    n = int.from_bytes(data[5:9], "big")
    return {root["seq"]: root for root in canonical.decode(data[9 : 9 + n])}


def decode_segment(data: bytes) -> Iterator[StoredReading]:
    if data[:5] != _SEGMENT_MAGIC:
        raise ValueError("not a metering segment")
    pos, end = 9 + int.from_bytes(data[5:9], "big"), len(data)
    while pos < end:
        meter, seq, index, n = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        report = data[pos : pos + REPORT_SIZE]
        pos += REPORT_SIZE
        proof = tuple(data[pos + 32 * i : pos + 32 * i + 32] for i in range(n))
        pos += 32 * n
        yield StoredReading(meter, report, seq, index, proof)


def verify_stored(record: StoredReading, header: dict, public_key) -> None:
    """Check a stored reading against its batch: the batch's signature under the
    regulator-registered key, then the reading's inclusion proof to the signed root.
    Raises SignatureError or ProofError."""
    verify(public_key, batch_statement(header), bytes.fromhex(header["signature"]))
    leaf = record.meter_id.to_bytes(4, "big") + record.report
    verify_inclusion(
        leaf_hash(leaf),
        record.leaf_index,
        header["size"],
        record.proof,
        bytes.fromhex(header["root"]),
    )


def stored_counters(storage, prefix: str = "readings/") -> dict[int, set[int]]:
    """Every (meter, report counter) in the segments under `prefix`: what is in the KVS."""
    found: dict[int, set[int]] = {}
    keys, start = [], ""
    while listed := storage.list(BUCKET, prefix, start, 1000):
        keys += [item["key"] for item in listed]
        start = listed[-1]["key"]
    for key in keys:
        for record in decode_segment(storage.get(BUCKET, key)):
            found.setdefault(record.meter_id, set()).add(int.from_bytes(record.report[:4], "big"))
    return found
