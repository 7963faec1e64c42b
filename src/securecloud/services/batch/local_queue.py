"""The work queue without a server: SQLite in WAL mode, shared by a node's processes.

Same protocol and counters as the Redis queue (`queue.py`). One table holds
every item with its state (pending, processing, done, error), lease expiry,
retry count and last error; each step is one short IMMEDIATE transaction.
Pushing commits with `synchronous=FULL` (an accepted submission survives a
power cut); leases and completions use NORMAL (they survive a crashed process;
after a power cut an item may be processed again, which at-least-once allows).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from securecloud.services.batch.errors import QueueError
from securecloud.services.batch.queue import Item, QueueStats

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    queue TEXT NOT NULL,
    id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    lease_until REAL,
    worker TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS items_by_state ON items (queue, state, id);
"""


class LocalQueue:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.url = url
        self.name = parts.fragment
        self.path = Path(parts.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; SQLite errors become QueueError."""
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise QueueError(f"local queue {self.path}: {exc}") from exc

    def push(self, payloads: Iterable[str]) -> int:
        items = list(payloads)
        db = self._db()
        db.execute("PRAGMA synchronous=FULL")
        try:
            with self._tx() as tx:
                first = tx.execute(
                    "SELECT COALESCE(MAX(id), 0) + 1 FROM items WHERE queue = ?", (self.name,)
                ).fetchone()[0]
                tx.executemany(
                    "INSERT INTO items (queue, id, payload) VALUES (?, ?, ?)",
                    ((self.name, first + n, p) for n, p in enumerate(items)),
                )
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return len(items)

    def lease(self, worker: str, count: int = 1, lease_seconds: float = 60.0) -> list[Item]:
        with self._tx() as tx:
            rows = tx.execute(
                "UPDATE items SET state = 'processing', lease_until = ?, worker = ? "
                "WHERE queue = ? AND id IN (SELECT id FROM items WHERE queue = ? "
                "AND state = 'pending' ORDER BY id LIMIT ?) RETURNING id, payload",
                (time.time() + lease_seconds, worker, self.name, self.name, count),
            ).fetchall()
        return sorted((Item(i, p) for i, p in rows), key=lambda item: item.id)

    def complete(self, items: Iterable[Item]) -> int:
        ids = [(self.name, i.id) for i in items]
        with self._tx() as tx:
            before = tx.total_changes
            tx.executemany(
                "UPDATE items SET state = 'done', lease_until = NULL "
                "WHERE queue = ? AND id = ? AND state = 'processing'",
                ids,
            )
            return tx.total_changes - before

    def _retry(self, tx, where: str, args: tuple, error: str, max_retries: int) -> int:
        before = tx.total_changes
        tx.execute(
            "UPDATE items SET retries = retries + 1, error = ?, lease_until = NULL, "
            f"state = CASE WHEN retries + 1 > ? THEN 'error' ELSE 'pending' END WHERE {where}",
            (error[:1000], max_retries, *args),
        )
        return tx.total_changes - before

    def fail(self, item: Item, error: str, max_retries: int) -> bool:
        with self._tx() as tx:
            return (
                self._retry(
                    tx,
                    "queue = ? AND id = ? AND state = 'processing'",
                    (self.name, item.id),
                    error,
                    max_retries,
                )
                == 1
            )

    def requeue_expired(self, max_retries: int) -> int:
        with self._tx() as tx:
            return self._retry(
                tx,
                "queue = ? AND state = 'processing' AND lease_until < ?",
                (self.name, time.time()),
                "lease expired",
                max_retries,
            )

    def stats(self) -> QueueStats:
        rows = dict(
            self._db()
            .execute(
                "SELECT state, COUNT(*) FROM items WHERE queue = ? GROUP BY state", (self.name,)
            )
            .fetchall()
        )
        return QueueStats(
            sum(rows.values()),
            rows.get("pending", 0),
            rows.get("processing", 0),
            rows.get("done", 0),
            rows.get("error", 0),
        )

    def errors(self, limit: int = 100) -> list[dict]:
        rows = (
            self._db()
            .execute(
                "SELECT id, payload, error, retries FROM items WHERE queue = ? AND state = 'error' "
                "ORDER BY id LIMIT ?",
                (self.name, limit),
            )
            .fetchall()
        )
        return [{"id": i, "item": p, "error": e, "retries": r} for i, p, e, r in rows]

    def delete(self) -> None:
        with self._tx() as tx:
            tx.execute("DELETE FROM items WHERE queue = ?", (self.name,))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
