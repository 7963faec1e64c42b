"""Daily load curves of many simulated consumers at once, for training and evaluation.

The same consumers and the same statistics as the meter model
(`metering.model`: BDEW profile x annual consumption x a log-normal daily
factor x a log-normal interval factor), but as NumPy arrays over the whole
fleet instead of encoded reports per meter, so that 65,000 consumers x weeks
fit in seconds. Large consumers also get per-phase voltage, current and power
factor, the evidence the phasor checks look at.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from securecloud.apps.metering import profiles
from securecloud.apps.metering.model import Consumer, consumer_for
from securecloud.apps.metering.reading import INTERVAL_S, METER_CLASSES, READINGS_PER_DAY

DAILY_SIGMA, INTERVAL_SIGMA = 0.15, 0.10


@dataclass
class Fleet:
    """Curves [consumer, day, interval] in W (average power of the interval), and for
    large consumers (index `large`) phasors [large consumer, day, interval, phase]."""

    consumers: list[Consumer]
    days: list[dt.date]
    power: np.ndarray
    large: np.ndarray  # indices into consumers
    volts: np.ndarray
    amps: np.ndarray
    pf: np.ndarray

    @property
    def is_large(self) -> np.ndarray:
        mask = np.zeros(len(self.consumers), bool)
        mask[self.large] = True
        return mask


def simulate(
    count: int, first_day: dt.date, days: int, seed: int = 1, large_share: float = 0.02
) -> Fleet:
    rng = np.random.default_rng([seed, 7])
    consumers = [consumer_for(seed, i, large_share) for i in range(count)]
    dates = [first_day + dt.timedelta(days=d) for d in range(days)]
    columns = np.array([profiles.PROFILES.index(c.profile) for c in consumers])
    annual = np.array([c.annual_kwh for c in consumers])
    shares = np.stack([profiles.day_shares(d) for d in dates])  # [day, 96, profile]
    kwh = shares[:, :, columns].transpose(2, 0, 1) * annual[:, None, None]  # [c, day, 96]
    kwh *= np.exp(DAILY_SIGMA * rng.standard_normal((count, days, 1)))
    kwh *= np.exp(INTERVAL_SIGMA * rng.standard_normal((count, days, READINGS_PER_DAY)))
    power = kwh * 1000.0 * 3600.0 / INTERVAL_S
    large = np.array([i for i, c in enumerate(consumers) if c.kind == "large"], dtype=int)
    shape = (len(large), days, READINGS_PER_DAY, 3)
    nominal = METER_CLASSES["mv3"].nominal_voltage
    volts = nominal * (1 + 0.015 * rng.standard_normal(shape))
    pf_mean = np.array([consumers[i].pf_mean for i in large])[:, None, None, None]
    pf = np.clip(pf_mean + 0.02 * rng.standard_normal(shape), 0.7, 0.999)
    split = 1 + 0.05 * rng.standard_normal(shape)
    split /= split.sum(axis=3, keepdims=True)
    amps = power[large][..., None] * split / (volts * pf)
    return Fleet(consumers, dates, power, large, volts, amps, pf)


def phase_power(volts: np.ndarray, amps: np.ndarray, pf: np.ndarray) -> np.ndarray:
    """Total active power from per-phase phasors (P = sum V I pf)."""
    return (volts * amps * pf).sum(axis=-1)
