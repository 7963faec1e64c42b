"""A consumer's own database: one SQLCipher file, opened with a raw 256-bit key.

The key comes from the consumer at LOGIN and is never stored by the platform.
`PRAGMA key = "x'<64 hex digits>'"` hands SQLCipher the key itself (no
passphrase, no PBKDF2), so opening costs microseconds, not the 256,000 KDF
rounds a passphrase would. Tables are the thesis's: `metrics` pushed by meters
and sensors, `alarms` written by the consumer.
"""

from __future__ import annotations

from pathlib import Path

import sqlcipher3

SCHEMA = (
    "CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL,"
    " power REAL NOT NULL, impedance REAL NOT NULL, tension REAL NOT NULL)",
    "CREATE INDEX metrics_by_time ON metrics (timestamp)",
    "CREATE TABLE alarms (id INTEGER PRIMARY KEY AUTOINCREMENT, metric TEXT NOT NULL,"
    " threshold REAL NOT NULL)",
)
METRICS = ("power", "impedance", "tension")
KEY_SIZE = 32


class WrongKey(Exception):
    """The key does not open this database."""


def _check_key(key: bytes) -> str:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError(f"key: expected {KEY_SIZE} bytes")
    return key.hex()


class ConsumerDatabase:
    def __init__(self, path: Path, key: bytes):
        hex_key = _check_key(key)
        self.path = path
        self.db = sqlcipher3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA cipher_log_level = NONE")
        self.db.execute(f"PRAGMA key = \"x'{hex_key}'\"")
        try:
            self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError:
            self.db.close()
            raise WrongKey(f"{path.name}: the key does not open this database") from None

    @classmethod
    def create(cls, path: Path, key: bytes) -> ConsumerDatabase:
        if path.exists():
            raise FileExistsError(path)
        db = cls(path, key)
        with db.transaction():
            for statement in SCHEMA:
                db.db.execute(statement)
        return db

    def transaction(self):
        return _Transaction(self.db)

    def write_alarms(self, alarms: list[tuple[str, float]]) -> int:
        """WRITE: several INSERTs, all or none."""
        with self.transaction():
            self.db.executemany("INSERT INTO alarms (metric, threshold) VALUES (?, ?)", alarms)
        return len(alarms)

    def write_metrics(self, rows: list[tuple[int, float, float, float]]) -> int:
        """LONG_WRITE: hundreds of metrics in one transaction."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO metrics (timestamp, power, impedance, tension) VALUES (?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def averages(self, start: int | None = None, end: int | None = None) -> dict:
        """QUERY_AVG over [start, end) (either bound may be open)."""
        sql = "SELECT count(*), avg(power), avg(impedance), avg(tension) FROM metrics"
        where, params = [], []
        if start is not None:
            where.append("timestamp >= ?")
            params.append(start)
        if end is not None:
            where.append("timestamp < ?")
            params.append(end)
        if where:
            sql += " WHERE " + " AND ".join(where)
        count, *means = self.db.execute(sql, params).fetchone()
        return {"count": count, **dict(zip(METRICS, means, strict=True))}

    def close(self) -> None:
        self.db.close()


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
