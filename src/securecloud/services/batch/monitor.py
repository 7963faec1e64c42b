"""Progress of a job, sampled every check interval.

    job_progress  = done / N                  clamped to [0, 1]
    time_progress = elapsed / expected_time   clamped to [0, 1]
    application_progress_error = job_progress - time_progress   (negative: late)

Time is the monotonic clock (immune to wall-clock jumps). 0.0 is a real value
(on time), never "no data". Samples are kept in a bounded history for the
controller and the report, and exported as Prometheus gauges.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from prometheus_client import Gauge

from securecloud.services.batch.queue import QueueStats

JOB_PROGRESS = Gauge("securecloud_batch_job_progress", "Items done / items", ["submission"])
TIME_PROGRESS = Gauge("securecloud_batch_time_progress", "Elapsed / expected time", ["submission"])
PROGRESS_ERROR = Gauge(
    "securecloud_batch_application_progress_error",
    "job_progress - time_progress (negative: late)",
    ["submission"],
)
REPLICAS = Gauge("securecloud_batch_replicas", "Workers running", ["submission"])
ITEMS = Gauge("securecloud_batch_items", "Items by state", ["submission", "state"])


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class Sample:
    elapsed: float
    total: int
    done: int
    failed: int
    pending: int
    processing: int
    replicas: int
    job_progress: float
    time_progress: float
    error: float

    def to_json(self) -> dict:
        return asdict(self)


class ProgressMonitor:
    def __init__(
        self,
        submission: str,
        expected_time: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        history: int = 5000,
        started: float | None = None,
    ):
        self.submission = submission
        self.expected_time = expected_time
        self.clock = clock
        self.started = clock() if started is None else started
        self.history: deque[Sample] = deque(maxlen=history)

    def observe(self, stats: QueueStats, replicas: int) -> Sample:
        elapsed = self.clock() - self.started
        job = _clamp(stats.done / stats.total) if stats.total else 0.0
        progress_in_time = _clamp(elapsed / self.expected_time)
        sample = Sample(
            elapsed=elapsed,
            total=stats.total,
            done=stats.done,
            failed=stats.failed,
            pending=stats.pending,
            processing=stats.processing,
            replicas=replicas,
            job_progress=job,
            time_progress=progress_in_time,
            error=job - progress_in_time,
        )
        self.history.append(sample)
        label = self.submission
        JOB_PROGRESS.labels(label).set(sample.job_progress)
        TIME_PROGRESS.labels(label).set(sample.time_progress)
        PROGRESS_ERROR.labels(label).set(sample.error)
        REPLICAS.labels(label).set(replicas)
        for state in ("done", "failed", "pending", "processing"):
            ITEMS.labels(label, state).set(getattr(sample, state))
        return sample
