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


@dataclass(frozen=True, slots=True)
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


def implausible(
    reading: Reading, meter: MeterClass, previous: tuple[int, int] | None = None
) -> str | None:
    """The reason a reading cannot be physical for this meter, or None.

    Ranges: voltage within +-20 % of nominal on live phases (0 allowed when the
    load is disconnected), current 0..max, |pf| <= 1, THD 0..100 %, frequency
    57-63 Hz (Brazil's 60 Hz grid, PRODIST limits widened), per-phase
    P = V*I*pf within 5 % (+ 5 W), energy register monotonic and its step at
    most what the meter's maximum power could deliver in the intervals since
    the previous stored reading.
    """
    # Values come from float32, so a sum of them overflows only if one is inf or nan.
    totals = (reading.total_active, reading.total_reactive, reading.total_pf, reading.frequency)
    if not math.isfinite(sum(map(sum, reading.phases)) + sum(totals) + reading.demand):
        return "not-finite"
    if not 57.0 <= reading.frequency <= 63.0:
        return "frequency-out-of-range"
    connected = bool(reading.flags & FLAG_LOAD_CONNECTED)
    for index, (volts, amps, _angle, active, _reactive, pf, thd) in enumerate(reading.phases):
        live = index < meter.phases
        if not live:
            if volts != 0 or amps != 0:
                return "unused-phase-not-zero"
            continue
        if connected and not 0.8 * meter.nominal_voltage <= volts <= 1.2 * meter.nominal_voltage:
            return "voltage-out-of-range"
        if not 0.0 <= amps <= meter.max_current:
            return "current-out-of-range"
        if not -1.0 <= pf <= 1.0:
            return "power-factor-out-of-range"
        if not 0.0 <= thd <= 100.0:
            return "thd-out-of-range"
        if abs(active - volts * amps * pf) > 0.05 * abs(active) + 5.0:
            return "power-inconsistent"
    if previous is not None:  # (counter, energy_wh) of the meter's latest stored reading
        intervals, step = reading.counter - previous[0], reading.energy_wh - previous[1]
        if intervals > 0 and step < 0:
            return "energy-register-decreased"
        most = meter.phases * 1.2 * meter.nominal_voltage * meter.max_current * INTERVAL_S / 3600
        if intervals > 0 and step > most * 1.05 * intervals:
            return "energy-step-too-large"
    return None
