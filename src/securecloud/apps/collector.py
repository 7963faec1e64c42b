"""The utility's metering data collector: a plain PostgreSQL client, kept unmodified.

It stands for the legacy program CascaDB exists for, so it deliberately imports
nothing of securecloud: psycopg and the standard library only. It reads
readings as CSV (the head-end export, header line first; `securecloud ingest
export` writes it) and stores them with plain INSERTs into `reading`, keyed by
(client_id, timestamp), committing every --batch rows. Point it at PostgreSQL
or at CascaDB with the same connection string syntax; it cannot tell them apart.

    python -m securecloud.apps.collector "host=... port=5433 sslmode=verify-full ..." < day.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import psycopg

COLUMNS = (
    "client_id", "timestamp",
    "voltage_a", "voltage_b", "voltage_c", "current_a", "current_b", "current_c",
    "angle_a", "angle_b", "angle_c",
    "power", "reactive", "power_factor", "frequency", "demand", "energy",
)  # fmt: skip
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reading (client_id INTEGER NOT NULL, timestamp BIGINT NOT NULL, "
    + ", ".join(f"{c} DOUBLE PRECISION" for c in COLUMNS[2:-1])
    + ", energy BIGINT, PRIMARY KEY (client_id, timestamp))"
)
INSERT = f"INSERT INTO reading ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"


def rows(lines):
    """CSV rows as INSERT parameters; the header must name exactly COLUMNS."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(header) != COLUMNS:
        raise ValueError(f"CSV header: expected {','.join(COLUMNS)}, got {header}")
    for number, row in enumerate(reader, start=2):
        if len(row) != len(COLUMNS):
            raise ValueError(f"CSV line {number}: {len(row)} fields, expected {len(COLUMNS)}")
        yield (int(row[0]), int(row[1]), *map(float, row[2:-1]), int(row[-1]))


def store_rows(conninfo: str, readings, batch: int = 1000, progress=None) -> int:
    """Create `reading` if missing, then insert `readings` (tuples in COLUMNS order), `batch`
    rows per transaction; returns the number stored."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(SCHEMA)
    stored = 0
    with psycopg.connect(conninfo) as connection, connection.cursor() as cursor:
        pending: list[tuple] = []
        for row in readings:
            pending.append(row)
            if len(pending) == batch:
                cursor.executemany(INSERT, pending)
                connection.commit()
                stored += len(pending)
                pending = []
                if progress:
                    progress(stored)
        if pending:
            cursor.executemany(INSERT, pending)
            connection.commit()
            stored += len(pending)
    return stored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="collector", description="Store CSV readings in the `reading` table over psycopg."
    )
    p.add_argument("conninfo", help="libpq connection string (PostgreSQL or CascaDB)")
    p.add_argument("--input", default="-", help="CSV file (default: standard input)")
    p.add_argument("--batch", type=int, default=1000, help="rows per transaction")
    p.add_argument(
        "--progress", action="store_true", help="print `stored N` on stderr after each commit"
    )
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch: must be at least 1")
    began = time.perf_counter()
    progress = (
        (lambda n: print(f"stored {n}", file=sys.stderr, flush=True)) if args.progress else None
    )
    try:
        if args.input == "-":
            stored = store_rows(args.conninfo, rows(sys.stdin), args.batch, progress)
        else:
            with open(args.input, newline="") as lines:
                stored = store_rows(args.conninfo, rows(lines), args.batch, progress)
    except (ValueError, OSError, psycopg.Error) as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - began
    print(f"collector: stored {stored} readings in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
