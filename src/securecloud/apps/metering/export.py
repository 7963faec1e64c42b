"""Signed readings out of the KVS as the head-end CSV the legacy collector reads.

Every record is checked against its batch's signed root before it is written
(`store.read_segment`), so the collector only ever sees readings the
authenticator accepted. Rows are time-major (every meter's reading of one
interval, then the next), as a collector receives them from the head-end.
"""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np

from securecloud.apps.collector import COLUMNS
from securecloud.apps.metering import store


def day_table(storage, day: dt.date, regulator_keys, checked: dict) -> np.ndarray:
    """The day's verified records (RECORD_DTYPE), sorted by (timestamp, meter).
    `checked` (authenticator -> verified batch roots) is shared across days."""
    tables = [
        store.read_segment(
            storage.get(store.BUCKET, key),
            regulator_keys,
            checked.setdefault(store.authenticator_of(key), {}),
        ).table
        for key in store.list_keys(storage, f"readings/{day.isoformat()}/")
    ]
    if not tables:
        return np.empty(0, dtype=store.RECORD_DTYPE)
    table = np.concatenate(tables)
    return table[np.lexsort((table["meter"], table["timestamp"]))]


def csv_rows(table: np.ndarray):
    """One CSV row (COLUMNS) per record: per-phase voltage, current and angle, then totals."""
    phases = table["phases"].astype(np.float64).round(4)  # 3 phases x (V, I, angle, P, Q, pf, thd)
    totals = table["totals"].astype(np.float64).round(4)  # P, Q, pf, f, demand
    for i, record in enumerate(table):
        p, t = phases[i], totals[i]
        yield (
            int(record["meter"]), int(record["timestamp"]),
            p[0], p[7], p[14], p[1], p[8], p[15], p[2], p[9], p[16],
            t[0], t[1], t[2], t[3], t[4], int(record["energy"]),
        )  # fmt: skip


def export_csv(storage, start: dt.date, days: int, regulator_keys, out, progress=None) -> int:
    """Write the header and every verified reading of `days` days from `start` to the
    text stream `out`; returns the number of readings written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    written, checked = 0, {}
    for offset in range(days):
        table = day_table(storage, start + dt.timedelta(days=offset), regulator_keys, checked)
        writer.writerows(csv_rows(table))
        written += len(table)
        if progress:
            progress(offset + 1, written)
    return written
