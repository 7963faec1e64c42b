"""CascaDB against the PostgreSQL server of this machine: the same data, client and batches.

Loads metering readings (METERS meters × DAYS days of 15-minute readings, the
phasor fields as columns, keyed by (client_id, timestamp): the collector's
table) with the collector's own code (psycopg `executemany`, BATCH rows per
transaction), time-major as a collector receives them, into CascaDB as
`securecloud sql serve` runs it (attested, its own process, PostgreSQL protocol
over TLS, storage in a real KVS gateway with 9 nodes: encrypted,
erasure-coded ec:6+3) and into PostgreSQL (database `test`, table
dropped first). Then query shapes in the style of TSBS cpu-only, each run REPEAT times on both:

    lastpoint     the last reading of one meter (ORDER BY timestamp DESC LIMIT 1)
    lastpoint_all the last reading of every meter (TSBS's lastpoint; a recursive
                  loose index scan, the same SQL on both)
    range_agg     one meter's energy and mean power over one day
    hourly        hourly mean power of every meter over one day (GROUP BY)
    top           the ten meters with the most energy over one day

    python bench/sql.py --out bench/results/sql.json            # 1,000 meters × 30 days
    python bench/sql.py --quick --out /tmp/sql-quick.json       # 100 meters × 3 days

Figures are ratios to PostgreSQL in the same run (docs/performance.md).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import summary_ms, write_results
from securecloud.apps import collector
from securecloud.infra.supervisor import Supervisor, free_port
from securecloud.services.sql import deploy as sql_deploy

TOKEN = "bench-token"
PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
INTERVAL = 900
START = 1_767_225_600  # 2026-01-01 00:00 UTC


def readings(meters: int, days: int):
    """Time-major, as a collector receives them: every meter's reading of one interval."""
    rng = random.Random(7)
    energy = [0.0] * meters
    for step in range(days * 96):
        ts = START + step * INTERVAL
        for meter in range(meters):
            power = max(50.0, rng.gauss(600.0, 300.0))  # W
            energy[meter] += power / 4  # Wh
            v = [230 + rng.uniform(-3, 3) for _ in range(3)]
            i = [power / 3 / x for x in v]
            angles = [rng.uniform(10, 20) for _ in range(3)]
            yield (
                meter,
                ts,
                *v,
                *i,
                *angles,
                power,
                power * 0.2,
                0.97,
                60.0,
                power,
                int(energy[meter]),
            )


QUERIES = {
    "lastpoint": (
        "SELECT * FROM reading WHERE client_id = %s ORDER BY timestamp DESC LIMIT 1",
        lambda r, m, d: (r.randrange(m),),
    ),
    "lastpoint_all": (
        # every meter's last reading (TSBS's lastpoint): a loose index scan that both
        # engines run, one probe for the next meter and one for its last time per meter
        "WITH RECURSIVE meter(id) AS ("
        " SELECT (SELECT client_id FROM reading ORDER BY client_id LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT client_id FROM reading WHERE client_id > meter.id"
        " ORDER BY client_id LIMIT 1) FROM meter WHERE meter.id IS NOT NULL)"
        " SELECT r.* FROM meter JOIN reading r ON r.client_id = meter.id"
        " AND r.timestamp = (SELECT timestamp FROM reading WHERE client_id = meter.id"
        " ORDER BY timestamp DESC LIMIT 1)",
        lambda r, m, d: (),
    ),
    "range_agg": (
        "SELECT max(energy) - min(energy), avg(power) FROM reading "
        "WHERE client_id = %s AND timestamp >= %s AND timestamp < %s",
        lambda r, m, d: _meter_day(r, m, d),
    ),
    "hourly": (
        "SELECT client_id, timestamp / 3600 AS hour, avg(power) FROM reading "
        "WHERE timestamp >= %s AND timestamp < %s GROUP BY client_id, hour",
        lambda r, m, d: _day(r, d),
    ),
    "top": (
        "SELECT client_id, sum(power) / 4000 AS kwh FROM reading WHERE timestamp >= %s "
        "AND timestamp < %s GROUP BY client_id ORDER BY kwh DESC LIMIT 10",
        lambda r, m, d: _day(r, d),
    ),
}


