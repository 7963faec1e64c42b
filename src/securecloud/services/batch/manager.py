"""The Asperathos manager: accepts submissions, runs each, keeps their records.

A submission's record (document, status, samples, log, report) is written to
<data dir>/batch/submissions/<id>.json after every step, atomically, so
nothing acknowledged is lost: after a restart, submissions that were running
are resumed (their items are still in the queue).

Workers of the local executor are attested: for each submission the manager
writes a CAS policy `batch-<id>` that admits only the measured batch worker
and gives it the queue URL, the task and the submission's env_vars; each
worker then attests and receives them (docs/batch.md).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from securecloud.runtime.durable import atomic_write
from securecloud.runtime.launcher import LaunchSpec
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.runtime.memory import MemoryBudget
from securecloud.services.batch.errors import BatchError, SubmissionNotFound
from securecloud.services.batch.local_executor import LocalExecutor
from securecloud.services.batch.monitor import Sample
from securecloud.services.batch.queue import open_queue
from securecloud.services.batch.report import plot_png
from securecloud.services.batch.runner import Run, Runner
from securecloud.services.batch.submission import Submission, parse_submission
from securecloud.services.batch.tasks import task_names, task_policy

log = logging.getLogger(__name__)
DEFAULT_PORT = 8082


@dataclass(frozen=True)
class BatchConfig:
    data_dir: Path = Path(".securecloud")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    queue_url: str | None = None  # default: sqlite under the data directory
    cas_url: str = "https://127.0.0.1:8081"
    las_url: str = "http://127.0.0.1:8080"
    cas_ca: Path | None = None
    identity: Path | None = None
    budget_mb: int = 93
    namespace: str = "default"
    log_level: str = "info"

    @property
    def directory(self) -> Path:
        return self.data_dir / "batch"

    def base_queue_url(self) -> str:
        return self.queue_url or f"sqlite:///{(self.directory / 'queue.db').resolve()}"

    def show(self) -> dict:
        shown = {k: str(v) for k, v in self.__dict__.items()}
        parts = urlsplit(self.base_queue_url())
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":<redacted>@")
            shown["queue_url"] = urlunsplit(parts._replace(netloc=netloc))
        return shown


EXECUTOR_GROUP = "securecloud.batch.executors"


def load_executor(plugin: str):
    """The executor factory registered for `plugin` (entry-point group above)."""
    for ep in importlib.metadata.entry_points(group=EXECUTOR_GROUP):
        if ep.name == plugin:
            return ep.load()
    raise BatchError(f"plugin: no executor named {plugin!r}", reason="invalid-submission")


def local(manager: Manager, run: Run) -> LocalExecutor:
    return manager.local_executor(run)


def _sample_from(doc: dict) -> Sample:
    return Sample(**doc)


class Manager:
    def __init__(self, config: BatchConfig):
        self.config = config
        self.directory = config.directory
        (self.directory / "submissions").mkdir(parents=True, exist_ok=True)
        self.token = self._token()
        self.runs: dict[str, Run] = {}
        self.runners: dict[str, Runner] = {}
        self._lock = threading.Lock()
        self.budget = MemoryBudget(config.data_dir / "runtime", config.budget_mb)
        self._load()

    # -- records ----------------------------------------------------------------
    def _token(self) -> str:
        path = self.directory / "api-token"
        if not path.exists():
            atomic_write(path, secrets.token_urlsafe(32).encode())
        return path.read_text().strip()

    def _path(self, run_id: str) -> Path:
        return self.directory / "submissions" / f"{run_id}.json"

    def persist(self, run: Run) -> None:
        doc = {
            "id": run.id,
            "document": run.submission.document,
            "status": run.status,
            "created": run.created,
            "started_wall": run.started_wall,
            "pushed": run.pushed,
            "finished_at": run.finished_at,
            "samples": [s.to_json() for s in run.samples],
            "log": list(run.log),
            "report": run.report,
            "error": run.error,
            "worker_seconds": run.worker_seconds,
        }
        atomic_write(self._path(run.id), json.dumps(doc).encode())

    def _load(self) -> None:
        for path in sorted(self.directory.glob("submissions/*.json")):
            doc = json.loads(path.read_text())
            run = Run(
                doc["id"],
                parse_submission(doc["document"]),
                doc["status"],
                doc["created"],
                doc["started_wall"],
                doc["pushed"],
                doc["finished_at"],
                [_sample_from(s) for s in doc["samples"]],
                report=doc["report"],
                error=doc["error"],
                worker_seconds=doc.get("worker_seconds", 0.0),
            )
            run.log.extend(doc["log"])
            self.runs[run.id] = run

    def resume(self) -> None:
        """Restart the runners of submissions a previous manager left unfinished."""
        for run in self.runs.values():
            if run.status in ("queued", "running", "interrupted"):
                run.note(f"resuming after manager restart (was {run.status})")
                self._start(run)

    # -- submissions ---------------------------------------------------------------
    def submit(self, document: dict) -> Run:
        submission = parse_submission(document)
        if submission.entry_point is not None and submission.entry_point not in task_names():
            raise BatchError(
                f"plugin_info.entry_point: no task named {submission.entry_point!r} "
                f"(registered: {', '.join(task_names())})",
                reason="invalid-submission",
            )
        run = Run(uuid.uuid4().hex[:12], submission)
        run.note(
            f"accepted: {submission.plugin} executor, "
            f"{submission.control.schedule_strategy} strategy"
        )
        self.persist(run)  # durable before it is acknowledged
        with self._lock:
            self.runs[run.id] = run
        self._start(run)
        return run

    def get(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise SubmissionNotFound(f"no submission {run_id!r}")
        return run

    def stop(self, run_id: str) -> Run:
        run = self.get(run_id)
        runner = self.runners.get(run_id)
        if runner is not None and runner.is_alive():
            runner.stop()
            runner.join(timeout=60)
        return run

    def shutdown(self) -> None:
        """Stop every runner (workers finish their current item); resume on next start."""
        for runner in list(self.runners.values()):
            if runner.is_alive():
                runner.stop(interrupted=True)
        for runner in list(self.runners.values()):
            runner.join(timeout=60)

    def report_png(self, run_id: str) -> bytes:
        run = self.get(run_id)
        return plot_png(run.samples, f"submission {run.id}", run.tolerance)

    # -- execution -----------------------------------------------------------------
    def _items(self, submission: Submission) -> list[str]:
        if submission.workload is not None:
            return list(submission.workload)
        url = submission.workload_url or ""
        if url.startswith("file://"):
            return [line for line in Path(urlsplit(url).path).read_text().splitlines() if line]
        parts = urlsplit(url)
        import redis

        client = redis.Redis.from_url(urlunsplit(parts._replace(fragment="")))
        try:
            return [raw.decode() for raw in client.lrange(parts.fragment, 0, -1)]
        finally:
            client.close()

    def queue_url(self, run: Run) -> str:
        return f"{self.config.base_queue_url()}#job-{run.id}"

    def _start(self, run: Run) -> None:
        submission = run.submission
        queue = open_queue(self.queue_url(run))
        executor = load_executor(submission.plugin)(self, run)
        heap = submission.enclave_heap_mb

        def capacity() -> int:
            if submission.plugin == "kubejobs":  # the cluster scheduler places by sgx.intel.com/epc
                return submission.control.max_rep
            # Everything but what our own workers hold (reserved yet or not) is taken.
            ours = executor.pids()
            taken = sum(r.heap_mb for r in self.budget.reservations() if r.pid not in ours)
            return max(0, self.config.budget_mb - taken) // heap

        runner = Runner(
            run, queue, executor, capacity, lambda: self._items(submission), self.persist
        )
        self.runners[run.id] = runner
        runner.start()

    def local_executor(self, run: Run) -> LocalExecutor:
        """Workers as local attested processes. The CAS policy for them is written when
        the first one starts, in the runner's thread: if CAS is unreachable, the run
        fails with that reason instead of the already acknowledged submission."""
        config_id: list[str] = []
        cas_ca = (self.config.cas_ca or self.config.data_dir / "cas" / "ca.crt").resolve()
        work = (self.directory / "work" / run.id).resolve()

        def spec(number: int) -> LaunchSpec:
            if not config_id:
                config_id.append(self._worker_session(run))
            return LaunchSpec(
                service="batch-worker",
                config_id=config_id[0],
                cas_addr=self.config.cas_url,
                cas_ca=cas_ca,
                las_addr=self.config.las_url,
                ledger_dir=(self.config.data_dir / "runtime").resolve(),
                workdir=work,
                budget_mb=self.config.budget_mb,
                heap_mb=run.submission.enclave_heap_mb,
            )

        return LocalExecutor(spec, self.directory / "logs" / run.id)

    def _worker_session(self, run: Run) -> str:
        """Write the CAS policy that admits the batch worker for this submission."""
        from securecloud.infra.cas.client import apply_session, owner_client

        sub = run.submission
        environment = {
            **sub.env_vars,
            "SECURECLOUD_BATCH_QUEUE": self.queue_url(run),
            "SECURECLOUD_BATCH_LEASE": str(sub.lease_seconds),
            "SECURECLOUD_BATCH_MAX_RETRIES": str(sub.max_retries),
        }
        fragment: dict = {}
        if sub.cmd:
            environment["SECURECLOUD_BATCH_CMD"] = json.dumps(list(sub.cmd))
        else:
            environment["SECURECLOUD_BATCH_TASK"] = sub.entry_point
            fragment = task_policy(sub.entry_point, self.config.data_dir)
        environment.update(fragment.get("environment", {}))
        session = fragment.get("session", f"batch-{run.id}")
        service = {
            "name": "worker",
            "mrenclaves": [measure(load_manifest("batch-worker"))],
            "environment": environment,
            "heap_mb": sub.enclave_heap_mb,
        }
        if fragment.get("injection_files"):
            service["injection_files"] = fragment["injection_files"]
        policy = {
            "name": session,
            "services": [service],
            "security": {"attestation": {"tolerate": ["simulation"]}},
        }
        for key in ("secrets", "imports"):
            if fragment.get(key):
                policy[key] = fragment[key]
        cas_ca = self.config.cas_ca or self.config.data_dir / "cas" / "ca.crt"
        identity = self.config.identity or self.config.data_dir / "identity"
        with owner_client(self.config.cas_url, cas_ca, identity) as client:
            apply_session(client, policy)
        run.note(f"CAS policy {session} admits the measured batch worker")
        return f"{session}/worker"
