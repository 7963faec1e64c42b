"""The regulator's check of a bill, with only verification keys, the tariff and the evidence.

Full mode (the evidence carries the reports): the bill is signed by the
utility; every reading is in a batch signed with a regulator-registered key;
the readings are the meter's, inside the period, in strictly increasing
counter order (an equal counter is a duplicate, a lower one a reordering);
and recomputing the bill from them and the tariff (`bill.compute`) gives
exactly what the bill says: the root over the readings, their count, first and
last counter, the missing intervals, the energy per window and the total. So
a reading counted twice, left out, altered, reordered or injected, or a total
that does not follow, is each found, with the field that disagrees.

Hash-only mode (the evidence carries leaf hashes, no consumption): the
signatures, every hash's inclusion in a signed batch, no hash twice, the
root over the hashes and the count are checked, and that the count plus the
intervals the bill lists as missing is the period's expected count. Energy
and money are not checked in this mode: that needs the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from securecloud.apps.billing import bill as bills
from securecloud.apps.billing.evidence import (
    EVIDENCE_TYPE,
    EvidenceError,
    SignedReading,
    verify_readings,
)
from securecloud.apps.billing.tariff import Tariff
from securecloud.crypto.errors import SignatureError

COMPARED = (
    ("readings", "readings"),
    ("opening", "opening"),
    ("closing_energy_wh", "closing energy"),
    ("energy_wh", "energy"),
    ("energy_by_window_wh", "energy by window"),
    ("cross_check", "cross-check"),
    ("max_demand_w", "maximum demand"),
    ("charges", "charges"),
    ("total", "total"),
    ("currency", "currency"),
)


@dataclass
class AuditResult:
    meter: int
    mode: str  # full | hash-only
    problems: list[dict] = field(default_factory=list)  # {"check", "detail"}
    readings: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, check: str, detail: str) -> None:
        self.problems.append({"check": check, "detail": detail})

    def to_json(self) -> dict:
        return {
            "meter": self.meter,
            "mode": self.mode,
            "ok": self.ok,
            "readings": self.readings,
            "problems": self.problems,
        }


def make_evidence(
    meter_id: int,
    readings: list[SignedReading],
    opening: SignedReading | None,
    roots: dict,
    hash_only: bool = False,
) -> dict:
    cited = {r.batch for r in readings} | ({opening.batch} if opening else set())
    return {
        "type": EVIDENCE_TYPE,
        "meter": meter_id,
        "hash_only": hash_only,
        "roots": [roots[b] for b in sorted(cited)],
        "opening": None if opening is None else opening.to_json(hash_only),
        "readings": [r.to_json(hash_only) for r in readings],
    }


def audit(
    bill: dict,
    evidence: dict,
    tariff: Tariff,
    utility_keys: list,
    regulator_keys: list,
) -> AuditResult:
    """The regulator's check of a bill against an evidence file (its JSON form)."""
    meter = bill.get("meter")
    hash_only = bool(evidence.get("hash_only"))
    result = AuditResult(meter, "hash-only" if hash_only else "full")
    if evidence.get("type") != EVIDENCE_TYPE or evidence.get("meter") != meter:
        result.fail("evidence", "the evidence is not for this meter's bill")
        return result
    try:
        readings = [SignedReading.from_json(meter, d) for d in evidence["readings"]]
        opening = (
            None
            if evidence.get("opening") is None
            else SignedReading.from_json(meter, evidence["opening"])
        )
        roots = {(r["authenticator"], r["seq"]): r for r in evidence["roots"]}
    except (EvidenceError, KeyError, TypeError, ValueError) as exc:
        return _refused(result, exc)
    return check(bill, readings, opening, roots, tariff, utility_keys, regulator_keys, result)


def check(
    bill: dict,
    readings: list[SignedReading],
    opening: SignedReading | None,
    roots: dict,
    tariff: Tariff,
    utility_keys: list,
    regulator_keys: list,
    result: AuditResult | None = None,
) -> AuditResult:
    """Every check on parsed evidence: `audit` parses the JSON form first; a verifier
    that holds the signed readings already calls this directly."""
    result = result or AuditResult(bill.get("meter"), "full")
    if bill.get("type") != bills.BILL_TYPE:
        result.fail("bill-type", f"a bill of type {bill.get('type')!r}, not {bills.BILL_TYPE}")
        return result
    try:
        bills.verify_bill_signature(bill, utility_keys)
    except (SignatureError, KeyError) as exc:
        result.fail("bill-signature", str(exc))
        return result
    if bill["tariff"] != tariff.reference:
        result.fail("tariff", f"the bill used {bill['tariff']}, not {tariff.reference}")
        return result
    try:
        period = bills.Period.from_json(bill["period"])
        result.readings = len(readings)
        verify_readings(readings + ([opening] if opening else []), roots, regulator_keys)
    except (EvidenceError, KeyError, TypeError, ValueError) as exc:
        return _refused(result, exc)
    if result.mode == "hash-only":
        _hash_only(bill, readings, opening, period, result)
    else:
        _full(bill, readings, opening, period, tariff, result)
    return result


def _refused(result: AuditResult, exc: Exception) -> AuditResult:
    if isinstance(exc, EvidenceError):
        result.fail(exc.reason, str(exc))
    else:
        result.fail("evidence", f"malformed: {exc!r}")
    return result


def _full(bill, readings, opening, period, tariff, result: AuditResult) -> None:
    for before, after in pairwise(readings):
        if after.counter == before.counter:
            result.fail("duplicate", f"counter {after.counter} appears twice")
        elif after.counter < before.counter:
            result.fail("reordered", f"counter {after.counter} comes after {before.counter}")
    for reading in readings:
        end = bills.interval_end(reading.reading.timestamp)
        if not period.first_end <= end <= period.last_end:
            result.fail("outside-period", f"counter {reading.counter} ends at {end}")
    if opening is not None and bills.interval_end(opening.reading.timestamp) >= period.first_end:
        result.fail("opening", "the opening reading is inside the period")
    if result.problems:
        return
    expected = bills.compute_from_readings(
        bill["meter"], bill["supply"], period, readings, opening, tariff
    )
    for key, name in COMPARED:
        if bill.get(key) != expected[key]:
            result.fail(
                f"{key}-mismatch",
                f"{name}: the bill says {bill.get(key)!r}, the readings give {expected[key]!r}",
            )


def _hash_only(bill, readings, opening, period, result: AuditResult) -> None:
    hashes = [r.leaf_hash for r in readings]
    if len(set(hashes)) != len(hashes):
        result.fail("duplicate", "a reading's hash appears twice")
    claimed = bill["readings"]
    if len(readings) != claimed["count"]:
        result.fail(
            "readings-mismatch", f"{len(readings)} hashes, the bill counts {claimed['count']}"
        )
    root = bills.reading_root(b"".join(hashes)).hex() if hashes else None
    if root != claimed["root"]:
        result.fail("readings-mismatch", "the hashes do not give the bill's root")
    if claimed["count"] + claimed["missing_count"] != period.expected:
        result.fail(
            "completeness",
            f"{claimed['count']} readings + {claimed['missing_count']} missing "
            f"!= {period.expected} intervals",
        )
    if (opening is None) != (bill["opening"] is None) or (
        opening is not None and opening.leaf_hash.hex() != bill["opening"]["leaf_hash"]
    ):
        result.fail("opening-mismatch", "the opening reading is not the bill's")
