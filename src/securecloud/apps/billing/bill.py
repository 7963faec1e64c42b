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
- The commitment, as OCMF does for signed meter values: the root over the
  leaf hashes of the period's readings (leaf = meter id || report) in counter
  order, their count, first and last counter, the opening reading's leaf hash,
  the totals and the tariff's digest, signed by the utility's key. The root is
  RFC 6962's over the leaf hashes taken ROOT_CHUNK (a day's worth) at a time
  (`crypto.chunked_root`): a month costs 59 hash calls instead of 2,879, and
  one reading is shown to be in a bill by its chunk's other 95 hashes and the
  chunk's audit path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from securecloud.apps.billing.evidence import SignedReading
from securecloud.apps.billing.tariff import Tariff
from securecloud.apps.metering.reading import INTERVAL_S, READINGS_PER_DAY
from securecloud.crypto import canonical, chunked_root, fingerprint, sign, verify

BILL_TYPE = "securecloud.billing.bill.v2"  # v1 rooted every hash singly: no chunks
ROOT_CHUNK = READINGS_PER_DAY  # reading hashes per leaf of the bill's root
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


@dataclass
class Columns:
    """Readings as columns (sorted by counter, one per counter) with their leaf hashes:
    what `compute` works on, whether they come from segments or from an evidence file."""

    counter: np.ndarray  # int64
    end: np.ndarray  # int64, interval end
    energy: np.ndarray  # int64, register Wh
    demand: np.ndarray  # float64, W
    hashes: np.ndarray  # leaf hashes, dtype V32

    def __len__(self) -> int:
        return len(self.counter)

    @classmethod
    def from_fields(cls, counter, timestamp, energy, demand, hashes: np.ndarray) -> Columns:
        return cls(
            counter.astype(np.int64),
            np.rint(timestamp.astype(np.int64) / INTERVAL_S).astype(np.int64) * INTERVAL_S,
            energy.astype(np.int64),
            demand.astype(np.float64),
            hashes,
        )

    @classmethod
    def from_readings(cls, readings: list[SignedReading]) -> Columns:
        table = np.frombuffer(b"".join(r.report for r in readings), REPORT_DTYPE)
        hashes = np.frombuffer(b"".join(r.leaf_hash for r in readings), "V32")
        return cls.from_fields(
            table["counter"], table["timestamp"], table["energy"], table["totals"][:, 4], hashes
        )


REPORT_DTYPE = np.dtype(
    [("counter", ">u4"), ("timestamp", ">u4"), ("flags", "u1"), ("phases", ">f4", (21,)),
     ("totals", ">f4", (5,)), ("energy", ">u8")]
)  # fmt: skip


def select_columns(rows: Columns, period: Period, meter_id: int) -> tuple[Columns, int | None]:
    """(the period's readings, once per counter, by counter; the index in `rows` of the
    opening reading or None), from one meter's rows in any order."""
    before = np.flatnonzero(rows.end < period.first_end)
    opening = int(before[np.argmax(rows.counter[before])]) if len(before) else None
    inside = np.flatnonzero((rows.end >= period.first_end) & (rows.end <= period.last_end))
    order = inside[np.argsort(rows.counter[inside], kind="stable")]
    counters = rows.counter[order]
    repeat = np.flatnonzero(counters[1:] == counters[:-1]) + 1
    for k in repeat:  # the same reading from two segments is fine; two readings are not
        if rows.hashes[order[k]] != rows.hashes[order[k - 1]]:
            raise BillError(
                f"meter {meter_id}: two different reports with counter {int(counters[k])}"
            )
    keep = np.delete(order, repeat)
    return (
        Columns(
            rows.counter[keep],
            rows.end[keep],
            rows.energy[keep],
            rows.demand[keep],
            rows.hashes[keep],
        ),
        opening,
    )


