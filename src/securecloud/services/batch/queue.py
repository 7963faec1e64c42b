"""The work queue: the lease protocol of the Kubernetes fine-parallel work-queue pattern.

Items wait in `job`; a worker leases one (or several) by moving it atomically
to `job:processing` with a lease that expires; completing removes it; a
failure, or a lease that expired because its worker died, returns it to `job`
with its retry count raised, and after `max_retries` it goes to the
dead-letter list `job:errors`. Processing is at-least-once; `done` counts
each item once.

Two backends with the same protocol, chosen by URL:
- `redis://host:port/db#name`: `redis_queue.RedisQueue` (Lua scripts, atomic);
- `sqlite:///path/to/file.db#name`: `local_queue.LocalQueue`, the embedded
  default, no server (SQLite in WAL mode, shared by the processes of a node).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from securecloud.services.batch.errors import QueueError


@dataclass(frozen=True)
class Item:
    id: int
    payload: str


@dataclass(frozen=True)
class QueueStats:
    total: int
    pending: int
    processing: int
    done: int
    failed: int

    @property
    def finished(self) -> bool:
        """Every item either done or dead-lettered."""
        return self.total > 0 and self.done + self.failed >= self.total


class WorkQueue(Protocol):
    url: str

    def push(self, payloads: Iterable[str]) -> int: ...

    def lease(self, worker: str, count: int = 1, lease_seconds: float = 60.0) -> list[Item]: ...

    def complete(self, items: Iterable[Item]) -> int: ...

    def fail(self, item: Item, error: str, max_retries: int) -> bool: ...

    def requeue_expired(self, max_retries: int) -> int: ...

    def stats(self) -> QueueStats: ...

    def errors(self, limit: int = 100) -> list[dict]: ...

    def delete(self) -> None: ...

    def close(self) -> None: ...


def open_queue(url: str) -> WorkQueue:
    """A queue by URL: redis://host:port/db#name or sqlite:///path#name."""
    parts = urlsplit(url)
    if not parts.fragment:
        raise QueueError(f"queue URL {url!r} needs the queue name after '#'", status=400)
    if parts.scheme in ("redis", "rediss"):
        from securecloud.services.batch.redis_queue import RedisQueue

        return RedisQueue(url)
    if parts.scheme == "sqlite":
        from securecloud.services.batch.local_queue import LocalQueue

        return LocalQueue(url)
    raise QueueError(f"queue URL {url!r}: scheme must be redis, rediss or sqlite", status=400)
