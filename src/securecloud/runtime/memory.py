"""Enclave memory budget of a node.

SGX1 machines have about 93 MB of usable enclave page cache; past it, paging
slows enclaves by orders of magnitude. Every trusted service declares its heap
(`heap_mb` in its manifest) and reserves it here before it starts. The ledger
is a JSON file under the data directory guarded by an exclusive `flock`, so
every launcher on the node shares one view; entries of processes that have
died are dropped on the next reservation.

Going over the budget is refused with BudgetError unless overcommit is asked
for; an overcommit is logged and counted in
`securecloud_enclave_overcommit_total`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from securecloud.runtime.errors import BudgetError
from securecloud.runtime.processes import alive

DEFAULT_BUDGET_MB = 93
log = logging.getLogger(__name__)

BUDGET_MB = Gauge("securecloud_enclave_memory_budget_mb", "Enclave memory budget of this node")
RESERVED_MB = Gauge(
    "securecloud_enclave_memory_reserved_mb", "Enclave memory reserved by running services"
)
OVERCOMMITS = Counter(
    "securecloud_enclave_overcommit_total", "Services started beyond the enclave memory budget"
)


@dataclass(frozen=True)
class Reservation:
    service: str
    pid: int
    heap_mb: int
    overcommit: bool


class MemoryBudget:
    def __init__(self, ledger_dir: Path, budget_mb: int = DEFAULT_BUDGET_MB):
        if budget_mb <= 0:
            raise BudgetError(f"budget_mb must be positive, got {budget_mb}")
        self.ledger_dir = Path(ledger_dir)
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = self.ledger_dir / "enclave-memory.json"
        self.budget_mb = budget_mb
        BUDGET_MB.set(budget_mb)

    @contextmanager
    def _locked(self) -> Iterator[list[Reservation]]:
        with open(self.ledger_dir / "enclave-memory.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = []
                if self.ledger.exists():
                    entries = [Reservation(**e) for e in json.loads(self.ledger.read_text())]
                entries = [e for e in entries if alive(e.pid)]
                yield entries
                tmp = self.ledger.with_suffix(".tmp")
                tmp.write_text(json.dumps([asdict(e) for e in entries]))
                os.replace(tmp, self.ledger)
                RESERVED_MB.set(sum(e.heap_mb for e in entries))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def reservations(self) -> list[Reservation]:
        with self._locked() as entries:
            return list(entries)

    def free_mb(self) -> int:
        return self.budget_mb - sum(e.heap_mb for e in self.reservations())

    def reserve(self, service: str, pid: int, heap_mb: int, *, overcommit: bool = False) -> None:
        with self._locked() as entries:
            used = sum(e.heap_mb for e in entries)
            over = used + heap_mb > self.budget_mb
            if over and not overcommit:
                raise BudgetError(
                    f"{service} needs {heap_mb} MB of enclave memory but only "
                    f"{self.budget_mb - used} of {self.budget_mb} MB are free on this node "
                    "(stop a service, raise --enclave-budget-mb, or pass --overcommit)"
                )
            if over:
                OVERCOMMITS.inc()
                log.warning(
                    "enclave memory overcommitted: %s takes %d MB, %d of %d MB already reserved",
                    service,
                    heap_mb,
                    used,
                    self.budget_mb,
                )
            entries.append(Reservation(service, pid, heap_mb, over))

    def release(self, pid: int) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.pid != pid]
