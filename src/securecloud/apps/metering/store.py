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

The leaves of a batch are ordered by (group, day, meter, counter), so the
readings a segment takes from one batch are one contiguous range of its
leaves, and one range proof (the roots of the subtrees outside the range,
about 2 log2 n hashes) proves them all: a segment record carries no proof of
its own (133 bytes, not about 500 with a 12-hash audit path), and a reader
recomputes each batch's root from the range, about two hashes per reading.
Single audit paths for a verifier who checks readings one by one come from
the same range (`crypto.RangeProof.inclusion_proof`).

Batch layout: b"SCMB1" | u32 header length | canonical JSON header | leaves.
Segment layout: b"SCMS3" | u32 head length | canonical JSON head | records:
    head   = {"roots": [signed root of every batch cited], "ranges": [{"seq", "lo",
              "hi", "proof": [hex, ...]}]}
    record = batch seq u32 | leaf index u32 | meter u32 | report (121)
             (the last 125 bytes are the leaf: meter id || report)
plus the authenticator id in the key. A signed root is the batch statement's
fields and the signature (about 250 bytes): with it a segment is enough to
verify its readings, without fetching the batches (hundreds of KiB each).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from securecloud.apps.metering.reading import INTERVAL_S
from securecloud.apps.metering.reading import SIZE as REPORT_SIZE
from securecloud.crypto import (
    RangeProof,
    canonical,
    leaf_hash,
    leaf_hashes,
    verify,
    verify_inclusion,
)
from securecloud.crypto.errors import ProofError, SignatureError

BUCKET = "metering"
GROUP_SIZE = 4096
LEAF_SIZE = 4 + REPORT_SIZE
_BATCH_MAGIC, _SEGMENT_MAGIC = b"SCMB1", b"SCMS3"
ROOT_FIELDS = ("authenticator", "seq", "size", "root", "created")
_RECORD = struct.Struct(">III")
RECORD_SIZE = _RECORD.size + REPORT_SIZE
RECORD_DTYPE = np.dtype(
    [("seq", ">u4"), ("index", ">u4"), ("meter", ">u4"), ("counter", ">u4"),
     ("timestamp", ">u4"), ("flags", "u1"), ("phases", ">f4", (21,)), ("totals", ">f4", (5,)),
     ("energy", ">u8")]
)  # fmt: skip
assert RECORD_DTYPE.itemsize == RECORD_SIZE


def batch_key(authenticator: str, seq: int) -> str:
    return f"batches/{authenticator}/{seq:012d}"


def segment_key(day: dt.date, group: int, authenticator: str, seq: int) -> str:
    return f"readings/{day.isoformat()}/{group:05d}/{authenticator}-{seq:012d}"


def authenticator_of(key: str) -> str:
    """The authenticator named in a segment key (segment_key's inverse, for that part)."""
    return key.rsplit("/", 1)[1].rpartition("-")[0]


LIST_PAGE = 1000  # objects per list call


def list_sized(storage, prefix: str, bucket: str = BUCKET) -> list[tuple[str, int]]:
    """(key, size in bytes) of every object under `prefix`, across the KVS's pages of 1,000."""
    found, start = [], ""
    while True:
        listed = storage.list(bucket, prefix, start, LIST_PAGE)
        found += [(item["key"], item["size"]) for item in listed]
        if len(listed) < LIST_PAGE:  # the last page: no need to ask for an empty one
            return found
        start = listed[-1]["key"]


def list_keys(storage, prefix: str, bucket: str = BUCKET) -> list[str]:
    """Every key under `prefix`, across the KVS's pages of 1,000."""
    return [key for key, _ in list_sized(storage, prefix, bucket)]


def state_key(authenticator: str) -> str:
    return f"state/{authenticator}.json"


def group_of(meter_id: int) -> int:
    return meter_id // GROUP_SIZE


ITEM_METERS = 1024  # meters a batch job item covers: readers of a group's segments


def items(meters: list[int], size: int = ITEM_METERS) -> list[list[int]]:
    """Meters cut into batch-job items within one segment group, at most `size` each, so
    a segment is read (and all its records verified) by as few items as memory allows."""
    by_group: dict[int, list[int]] = {}
    for meter in sorted(meters):
        by_group.setdefault(group_of(meter), []).append(meter)
    out = []
    for group in by_group.values():
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


