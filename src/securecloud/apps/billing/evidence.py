"""Signed readings: a report with the proof that the attested authenticator signed it.

A reading is evidence when its leaf (meter id || report) is included, by its
RFC 6962 proof, in a batch whose root carries a valid signature under the
regulator-registered key. `verify_readings` checks many at once: the
signature once per batch, and each proof walked upwards only until it meets a
node already shown to lead to that batch's root (readings of one batch share
their upper paths), so a consumer's month costs a few hashes per reading,
not a dozen.

The evidence file given to the regulator (JSON):

    {"type": "securecloud.billing.evidence.v1", "meter", "roots": [signed roots],
     "opening": reading | null, "readings": [reading, ...]}
    reading = {"report": hex} or, hash-only, {"leaf_hash": hex}
              + {"authenticator", "seq", "index", "proof": [hex, ...]}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from securecloud.apps.metering import store
from securecloud.apps.metering.reading import Reading
from securecloud.crypto import merkle, verify
from securecloud.crypto.errors import ProofError, SignatureError

EVIDENCE_TYPE = "securecloud.billing.evidence.v1"


class EvidenceError(ValueError):
    """A reading that is not what the signed batches say; `reason` names the check."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self):  # raised in worker processes, re-raised in the job's
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class SignedReading:
    meter_id: int
    report: bytes | None  # None in hash-only evidence
    authenticator: str
    seq: int
    index: int
    proof: tuple[bytes, ...]
    given_leaf_hash: bytes | None = None

    @property
    def batch(self) -> tuple[str, int]:
        return (self.authenticator, self.seq)

    @property
    def leaf(self) -> bytes:
        return self.meter_id.to_bytes(4, "big") + self.report

    @cached_property
    def leaf_hash(self) -> bytes:
        if self.report is None:  # hash-only evidence
            return self.given_leaf_hash
        return merkle.leaf_hash(self.leaf)

    @cached_property
    def reading(self) -> Reading:
        return Reading.decode(self.report)

    @property
    def counter(self) -> int:
        return int.from_bytes(self.report[:4], "big")

    def to_json(self, hash_only: bool = False) -> dict:
        doc = {"leaf_hash": self.leaf_hash.hex()} if hash_only else {"report": self.report.hex()}
        doc.update(
            authenticator=self.authenticator,
            seq=self.seq,
            index=self.index,
            proof=[p.hex() for p in self.proof],
        )
        return doc

    @classmethod
    def from_json(cls, meter_id: int, doc: dict) -> SignedReading:
        try:
            report = bytes.fromhex(doc["report"]) if "report" in doc else None
            given = None if report is not None else bytes.fromhex(doc["leaf_hash"])
            return cls(
                meter_id,
                report,
                str(doc["authenticator"]),
                int(doc["seq"]),
                int(doc["index"]),
                tuple(bytes.fromhex(p) for p in doc["proof"]),
                given,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise EvidenceError("malformed", f"a reading of the evidence: {exc!r}") from None


def verify_readings(
    readings: Iterable[SignedReading], roots: dict[tuple[str, int], dict], public_keys
) -> None:
    """Every reading is in a batch whose root is signed by one of `public_keys`.
    Raises EvidenceError (reason: unsigned-batch, bad-signature, bad-proof)."""
    checked: dict[tuple[str, int], bytes] = {}
    known: set[tuple] = set()  # (batch, fn, sn, hash): already shown to reach the root
    for reading in readings:
        root = checked.get(reading.batch)
        if root is None:
            root = checked[reading.batch] = _signed_root(reading.batch, roots, public_keys)
        size = roots[reading.batch]["size"]
        if not 0 <= reading.index < size:
            raise EvidenceError("bad-proof", f"leaf {reading.index} of a batch of {size}")
        # RFC 9162 section 2.1.3.2, stopping at a state already known to reach the root
        fn, sn, r = reading.index, size - 1, reading.leaf_hash
        path: list[tuple] = []
        reached = False
        for p in reading.proof:
            state = (reading.batch, fn, sn, r)
            if state in known:
                reached = True
                break
            path.append(state)
            if sn == 0:
                raise EvidenceError("bad-proof", f"proof of leaf {reading.index} too long")
            if fn & 1 or fn == sn:
                r = merkle.node_hash(p, r)
                if not fn & 1:
                    while fn and not fn & 1:
                        fn >>= 1
                        sn >>= 1
            else:
                r = merkle.node_hash(r, p)
            fn >>= 1
            sn >>= 1
        else:
            state = (reading.batch, fn, sn, r)
            reached = state in known or (sn == 0 and r == root)
        if not reached:
            raise EvidenceError(
                "bad-proof",
                f"meter {reading.meter_id}: leaf {reading.index} of batch "
                f"{reading.authenticator}/{reading.seq} does not lead to its signed root",
            )
        known.update(path)


def _signed_root(batch: tuple[str, int], roots: dict, public_keys) -> bytes:
    doc = roots.get(batch)
    if doc is None:
        raise EvidenceError("unsigned-batch", f"no signed root for batch {batch[0]}/{batch[1]}")
    statement = store.batch_statement(doc)
    for key in public_keys:
        try:
            verify(key, statement, bytes.fromhex(doc["signature"]))
            return bytes.fromhex(doc["root"])
        except (SignatureError, ValueError):
            continue
    raise EvidenceError(
        "bad-signature", f"batch {batch[0]}/{batch[1]}: not signed by a registered key"
    )


def from_segment(
    key: str,
    data: bytes,
    public_keys,
    meters: set[int] | None = None,
    proofs: bool = False,
    checked: dict | None = None,
):
    """(signed readings of `meters` in this segment, its signed roots by batch), after
    checking every record against its batch's signed root (store.read_segment); with
    `proofs`, each reading of `meters` carries its audit path for the evidence file."""
    authenticator = key.rsplit("/", 1)[1].rpartition("-")[0]
    try:
        segment = store.read_segment(data, public_keys, checked, paths=proofs)
    except SignatureError as exc:
        raise EvidenceError("bad-signature", f"{key}: {exc}") from None
    except ProofError as exc:
        raise EvidenceError("bad-proof", f"{key}: {exc}") from None
    roots = {(authenticator, seq): doc for seq, doc in segment.roots.items()}
    table = segment.table
    rows = (
        range(len(table))
        if meters is None
        else np.flatnonzero(np.isin(table["meter"], np.fromiter(meters, dtype=np.int64)))
    )
    readings = []
    for i in rows:
        seq, index, meter = int(table["seq"][i]), int(table["index"][i]), int(table["meter"][i])
        proof = tuple(segment.ranges[seq].inclusion_proof(index)) if proofs else ()
        report = table[i : i + 1].tobytes()[12:]
        readings.append(SignedReading(meter, report, authenticator, seq, index, proof))
    return readings, roots


__all__ = [
    "EVIDENCE_TYPE",
    "EvidenceError",
    "ProofError",
    "SignedReading",
    "from_segment",
    "verify_readings",
]
