"""Runs one submission: fill the queue, start workers, then every check interval
sample progress, ask the controller, scale. Ends when every item is done or
dead-lettered, or when stopped.

Everything it learns is kept in the `Run` record, which the manager persists
after each step, so a manager restart resumes the job where it was (the queue
keeps the items; the run keeps its start time, so time progress continues).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from securecloud.services.batch.controller import ControllerState, bounds, decide
from securecloud.services.batch.monitor import ProgressMonitor, Sample
from securecloud.services.batch.queue import WorkQueue
from securecloud.services.batch.report import summarize
from securecloud.services.batch.submission import Submission

log = logging.getLogger(__name__)


class Executor(Protocol):
    def scale(self, target: int) -> int: ...

    def replicas(self) -> int: ...

    def pids(self) -> set[int]: ...

    def problem(self) -> str | None: ...

    def worker_seconds(self) -> float: ...

    def stop(self) -> None: ...


@dataclass
class Run:
    id: str
    submission: Submission
    status: str = "queued"  # queued, running, finished, stopped, failed, interrupted
    created: float = field(default_factory=time.time)
    started_wall: float | None = None
    pushed: bool = False
    finished_at: float | None = None
    samples: list[Sample] = field(default_factory=list)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=500))
    report: dict | None = None
    error: str | None = None
    worker_seconds: float = 0.0

    def note(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.log.append(f"{stamp} {message}")
        log.info(message, extra={"fields": {"submission": self.id}})

    @property
    def tolerance(self) -> float:
        return self.submission.control.trigger_up


class Runner(threading.Thread):
    def __init__(
        self,
        run: Run,
        queue: WorkQueue,
        executor: Executor,
        capacity: Callable[[], int],
        items: Callable[[], list[str]],
        persist: Callable[[Run], None],
    ):
        super().__init__(name=f"batch-{run.id}", daemon=True)
        self.run_record = run
        self.queue, self.executor, self.capacity = queue, executor, capacity
        self.items, self.persist = items, persist
        self.stopping = threading.Event()
        self.interrupted = False

    def stop(self, interrupted: bool = False) -> None:
        self.interrupted = interrupted
        self.stopping.set()

    def run(self) -> None:
        run = self.run_record
        final = "failed"
        try:
            final = self._run(run)
        except Exception as exc:  # recorded on the submission, never lost in a thread
            log.exception("submission %s failed", run.id)
            run.error = f"{type(exc).__name__}: {exc}"
            run.note(f"failed: {run.error}")
        finally:
            self.executor.stop()
            run.worker_seconds = self.executor.worker_seconds()
            if self.interrupted:
                final = "interrupted"
            run.report = summarize(
                run.samples,
                run.submission.expected_time,
                run.finished_at,
                run.worker_seconds,
                run.tolerance,
            )
            run.status = final  # only now: a reader who sees the end sees the final report
            self.persist(run)
            self.queue.close()

    def _run(self, run: Run) -> str:
        """Drive the job; return how it ended (finished or stopped)."""
        sub = run.submission
        if not run.pushed:
            count = self.queue.push(self.items())
            run.pushed = True
            run.note(f"queued {count} items")
        if run.started_wall is None:
            run.started_wall = time.time()
        run.status = "running"
        monitor = ProgressMonitor(
            run.id, sub.expected_time, started=time.monotonic() - (time.time() - run.started_wall)
        )
        monitor.history.extend(run.samples)
        lower, upper = bounds(sub.control, self.capacity())
        start = min(max(sub.init_size, lower), upper) if upper else 0
        if start == 0:
            raise RuntimeError("no enclave memory free for a single worker on this node")
        self.executor.scale(start)
        run.note(f"started {start} workers (enclave capacity {upper})")
        state = ControllerState()
        sample = self._sample(run, monitor)
        while not sample_finished(sample):
            if self.stopping.wait(sub.control.check_interval):
                run.note("stopped on request" if not self.interrupted else "manager stopping")
                return "stopped"
            problem = self.executor.problem()
            if problem is not None:
                raise RuntimeError(problem)
            self.queue.requeue_expired(sub.max_retries)
            sample = self._sample(run, monitor)
            if sample_finished(sample):
                break
            decision = decide(
                monitor.history, sub.control, state, self.capacity(), sub.expected_time
            )
            state = decision.state
            if decision.replicas != sample.replicas:
                run.note(
                    f"scale {sample.replicas} -> {decision.replicas}: {decision.reason} "
                    f"(error {sample.error:+.3f})"
                )
                self.executor.scale(decision.replicas)
            self.persist(run)
        run.finished_at = sample.elapsed
        run.note(f"finished in {sample.elapsed:.1f} s: {sample.done} done, {sample.failed} failed")
        return "finished"

    def _sample(self, run: Run, monitor: ProgressMonitor) -> Sample:
        sample = monitor.observe(self.queue.stats(), self.executor.replicas())
        run.samples.append(sample)
        run.worker_seconds = self.executor.worker_seconds()
        return sample


def sample_finished(sample: Sample) -> bool:
    return sample.total > 0 and sample.done + sample.failed >= sample.total