_LEAF_HEAD = np.dtype(
    [("meter", ">u4"), ("counter", ">u4"), ("timestamp", ">u4"), ("rest", f"V{LEAF_SIZE - 12}")]
)
_BATCH_RECORD = np.dtype([("seq", ">u4"), ("index", ">u4"), ("leaf", f"V{LEAF_SIZE}")])
assert _BATCH_RECORD.itemsize == RECORD_SIZE


def _slot_keys(leaves: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group, day number, leaf head) of each leaf, as day_of and group_of compute them."""
    head = np.frombuffer(b"".join(leaves), dtype=_LEAF_HEAD)
    start = _nearest_ends(head["timestamp"]) - INTERVAL_S
    return (head["meter"] // GROUP_SIZE).astype(np.int64), start // 86400, head


def order_leaves(leaves: list[bytes]) -> list[bytes]:
    """A batch's leaves sorted by (group, day, meter, counter), so each segment's share
    of the batch is one range (one NumPy sort: a key per leaf in Python cost 6 %)."""
    if not leaves:
        return []
    group, day, head = _slot_keys(leaves)
    order = np.lexsort((head["counter"], head["meter"], day, group))
    return [leaves[i] for i in order.tolist()]


def leaf_slots(leaves: list[bytes]) -> list[tuple[tuple[dt.date, int], int, int]]:
    """((day, group), lo, hi) of each run of leaves (in order_leaves order) that
    belongs to one segment."""
    if not leaves:
        return []
    group, day, _head = _slot_keys(leaves)
    cut = np.flatnonzero((np.diff(group) != 0) | (np.diff(day) != 0)) + 1
    bounds = [0, *cut.tolist(), len(leaves)]
    return [
        ((_date(int(day[lo])), int(group[lo])), lo, hi) for lo, hi in itertools.pairwise(bounds)
    ]


def day_of(timestamp: int) -> tuple[dt.date, int, int]:
    """(day, interval index 0..95, clock offset s) of a report stamped at an interval's end."""
    nearest = round(timestamp / INTERVAL_S) * INTERVAL_S
    start = nearest - INTERVAL_S
    return _date(start // 86400), (start % 86400) // INTERVAL_S, timestamp - nearest


def _nearest_ends(timestamps: np.ndarray) -> np.ndarray:
    """day_of's nearest interval end of many timestamps (np.rint rounds half to even,
    as round() does)."""
    return np.rint(timestamps.astype(np.int64) / INTERVAL_S).astype(np.int64) * INTERVAL_S


def clock_offsets(timestamps: np.ndarray) -> np.ndarray:
    """day_of's clock offset (s from the nearest interval end) of many timestamps."""
    return timestamps.astype(np.int64) - _nearest_ends(timestamps)


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
    proof: tuple[bytes, ...] = ()  # filled by verify_segment(..., proofs=True)

    @property
    def leaf(self) -> bytes:
        return self.meter_id.to_bytes(4, "big") + self.report


def encode_records(seq: int, leaves: list[bytes]) -> bytes:
    """The records of batch `seq`'s leaves 0..n-1, back to back (RECORD_SIZE each)."""
    records = np.empty(len(leaves), dtype=_BATCH_RECORD)
    records["seq"] = seq
    records["index"] = np.arange(len(leaves))
    records["leaf"] = np.frombuffer(b"".join(leaves), dtype=f"V{LEAF_SIZE}")
    return records.tobytes()


@dataclass(frozen=True)
class Range:
    """The leaves lo..hi-1 of batch `seq` in a segment, and their range proof."""

    seq: int
    lo: int
    hi: int
    proof: tuple[bytes, ...]

    def to_json(self) -> dict:
        return {
            "seq": self.seq,
            "lo": self.lo,
            "hi": self.hi,
            "proof": [p.hex() for p in self.proof],
        }


def encode_segment(records: list[bytes], roots: list[dict], ranges: list[Range]) -> bytes:
    head = canonical.encode(
        {
            "roots": sorted(roots, key=lambda r: r["seq"]),
            "ranges": [r.to_json() for r in sorted(ranges, key=lambda r: r.seq)],
        }
    )
    return b"".join([_SEGMENT_MAGIC, len(head).to_bytes(4, "big"), head, *records])


def segment_head(data: bytes) -> tuple[dict[int, dict], list[Range]]:
    """The signed roots (by batch seq) and the ranges a segment carries."""
    if data[:5] != _SEGMENT_MAGIC:
        raise ValueError("not a metering segment")
    n = int.from_bytes(data[5:9], "big")
    head = canonical.decode(data[9 : 9 + n])
    ranges = [
        Range(r["seq"], r["lo"], r["hi"], tuple(bytes.fromhex(p) for p in r["proof"]))
        for r in head["ranges"]
    ]
    return {root["seq"]: root for root in head["roots"]}, ranges


def segment_roots(data: bytes) -> dict[int, dict]:
    return segment_head(data)[0]


def _records(data: bytes) -> memoryview:
    if data[:5] != _SEGMENT_MAGIC:
        raise ValueError("not a metering segment")
    body = memoryview(data)[9 + int.from_bytes(data[5:9], "big") :]
    if len(body) % RECORD_SIZE:
        raise ValueError("segment records are cut short")
    return body


def decode_segment(data: bytes) -> Iterator[StoredReading]:
    """The records, unverified and without audit paths (see verify_segment)."""
    body = _records(data)
    for start in range(0, len(body), RECORD_SIZE):
        seq, index, meter = _RECORD.unpack_from(body, start)
        yield StoredReading(meter, bytes(body[start + 12 : start + RECORD_SIZE]), seq, index)


@dataclass
class VerifiedSegment:
    """A segment whose every record is a leaf of a batch with a signed root."""

    table: np.ndarray  # RECORD_DTYPE, in record order
    hashes: np.ndarray  # leaf hash of each record (dtype V32)
    ranges: dict[int, RangeProof]  # seq -> its range (audit paths if read with `paths`)
    roots: dict[int, dict]  # seq -> signed root


def read_segment(
    data: bytes, public_keys, checked: dict | None = None, paths: bool = False
) -> VerifiedSegment:
    """Verify every record: per batch, hash its range of leaves (the record minus seq and
    index is the leaf) up to the root with the range proof, and check the root's
    signature under one of `public_keys` (once per batch: `checked`, seq -> root, is
    shared across segments of one authenticator). Raises SignatureError or ProofError."""
    roots, ranges = segment_head(data)
    body = _records(data)
    table = np.frombuffer(body, dtype=RECORD_DTYPE)
    checked = {} if checked is None else checked
    hashes: list[bytes] = []
    proved: dict[int, RangeProof] = {}
    start = 0
    for span in ranges:  # records lie in the order of their ranges (by batch seq)
        count = span.hi - span.lo
        rows = table[start : start + count]
        if (
            len(rows) != count
            or (rows["seq"] != span.seq).any()
            or (rows["index"] != np.arange(span.lo, span.hi)).any()
        ):
            raise ProofError(f"segment: batch {span.seq}'s records are not its range")
        header = roots.get(span.seq)
        if header is None:
            raise ProofError(f"segment: no signed root for batch {span.seq}")
        root = bytes.fromhex(header["root"])
        if checked.get(span.seq) != root:
            _verify_root(header, public_keys)
            checked[span.seq] = root
        offset = start * RECORD_SIZE
        # a record is seq and index (8 bytes), then the leaf
        leaves = leaf_hashes(body[offset : offset + count * RECORD_SIZE], RECORD_SIZE, 8)
        ranged = RangeProof(header["size"], span.lo, leaves, span.proof, paths)
        if ranged.root != root:
            raise ProofError(f"segment: batch {span.seq}'s range does not give its signed root")
        hashes += leaves
        proved[span.seq] = ranged
        start += count
    if start != len(table):
        raise ProofError("segment: records outside every range")
    return VerifiedSegment(table, np.frombuffer(b"".join(hashes), dtype="V32"), proved, roots)


def verify_segment(
    data: bytes, public_keys, proofs: bool = False, checked: dict | None = None
) -> list[StoredReading]:
    """Every record of the segment as a StoredReading, after `read_segment`'s checks;
    with `proofs`, each carries its audit path in its batch."""
    verified = read_segment(data, public_keys, checked, paths=proofs)
    if not proofs:
        return list(decode_segment(data))
    return [
        dataclasses.replace(
            r, proof=tuple(verified.ranges[r.batch_seq].inclusion_proof(r.leaf_index))
        )
        for r in decode_segment(data)
    ]


def _verify_root(header: dict, public_keys) -> None:
    statement = batch_statement(header)
    for key in public_keys:
        try:
            verify(key, statement, bytes.fromhex(header["signature"]))
            return
        except SignatureError:
            continue
    raise SignatureError(f"batch {header['seq']}: not signed by a registered key")


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
    for key in list_keys(storage, prefix):
        for record in decode_segment(storage.get(BUCKET, key)):
            found.setdefault(record.meter_id, set()).add(int.from_bytes(record.report[:4], "big"))
    return found
