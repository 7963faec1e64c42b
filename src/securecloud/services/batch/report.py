"""The report of a submission: summary figures and a PNG of error and workers over time.

The PNG shows what the Grafana dashboard (deploy/grafana/asperathos.json)
shows live: the application progress error with the tolerance band, and the
number of workers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from securecloud.services.batch.monitor import Sample


def summarize(
    samples: Sequence[Sample],
    expected_time: float,
    finished_at: float | None,
    worker_seconds: float,
    tolerance: float,
) -> dict:
    errors = [s.error for s in samples]
    last = samples[-1] if samples else None
    execution = finished_at if finished_at is not None else (last.elapsed if last else 0.0)
    return {
        "execution_time_s": round(execution, 2),
        "expected_time_s": expected_time,
        "finish_vs_deadline": round(execution / expected_time, 3),
        "deadline_met": finished_at is not None and execution <= expected_time * (1 + tolerance),
        "tolerance": tolerance,
        "error_min": round(min(errors), 4) if errors else None,
        "error_max": round(max(errors), 4) if errors else None,
        "error_final": round(errors[-1], 4) if errors else None,
        "items_total": last.total if last else 0,
        "items_done": last.done if last else 0,
        "items_failed": last.failed if last else 0,
        "replicas_max": max((s.replicas for s in samples), default=0),
        "replicas_over_time": [[round(s.elapsed, 2), s.replicas] for s in samples],
        "worker_seconds": round(worker_seconds, 2),
    }


def plot_png(samples: Sequence[Sample], title: str, tolerance: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    times = [s.elapsed for s in samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.plot(times, [s.error for s in samples], color="tab:red", label="progress error")
    top.axhspan(-tolerance, tolerance, color="tab:green", alpha=0.15, label="tolerance")
    top.axhline(0, color="black", linewidth=0.6)
    top.set_ylabel("job − time progress")
    top.legend(loc="lower left", fontsize=8)
    bottom.step(times, [s.replicas for s in samples], where="post", color="tab:blue")
    bottom.set_ylabel("workers")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("seconds since start")
    figure.suptitle(title)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    plt.close(figure)
    return out.getvalue()