def _day(rng, days):
    start = START + rng.randrange(days) * 86400
    return (start, start + 86400)


def _meter_day(rng, meters, days):
    return (rng.randrange(meters), *_day(rng, days))


def load(conninfo: str, meters: int, days: int, batch: int) -> float:
    """The collector's own code path (`collector.store_rows`) into a fresh table."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS reading")
    total, started = meters * days * 96, time.perf_counter()

    def progress(done: int) -> None:
        if done % (batch * 50) == 0:
            print(f"  {done:,}/{total:,} rows", file=sys.stderr)

    collector.store_rows(conninfo, readings(meters, days), batch, progress)
    return total / (time.perf_counter() - started)


def run_queries(conninfo: str, meters: int, days: int, repeat: int) -> dict:
    timings = {}
    with psycopg.connect(conninfo, autocommit=True) as connection:
        for name, (sql, params) in QUERIES.items():
            rng = random.Random(11)
            seconds = []
            for _ in range(repeat + 2):
                args = params(rng, meters, days)
                started = time.perf_counter()
                connection.execute(sql, args).fetchall()
                seconds.append(time.perf_counter() - started)
            timings[name] = summary_ms(seconds[2:])  # two warm-ups
    return timings


def start_cascadb(supervisor: Supervisor, urls: dict, cache_mb: int):
    """`securecloud sql serve` as operators run it: attested, its own process, keys and
    token from CAS, storage in the KVS."""
    port = free_port()
    service = supervisor.start_sql(
        port, free_port(), urls["cas"], urls["las"], urls["kvs"], cache_mb=cache_mb
    )
    return sql_deploy.conninfo(supervisor.data_dir, port, user="bench"), service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="100 meters × 3 days")
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--cache-mb", type=int, default=2048)
    args = parser.parse_args()
    if args.quick:
        args.meters, args.days, args.repeat = 100, 3, 30
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as tmp:
        data_dir = Path(tmp)
        supervisor = Supervisor(data_dir)
        try:
            las, cas = supervisor.up(free_port(), free_port())
            kvs = supervisor.start_kvs(free_port(), cas.url, las.url)
            urls = {"las": las.url, "cas": cas.url, "kvs": kvs.url}
            conninfo, service = start_cascadb(supervisor, urls, args.cache_mb)
            print(f"loading {args.meters} meters × {args.days} days into CascaDB", file=sys.stderr)
            cascadb_rate = load(conninfo, args.meters, args.days, args.batch)
            print("loading the same into PostgreSQL", file=sys.stderr)
            pg_rate = load(PG, args.meters, args.days, args.batch)
            cascadb = run_queries(conninfo, args.meters, args.days, args.repeat)
            pg = run_queries(PG, args.meters, args.days, args.repeat)
            stats = supervisor.health(service)
        finally:
            supervisor.stop_all()
    results = {
        "meters": args.meters,
        "days": args.days,
        "rows": args.meters * args.days * 96,
        "batch": args.batch,
        "insert_rows_per_s": round(cascadb_rate),
        "pg_insert_rows_per_s": round(pg_rate),
        "insert_ratio": round(cascadb_rate / pg_rate, 3),
        "store": stats,
    }
    rows = [
        ("insert_rows_per_s", results["insert_rows_per_s"], "CascaDB, psycopg executemany"),
        ("pg_insert_rows_per_s", results["pg_insert_rows_per_s"], "PostgreSQL 15, same client"),
        ("insert_ratio", results["insert_ratio"], "target ≥ 0.5"),
    ]
    for name in QUERIES:
        ours, theirs = cascadb[name]["p50_ms"], pg[name]["p50_ms"]
        results[f"{name}_p50_ms"] = ours
        results[f"pg_{name}_p50_ms"] = theirs
        results[f"{name}_ratio"] = round(ours / theirs, 2)
        rows.append(
            (
                f"{name}_p50_ms",
                ours,
                f"PostgreSQL {theirs} ms; ratio {results[f'{name}_ratio']} (target ≤ 3)",
            )
        )
    write_results(args.out, "CascaDB vs PostgreSQL", results, rows)


if __name__ == "__main__":
    main()
