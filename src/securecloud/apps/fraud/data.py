"""Daily curves of stored readings, for scoring consumers on what the platform holds.

Reads the segments of `days` days from the KVS, checks every record against
its batch's signed root (`store.read_segment`) and lays the readings out as
arrays: demand [meter, day, interval] in W (NaN where no reading arrived) and,
for large consumers, per-phase voltage and current [large, day, interval, phase].
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from securecloud.apps.metering import store
from securecloud.apps.metering.reading import INTERVAL_S, READINGS_PER_DAY


@dataclass
class StoredCurves:
    meters: np.ndarray  # meter ids, in row order
    power: np.ndarray  # [meter, day, interval], W, NaN where missing
    large: np.ndarray  # row indices of large consumers
    volts: np.ndarray  # [large, day, interval, 3]
    amps: np.ndarray


def load(
    storage, meters: list[int], large: list[int], first_day: dt.date, days: int, public_keys
) -> StoredCurves:
    ids = np.array(sorted(meters), dtype=np.int64)
    row_of = {int(m): i for i, m in enumerate(ids)}
    large_rows = np.array(sorted(row_of[m] for m in large if m in row_of), dtype=int)
    power = np.full((len(ids), days, READINGS_PER_DAY), np.nan)
    volts = np.full((len(large_rows), days, READINGS_PER_DAY, 3), np.nan)
    amps = np.full_like(volts, np.nan)
    midnight = (first_day - dt.date(1970, 1, 1)).days * 86400
    checked: dict[str, dict] = {}
    groups = sorted({store.group_of(int(m)) for m in ids})
    for offset in range(days):
        day = first_day + dt.timedelta(days=offset)
        for group in groups:
            prefix = f"readings/{day.isoformat()}/{group:05d}/"
            for key in store.list_keys(storage, prefix):
                authenticator = store.authenticator_of(key)
                table = store.read_segment(
                    storage.get(store.BUCKET, key),
                    public_keys,
                    checked.setdefault(authenticator, {}),
                ).table
                table = table[np.isin(table["meter"], ids)]
                end = np.rint(table["timestamp"].astype(np.int64) / INTERVAL_S) * INTERVAL_S
                slot = (end - INTERVAL_S - midnight).astype(np.int64) // INTERVAL_S
                inside = (slot >= 0) & (slot < days * READINGS_PER_DAY)
                table, slot = table[inside], slot[inside]
                rows = np.searchsorted(ids, table["meter"].astype(np.int64))
                power[rows, slot // READINGS_PER_DAY, slot % READINGS_PER_DAY] = table["totals"][
                    :, 4
                ]
                big = np.isin(rows, large_rows)
                if big.any():
                    k = np.searchsorted(large_rows, rows[big])
                    d, i = slot[big] // READINGS_PER_DAY, slot[big] % READINGS_PER_DAY
                    volts[k, d, i] = table["phases"][big][:, 0:21:7]
                    amps[k, d, i] = table["phases"][big][:, 1:21:7]
    return StoredCurves(ids, power, large_rows, volts, amps)
