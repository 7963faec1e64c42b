"""Workers as local processes, each an attested service started by the runtime launcher.

`scale(n)` starts workers (each attests to CAS before it runs) or asks the
newest ones to stop (SIGTERM: they finish their current item). Workers that
exit by themselves (queue drained) or die are noticed on the next call, so a
killed worker is replaced and its item comes back when its lease expires.
Worker-seconds (the cost of the job in enclave-time) are accounted per worker.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from securecloud.runtime.enclave import EXIT_REFUSED
from securecloud.runtime.errors import BudgetError
from securecloud.runtime.launcher import LaunchSpec, launch

log_event = logging.getLogger(__name__)


@dataclass
class _Worker:
    process: subprocess.Popen
    started: float
    log: Path
    ended: float | None = None
    stopping: bool = False


@dataclass
class LocalExecutor:
    spec: Callable[[int], LaunchSpec]
    log_dir: Path
    clock: Callable[[], float] = time.monotonic
    workers: list[_Worker] = field(default_factory=list)
    launched: int = 0

    def _reap(self) -> None:
        for worker in self.workers:
            if worker.ended is None and worker.process.poll() is not None:
                worker.ended = self.clock()

    def problem(self) -> str | None:
        """Why workers cannot run, if one was refused by attestation: a retry would be
        refused again, so the job should fail, saying why."""
        self._reap()
        for worker in self.workers:
            if worker.process.returncode == EXIT_REFUSED:
                lines = worker.log.read_text(errors="replace").splitlines()
                refusal = next((line for line in reversed(lines) if '"refused"' in line), "")
                if '"enclave-memory"' in refusal:
                    continue  # memory may free up: the controller retries within capacity
                return f"a worker was refused at start: {refusal or 'see ' + str(worker.log)}"
        return None

    def running(self) -> list[_Worker]:
        self._reap()
        return [w for w in self.workers if w.ended is None]

    def pids(self) -> set[int]:
        return {w.process.pid for w in self.running()}

    def replicas(self) -> int:
        return sum(1 for w in self.running() if not w.stopping)

    def scale(self, target: int) -> int:
        active = [w for w in self.running() if not w.stopping]
        for _ in range(target - len(active)):
            self.launched += 1
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"worker-{self.launched}.log"
            try:
                with open(log_path, "ab") as log:
                    process = launch(self.spec(self.launched), stdout=log, stderr=subprocess.STDOUT)
            except BudgetError as exc:  # another job took the memory meanwhile
                log_event.warning("not starting more workers: %s", exc)
                break
            self.workers.append(_Worker(process, self.clock(), log_path))
        for worker in sorted(active, key=lambda w: w.started)[target:]:
            worker.stopping = True
            worker.process.send_signal(signal.SIGTERM)
        return self.replicas()

    def worker_seconds(self) -> float:
        now = self.clock()
        return sum((w.ended or now) - w.started for w in self.workers)

    def stop(self, timeout: float = 30.0) -> None:
        for worker in self.running():
            worker.stopping = True
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                worker.process.wait(remaining)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        self._reap()
