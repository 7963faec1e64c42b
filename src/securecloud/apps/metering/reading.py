"""The phasor report a meter sends every 15 minutes, its fixed binary layout,
its OBIS codes and the physical plausibility checks the authenticator applies.

Layout (121 bytes, big endian; this is the plaintext inside a DATA frame and
the leaf of a batch's Merkle tree, prefixed by the 4-byte meter id):

    counter   u32   report counter, +1 per report        (0.0.96.15.0.255)
    timestamp u32   end of the interval, Unix seconds    (0.0.1.0.0.255)
    flags     u8    bit 0 load connected, bit 1 three-phase
    per phase L1, L2, L3, 7 x f32:
              voltage V, current A, angle deg, active W, reactive var,
              power factor, voltage THD %
    totals    5 x f32: active W, reactive var, power factor, frequency Hz,
              demand W (average active power over the interval)
    energy    u64   active energy import register, Wh    (1.0.1.8.0.255)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

LAYOUT = struct.Struct(">IIB21f5fQ")
SIZE = LAYOUT.size
INTERVAL_S = 900
READINGS_PER_DAY = 86400 // INTERVAL_S
FLAG_LOAD_CONNECTED = 0x01
FLAG_THREE_PHASE = 0x02
PHASE_FIELDS = ("voltage", "current", "angle", "active", "reactive", "pf", "thd")

# Field -> OBIS code (IEC 62056-61); per-phase fields list L1, L2, L3.
OBIS = {
    "counter": "0.0.96.15.0.255",
    "timestamp": "0.0.1.0.0.255",
    "meter_id": "0.0.96.1.0.255",
    "voltage": ("1.0.32.7.0.255", "1.0.52.7.0.255", "1.0.72.7.0.255"),
    "current": ("1.0.31.7.0.255", "1.0.51.7.0.255", "1.0.71.7.0.255"),
    "angle": ("1.0.81.7.40.255", "1.0.81.7.51.255", "1.0.81.7.62.255"),
    "active": ("1.0.21.7.0.255", "1.0.41.7.0.255", "1.0.61.7.0.255"),
    "reactive": ("1.0.23.7.0.255", "1.0.43.7.0.255", "1.0.63.7.0.255"),
    "pf": ("1.0.33.7.0.255", "1.0.53.7.0.255", "1.0.73.7.0.255"),
    "thd": ("1.0.32.7.124.255", "1.0.52.7.124.255", "1.0.72.7.124.255"),
    "total_active": "1.0.1.7.0.255",
    "total_reactive": "1.0.3.7.0.255",
    "total_pf": "1.0.13.7.0.255",
    "frequency": "1.0.14.7.0.255",
    "demand": "1.0.1.5.0.255",
    "energy_wh": "1.0.1.8.0.255",
}


@dataclass(slots=True)  # not frozen: decoded once per report, and frozen costs 5x to build
class Reading:
    counter: int
    timestamp: int
    flags: int
    phases: tuple[tuple[float, ...], ...]  # 3 x PHASE_FIELDS
    total_active: float
    total_reactive: float
    total_pf: float
    frequency: float
    demand: float
    energy_wh: int

    def encode(self) -> bytes:
        flat = [v for phase in self.phases for v in phase]
        return LAYOUT.pack(
            self.counter,
            self.timestamp,
            self.flags,
            *flat,
            self.total_active,
            self.total_reactive,
            self.total_pf,
            self.frequency,
            self.demand,
            self.energy_wh,
        )

    @classmethod
    def decode(cls, data: bytes) -> Reading:
        if len(data) != SIZE:
            raise ValueError(f"phasor report of {len(data)} bytes (expected {SIZE})")
        v = LAYOUT.unpack(data)
        phases = (v[3:10], v[10:17], v[17:24])
        return cls(v[0], v[1], v[2], phases, *v[24:29], v[29])

    def as_dict(self) -> dict:
        doc = {"counter": self.counter, "timestamp": self.timestamp, "flags": self.flags}
        for name, phase in zip(("l1", "l2", "l3"), self.phases, strict=True):
            doc[name] = dict(zip(PHASE_FIELDS, (round(x, 4) for x in phase), strict=True))
        doc.update(
            total_active=self.total_active,
            total_reactive=self.total_reactive,
            total_pf=self.total_pf,
            frequency=self.frequency,
            demand=self.demand,
            energy_wh=self.energy_wh,
        )
        return doc


@dataclass(frozen=True)
class MeterClass:
    """What the registry knows of a meter's supply, against which readings are checked."""

    nominal_voltage: float  # phase-to-neutral, V
    phases: int  # 1 or 3
    max_current: float  # A per phase


