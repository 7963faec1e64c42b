"""BDEW standard load profiles (15-minute, one year), from demandlib, kept isolated.

demandlib turns every warning into an error for the whole process when it is
imported; it is imported and used only inside `warnings.catch_warnings()`,
which puts the filters back afterwards, and what leaves this module is a plain
NumPy array. Each column is normalised to sum 1 over its year, so a consumer's
energy in an interval is profile value x annual consumption.
"""

from __future__ import annotations

import datetime as dt
import warnings
from functools import lru_cache

import numpy as np

PROFILES = ("h0", "g0", "g1", "g2", "g3", "g4", "g5", "g6", "l0", "l1", "l2")
RESIDENTIAL = ("h0",)
COMMERCIAL = ("g0", "g1", "g2", "g3", "g4", "g5", "g6")
AGRICULTURAL = ("l0", "l1", "l2")


@lru_cache(maxsize=2)
def year_table(year: int) -> np.ndarray:
    """float64 array [intervals of the year, len(PROFILES)], each column summing to 1."""
    with warnings.catch_warnings():
        from demandlib import bdew

        frame = bdew.ElecSlp(year).get_profiles()
        table = frame[list(PROFILES)].to_numpy(dtype=np.float64, copy=True)
    return table / table.sum(axis=0)


def day_shares(day: dt.date) -> np.ndarray:
    """[96, len(PROFILES)]: each profile's share of its annual energy per interval of `day`."""
    table = year_table(day.year)
    start = (day.timetuple().tm_yday - 1) * 96
    return table[start : start + 96]