def compute(
    meter_id: int,
    supply: str,
    period: Period,
    readings: Columns,
    opening: tuple[int, int, int, bytes] | None,
    tariff: Tariff,
) -> dict:
    """The bill's content (unsigned). `readings`: the period's, one per counter, by
    counter; `opening`: (counter, interval end, register Wh, leaf hash) or None."""
    ends, counters = readings.end, readings.counter
    later = np.flatnonzero(ends[1:] <= ends[:-1]) + 1  # counters rise, ends must too
    reordered = counters[later].tolist()
    slot = (ends - period.first_end) // INTERVAL_S  # ends are multiples of INTERVAL_S
    present = np.zeros(period.expected, dtype=bool)
    present[slot[(slot >= 0) & (slot < period.expected)]] = True
    missing = (period.first_end + INTERVAL_S * np.flatnonzero(~present)).tolist()
    n_read = len(readings)
    gaps = int(counters[-1] - counters[0] + 1 - n_read) if n_read else 0

    if opening is not None:
        c = np.concatenate([[opening[0]], counters])
        e = np.concatenate([[opening[1]], ends])
        w = np.concatenate([[opening[2]], readings.energy])
    else:
        c, e, w = counters, ends, readings.energy
    steps = np.diff(w)
    spans = np.maximum(1, np.diff(e) // INTERVAL_S)
    by_window: dict[str, int] = {}
    single = spans == 1
    if single.any():
        windows = tariff.windows_of(e[1:][single] - INTERVAL_S)
        for name, wh in zip(
            tariff.window_names,
            np.bincount(windows, weights=steps[single], minlength=len(tariff.window_names)),
            strict=True,
        ):
            if wh:
                by_window[name] = by_window.get(name, 0) + int(wh)
    for k in np.flatnonzero(~single):  # a register step over several intervals: spread
        n, step = int(spans[k]), int(steps[k])
        share, rest = divmod(step, n)
        for j in range(1, n + 1):
            name = tariff.window_of(int(e[k]) + j * INTERVAL_S - INTERVAL_S)
            by_window[name] = by_window.get(name, 0) + share + (rest if j == n else 0)
    pairs = single & (np.diff(c) == 1)
    demand = readings.demand if opening is None else np.concatenate([[0.0], readings.demand])
    demand_wh = np.rint(demand[1:][pairs] * INTERVAL_S / 3600).astype(np.int64)
    register_steps = steps[pairs]
    disagreements = int((np.abs(register_steps - demand_wh) > 2 + 0.02 * np.abs(demand_wh)).sum())
    energy_wh = int(w[-1] - w[0]) if len(w) else 0

    charges = {
        window: Decimal(wh) / 1000 * tariff.energy_price[window]
        for window, wh in sorted(by_window.items())
    }
    max_demand_w = round(float(readings.demand.max())) if n_read else 0
    demand_charge = None
    if tariff.demand_price is not None and supply == "mv3":
        demand_charge = Decimal(max_demand_w) / 1000 * tariff.demand_price
    total = sum(charges.values(), Decimal(0)) + (demand_charge or Decimal(0))
    return {
        "type": BILL_TYPE,
        "meter": meter_id,
        "supply": supply,
        "period": period.to_json(),
        "tariff": tariff.reference,
        "readings": {
            "count": n_read,
            "expected": period.expected,
            "first_counter": int(counters[0]) if n_read else None,
            "last_counter": int(counters[-1]) if n_read else None,
            "root": reading_root(readings.hashes.tobytes()).hex() if n_read else None,
            "missing": _ranges(missing, INTERVAL_S),
            "missing_count": len(missing),
            "counter_gaps": gaps,
            "reordered": reordered,
        },
        "opening": None
        if opening is None
        else {
            "counter": int(opening[0]),
            "energy_wh": int(opening[2]),
            "leaf_hash": opening[3].hex(),
        },
        "closing_energy_wh": int(w[-1]) if len(w) else None,
        "energy_wh": energy_wh,
        "energy_by_window_wh": dict(sorted(by_window.items())),
        "cross_check": {
            "intervals": int(pairs.sum()),
            "register_wh": int(register_steps.sum()),
            "demand_wh": int(demand_wh.sum()),
            "disagreements": disagreements,
        },
        "max_demand_w": max_demand_w,
        "charges": {
            "energy": {w_: _money(v) for w_, v in charges.items()},
            "demand": None if demand_charge is None else _money(demand_charge),
        },
        "total": _money(total),
        "currency": tariff.currency,
    }


def compute_from_readings(
    meter_id: int,
    supply: str,
    period: Period,
    readings: list[SignedReading],
    opening: SignedReading | None,
    tariff: Tariff,
) -> dict:
    """`compute` for signed readings (selected and ordered, e.g. from an evidence file)."""
    first = None
    if opening is not None:
        row = Columns.from_readings([opening])
        first = (int(row.counter[0]), int(row.end[0]), int(row.energy[0]), opening.leaf_hash)
    return compute(meter_id, supply, period, Columns.from_readings(readings), first, tariff)


def reading_root(hashes: bytes) -> bytes:
    """The bill's root over its readings' leaf hashes (back to back, counter order)."""
    return chunked_root(hashes, ROOT_CHUNK)


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