LOW_VOLTAGE = MeterClass(127.0, 1, 100.0)
LOW_VOLTAGE_3P = MeterClass(127.0, 3, 120.0)
MEDIUM_VOLTAGE = MeterClass(13800.0 / math.sqrt(3), 3, 400.0)
METER_CLASSES = {"lv1": LOW_VOLTAGE, "lv3": LOW_VOLTAGE_3P, "mv3": MEDIUM_VOLTAGE}


REPORT_DTYPE = np.dtype(
    [("counter", ">u4"), ("timestamp", ">u4"), ("flags", "u1"), ("phases", ">f4", (3, 7)),
     ("totals", ">f4", (5,)), ("energy", ">u8")]
)  # fmt: skip  # LAYOUT as a NumPy record; totals: active, reactive, pf, frequency, demand
assert REPORT_DTYPE.itemsize == SIZE

_PHASE_CHECKS = (
    "unused-phase-not-zero",
    "voltage-out-of-range",
    "current-out-of-range",
    "power-factor-out-of-range",
    "thd-out-of-range",
    "power-inconsistent",
)
REASONS = ("not-finite", "frequency-out-of-range", *_PHASE_CHECKS * 3)  # in checking order


def decode_many(reports: list[bytes]) -> np.ndarray:
    """Encoded reports (SIZE bytes each) as one REPORT_DTYPE array."""
    return np.frombuffer(b"".join(reports), dtype=REPORT_DTYPE)


def implausible_many(reports: np.ndarray, meters: list[MeterClass]) -> list[str | None]:
    """For each report (decode_many) and the class of its meter, the reason it
    cannot be physical on its own, or None; the first failing check in REASONS.

    Ranges: values finite; frequency 57-63 Hz (Brazil's 60 Hz grid, PRODIST
    limits widened); unused phases all zero; on live phases voltage within
    +-20 % of nominal (0 allowed when the load is disconnected), current
    0..max, |pf| <= 1, THD 0..100 %, P = V*I*pf within 5 % (+ 5 W). One pass
    of array operations per batch: per report in Python it cost the
    authenticator a tenth of its time. `register_implausible` adds the check
    against the meter's previous reading.
    """
    if len(reports) == 0:
        return []
    phases = reports["phases"].astype(np.float64)  # [n, phase, field]
    totals = reports["totals"].astype(np.float64)
    nominal = np.array([m.nominal_voltage for m in meters])[:, None]
    max_current = np.array([m.max_current for m in meters])[:, None]
    live = np.arange(3) < np.array([m.phases for m in meters])[:, None]
    connected = (reports["flags"] & FLAG_LOAD_CONNECTED).astype(bool)[:, None]
    volts, amps, _angle, active, _reactive, pf, thd = np.moveaxis(phases, 2, 0)
    frequency = totals[:, 3]
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows fail the first check
        per_phase = np.stack(
            [
                ~live & ((volts != 0) | (amps != 0)),
                live & connected & ~((0.8 * nominal <= volts) & (volts <= 1.2 * nominal)),
                live & ~((amps >= 0.0) & (amps <= max_current)),
                live & ~((pf >= -1.0) & (pf <= 1.0)),
                live & ~((thd >= 0.0) & (thd <= 100.0)),
                live & (np.abs(active - volts * amps * pf) > 0.05 * np.abs(active) + 5.0),
            ],
            axis=2,
        ).reshape(len(reports), -1)  # [n, phase-major checks]
        failed = np.concatenate(
            [
                ~(np.isfinite(phases).all(axis=(1, 2)) & np.isfinite(totals).all(axis=1))[:, None],
                ~((frequency >= 57.0) & (frequency <= 63.0))[:, None],
                per_phase,
            ],
            axis=1,
        )
    if not failed.any():
        return [None] * len(reports)
    first, bad = failed.argmax(axis=1).tolist(), failed.any(axis=1).tolist()
    return [REASONS[k] if b else None for k, b in zip(first, bad, strict=True)]


def register_implausible(
    counter: int, energy_wh: int, meter: MeterClass, previous: tuple[int, int] | None
) -> str | None:
    """Against `previous`, (counter, energy_wh) of the meter's latest stored reading:
    the register must not go down, and may rise at most what the meter's maximum
    power delivers in the intervals between the two readings."""
    if previous is None:
        return None
    intervals, step = counter - previous[0], energy_wh - previous[1]
    if intervals > 0 and step < 0:
        return "energy-register-decreased"
    most = meter.phases * 1.2 * meter.nominal_voltage * meter.max_current * INTERVAL_S / 3600
    if intervals > 0 and step > most * 1.05 * intervals:
        return "energy-step-too-large"
    return None
