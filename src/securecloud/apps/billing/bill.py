"""A consumer's bill for a period, computed from signed readings and committing to them.

What the bill says and how it follows from the readings (the regulator repeats
exactly this computation, `audit.py`):

- The period is whole UTC days [start, start + days): 96 intervals a day,
  each named by its end. A reading belongs to the interval whose end is
  nearest its timestamp (meters drift by up to a minute).
- Readings are kept once per counter (segments may repeat one after an
  authenticator restart) and ordered by counter. Counters and interval ends
  must rise together: a reading that breaks this is listed as `reordered`.
- `missing`: intervals of the period with no reading, as [first end, last end]
  ranges; `counter_gaps`: counters between the first and the last that are absent.
- Energy comes from the register: closing register minus opening register,
  where the opening reading is the last one before the period (the previous
  bill's closing). Without one (a meter's first period) the first reading of
  the period opens it. Register steps are spread evenly over the intervals
  they cover and each interval is priced in the tariff window its start falls
  in. Cross-check: over consecutive readings, register steps against the
  interval demand x 15 min.
- Demand charge (supplies above 1 kV with a tariff that has one): the
  period's highest 15-minute demand in kW x the price.
- The commitment, as OCMF does for signed meter values: the RFC 6962 root over
  the leaves (meter id || report) of the period's readings in counter order,
  their count, first and last counter, the opening reading's leaf hash, the
  totals and the tariff's digest, signed by the utility's key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise

from securecloud.apps.billing.evidence import SignedReading
from securecloud.apps.billing.tariff import Tariff
from securecloud.apps.metering.reading import INTERVAL_S, READINGS_PER_DAY
from securecloud.crypto import MerkleTree, canonical, fingerprint, sign, verify

BILL_TYPE = "securecloud.billing.bill.v1"
CENT = Decimal("0.01")
_EPOCH = dt.date(1970, 1, 1)


class BillError(ValueError):
    """Readings a bill cannot be made from (e.g. two different reports with one counter)."""


@dataclass(frozen=True)
class Period:
    start: dt.date
    days: int

    @property
    def first_end(self) -> int:
        return (self.start - _EPOCH).days * 86400 + INTERVAL_S

    @property
    def last_end(self) -> int:
        return (self.start - _EPOCH).days * 86400 + self.days * 86400

    @property
    def expected(self) -> int:
        return self.days * READINGS_PER_DAY

    def to_json(self) -> dict:
        return {"start": self.start.isoformat(), "days": self.days}

    @classmethod
    def from_json(cls, doc: dict) -> Period:
        return cls(dt.date.fromisoformat(doc["start"]), int(doc["days"]))


def interval_end(timestamp: int) -> int:
    return round(timestamp / INTERVAL_S) * INTERVAL_S


@dataclass
class Selection:
    """The readings of a period, once each, in counter order, and the opening one."""

    readings: list[SignedReading]
    opening: SignedReading | None
    duplicates: int


def select(readings: list[SignedReading], period: Period) -> Selection:
    by_counter: dict[int, SignedReading] = {}
    duplicates = 0
    opening = None
    for reading in readings:
        end = interval_end(reading.reading.timestamp)
        if end < period.first_end:
            if opening is None or reading.counter > opening.counter:
                opening = reading
            continue
        if end > period.last_end:
            continue
        seen = by_counter.get(reading.counter)
        if seen is not None:
            if seen.report != reading.report:
                raise BillError(
                    f"meter {reading.meter_id}: two different reports with counter "
                    f"{reading.counter}"
                )
            duplicates += 1
            continue
        by_counter[reading.counter] = reading
    ordered = [by_counter[c] for c in sorted(by_counter)]
    return Selection(ordered, opening, duplicates)


def _ranges(values: list[int], step: int) -> list[list[int]]:
    out: list[list[int]] = []
    for v in values:
        if out and v == out[-1][1] + step:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def compute(
    meter_id: int,
    supply: str,
    period: Period,
    readings: list[SignedReading],
    opening: SignedReading | None,
    tariff: Tariff,
) -> dict:
    """The bill's content (unsigned) from readings already selected (`select`)."""
    ends = [interval_end(r.reading.timestamp) for r in readings]
    counters = [r.counter for r in readings]
    reordered = [
        counters[i] for i in range(1, len(ends)) if ends[i] <= ends[i - 1]
    ]  # counters rise, interval ends must too
    covered = set(ends)
    missing = [
        e for e in range(period.first_end, period.last_end + 1, INTERVAL_S) if e not in covered
    ]
    gaps = (counters[-1] - counters[0] + 1 - len(counters)) if counters else 0

    chain = ([opening] if opening is not None else []) + readings
    by_window: dict[str, int] = {}
    register_wh = interval_wh = pairs = disagreements = 0
    for a, b in pairwise(chain):
        end_a, end_b = interval_end(a.reading.timestamp), interval_end(b.reading.timestamp)
        step = b.reading.energy_wh - a.reading.energy_wh
        n = max(1, (end_b - end_a) // INTERVAL_S)
        share, rest = divmod(step, n)
        for k in range(1, n + 1):
            window = tariff.window_of(end_a + k * INTERVAL_S - INTERVAL_S)
            by_window[window] = by_window.get(window, 0) + share + (rest if k == n else 0)
        if n == 1 and b.counter == a.counter + 1:
            demand_wh = round(b.reading.demand * INTERVAL_S / 3600)
            pairs += 1
            register_wh += step
            interval_wh += demand_wh
            if abs(step - demand_wh) > 2 + 0.02 * abs(demand_wh):
                disagreements += 1
    energy_wh = chain[-1].reading.energy_wh - chain[0].reading.energy_wh if chain else 0

    charges = {
        window: Decimal(wh) / 1000 * tariff.energy_price[window]
        for window, wh in sorted(by_window.items())
    }
    max_demand_w = round(max((r.reading.demand for r in readings), default=0.0))
    demand_charge = None
    if tariff.demand_price is not None and supply == "mv3":
        demand_charge = Decimal(max_demand_w) / 1000 * tariff.demand_price
    total = sum(charges.values(), Decimal(0)) + (demand_charge or Decimal(0))
    tree = MerkleTree([r.leaf_hash for r in readings]) if readings else None
    return {
        "type": BILL_TYPE,
        "meter": meter_id,
        "supply": supply,
        "period": period.to_json(),
        "tariff": tariff.reference,
        "readings": {
            "count": len(readings),
            "expected": period.expected,
            "first_counter": counters[0] if counters else None,
            "last_counter": counters[-1] if counters else None,
            "root": tree.root().hex() if tree else None,
            "missing": _ranges(missing, INTERVAL_S),
            "missing_count": len(missing),
            "counter_gaps": gaps,
            "reordered": reordered,
        },
        "opening": None
        if opening is None
        else {
            "counter": opening.counter,
            "energy_wh": opening.reading.energy_wh,
            "leaf_hash": opening.leaf_hash.hex(),
        },
        "closing_energy_wh": chain[-1].reading.energy_wh if chain else None,
        "energy_wh": energy_wh,
        "energy_by_window_wh": dict(sorted(by_window.items())),
        "cross_check": {
            "intervals": pairs,
            "register_wh": register_wh,
            "demand_wh": interval_wh,
            "disagreements": disagreements,
        },
        "max_demand_w": max_demand_w,
        "charges": {
            "energy": {w: _money(v) for w, v in charges.items()},
            "demand": None if demand_charge is None else _money(demand_charge),
        },
        "total": _money(total),
        "currency": tariff.currency,
    }


def sign_bill(content: dict, utility_key, issued: int) -> dict:
    bill = {**content, "issued": issued, "issuer": fingerprint(utility_key.public_key())}
    return {**bill, "signature": sign(utility_key, canonical.encode(bill)).hex()}


def verify_bill_signature(bill: dict, utility_keys) -> None:
    """Raises SignatureError unless one of the utility's keys signed this bill."""
    from securecloud.crypto.errors import SignatureError

    body = {k: v for k, v in bill.items() if k != "signature"}
    statement = canonical.encode(body)
    for key in utility_keys:
        try:
            verify(key, statement, bytes.fromhex(bill["signature"]))
            return
        except (SignatureError, ValueError):
            continue
    raise SignatureError("the bill is not signed by a utility key")
