"""What every benchmark shares: result files (JSON + markdown table) and percentiles."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def write_results(out: Path, name: str, results: dict, rows: list[tuple[str, object, str]]) -> None:
    """Write `results` as JSON to `out` and a markdown table next to it (`.md`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    out.write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    lines = [f"| {name} | value | note |", "|---|---|---|"]
    lines += [f"| `{key}` | {value} | {note} |" for key, value, note in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
