"""Simulated consumers: who they are, and their phasor reports for one day.

A consumer is drawn deterministically from (seed, meter id), so provisioning
and simulation agree without sharing more than the seed:

- class: a share `large_share` (default 2 %) are supplied above 1 kV (13.8 kV,
  three-phase, a commercial or agricultural profile); the rest are low-voltage
  (127 V phase-to-neutral): 85 % residential (H0), 12 % commercial (G0-G6),
  3 % agricultural (L0-L2).
- annual consumption: log-normal per class (median, sigma): residential
  (1,900 kWh, 0.6), commercial (12,000 kWh, 0.8), agricultural (8,000 kWh,
  0.8), large (600,000 kWh, 0.7); clipped so the profile's peak stays within
  the meter's current rating. The residential median is close to Brazil's mean
  household use (about 160 kWh a month).
- each day is scaled by a log-normal factor (sigma 0.15) and each interval by
  another (sigma 0.10); phasor fields follow from the active power:
  V ~ nominal x (1 + N(0, 1.5 %)), pf ~ the consumer's mean + N(0, 0.02),
  I = P / (V pf), angle = acos(pf), Q = P tan(angle), THD ~ N(mean, 0.5) %.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from securecloud.apps.metering import profiles
from securecloud.apps.metering.reading import (
    FLAG_LOAD_CONNECTED,
    FLAG_THREE_PHASE,
    INTERVAL_S,
    METER_CLASSES,
    READINGS_PER_DAY,
    REPORT_DTYPE,
    Reading,
)
from securecloud.apps.metering.theft import attack_curve, bypass_phases

ANNUAL = {  # class -> (median kWh, sigma)
    "residential": (1900.0, 0.6),
    "commercial": (12000.0, 0.8),
    "agricultural": (8000.0, 0.8),
    "large": (600000.0, 0.7),
}


@dataclass(frozen=True)
class Consumer:
    meter_id: int
    kind: str  # residential | commercial | agricultural | large
    profile: str  # BDEW profile name
    meter_class: str  # key of METER_CLASSES
    annual_kwh: float
    pf_mean: float
    thd_mean: float

    @property
    def phases(self) -> int:
        return METER_CLASSES[self.meter_class].phases


def consumer_for(seed: int, meter_id: int, large_share: float = 0.02) -> Consumer:
    rng = np.random.default_rng([seed, meter_id, 1])
    if rng.random() < large_share:
        kind = "large"
        profile = str(rng.choice(profiles.COMMERCIAL + profiles.AGRICULTURAL))
        meter_class = "mv3"
    else:
        kind = str(rng.choice(["residential", "commercial", "agricultural"], p=[0.85, 0.12, 0.03]))
        group = {
            "residential": profiles.RESIDENTIAL,
            "commercial": profiles.COMMERCIAL,
            "agricultural": profiles.AGRICULTURAL,
        }[kind]
        profile = str(rng.choice(group))
        meter_class = "lv3" if kind != "residential" else "lv1"
    median, sigma = ANNUAL[kind]
    annual = float(median * math.exp(sigma * rng.standard_normal()))
    if kind == "residential" and annual > 3000:
        meter_class = "lv3"
    meter = METER_CLASSES[meter_class]
    # Peak interval share of a BDEW profile is below 3x its mean; keep 3x the
    # mean power (with daily and interval noise) inside 40 % of the rating.
    rating_w = meter.phases * meter.nominal_voltage * meter.max_current
    annual = min(annual, 0.4 * rating_w / 3.0 * 8760 / 1000)
    pf_mean = {"residential": 0.93, "commercial": 0.88, "agricultural": 0.85, "large": 0.94}[kind]
    return Consumer(
        meter_id,
        kind,
        profile,
        meter_class,
        annual,
        pf_mean + 0.02 * float(rng.standard_normal()),
        3.0 + float(rng.random()) * 3.0,
    )


def day_reports(
    consumer: Consumer,
    day: dt.date,
    first_counter: int,
    energy_wh: float,
    rng: np.random.Generator,
    drift_s: int = 0,
    connected: bool = True,
    theft: str | None = None,
) -> tuple[list[bytes], list[int], float]:
    """The 96 encoded reports of `day` (reading.LAYOUT), their timestamps, and the energy
    register (Wh, float) at the day's end; vectorised, for the simulator. `theft`: an
    attack of `theft.py` the meter applies to what it measures (the register follows)."""
    meter = METER_CLASSES[consumer.meter_class]
    share = profiles.day_shares(day)[:, profiles.PROFILES.index(consumer.profile)]
    kwh = consumer.annual_kwh * share * math.exp(0.15 * rng.standard_normal())
    kwh = kwh * np.exp(0.10 * rng.standard_normal(READINGS_PER_DAY))
    if not connected:
        kwh = np.zeros_like(kwh)
    if theft is not None and theft != "phasor":
        kwh = attack_curve(theft, kwh, rng)
    n, k = meter.phases, READINGS_PER_DAY
    power_w = kwh * 1000.0 * 3600.0 / INTERVAL_S
    split = np.full((k, n), 1.0 / n)
    if n == 3:
        split = split * (1 + 0.05 * rng.standard_normal((k, 3)))
        split = split / split.sum(axis=1, keepdims=True)
    volts = meter.nominal_voltage * (1 + 0.015 * rng.standard_normal((k, n)))
    volts = np.clip(volts, 0.92 * meter.nominal_voltage, 1.08 * meter.nominal_voltage)
    pf = np.clip(consumer.pf_mean + 0.02 * rng.standard_normal((k, n)), 0.7, 0.999)
    # A supply cannot deliver more than its rating (the breaker trips): clip the
    # current, then derive the power from it, so noisy peaks stay physical.
    amps = np.minimum(power_w[:, None] * split / (volts * pf), 0.95 * meter.max_current)
    if theft == "phasor" and n == 3:  # current bypassed around the meter on some phases
        amps, _factors = bypass_phases(amps, rng)
    phase_p = volts * amps * pf
    power_w = phase_p.sum(axis=1)
    reactive = phase_p * np.tan(np.arccos(pf))
    thd = np.clip(consumer.thd_mean + 0.5 * rng.standard_normal((k, n)), 0.5, 15)
    total_q = reactive.sum(axis=1)
    registers = energy_wh + np.cumsum(power_w * INTERVAL_S / 3600.0)
    midnight = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    out = np.zeros(k, dtype=REPORT_DTYPE)
    out["counter"] = first_counter + np.arange(k)
    out["timestamp"] = midnight + (np.arange(k) + 1) * INTERVAL_S + drift_s
    out["flags"] = (FLAG_LOAD_CONNECTED if connected else 0) | (FLAG_THREE_PHASE if n == 3 else 0)
    fields = np.stack(
        [volts if connected else np.zeros_like(volts), amps, np.degrees(np.arccos(pf)),
         phase_p, reactive, pf, thd], axis=2,
    )  # fmt: skip  # [k, n, 7]
    out["phases"][:, :n] = fields
    total_pf = np.divide(
        power_w, np.hypot(power_w, total_q), out=np.ones_like(power_w), where=power_w > 0
    )
    freq = 60.0 + 0.02 * rng.standard_normal(k)
    out["totals"] = np.stack([power_w, total_q, total_pf, freq, power_w], axis=1)
    out["energy"] = registers.astype(np.uint64)
    blob = out.tobytes()
    size = REPORT_DTYPE.itemsize
    return (
        [blob[i * size : (i + 1) * size] for i in range(k)],
        out["timestamp"].tolist(),
        float(registers[-1]),
    )


def day_readings(
    consumer: Consumer,
    day: dt.date,
    first_counter: int,
    energy_wh: float,
    rng: np.random.Generator,
    drift_s: int = 0,
    connected: bool = True,
) -> tuple[list[Reading], float]:
    """The 96 reports of `day` as Reading values, and the energy register at its end."""
    blobs, _times, end = day_reports(
        consumer, day, first_counter, energy_wh, rng, drift_s, connected
    )
    return [Reading.decode(b) for b in blobs], end
