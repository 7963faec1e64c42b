"""The thesis's Standby Servers experiment, scaled to this machine.

N consumers (60; 20 with --quick), each with a SQLCipher database of one day
of 15-second metrics in the KVS. For each mode (trivial: N instances always
running; standby: a buffer of anonymous Ready instances; standby with instance
reuse; on-demand: an instance started at each LOGIN) and each active-user ratio
(50 %, 25 %, 5 %) and write ratio (50 %, 10 %), the active consumers run type-2
sessions back to back through the embedded SNI router for the cell's duration:
LOGIN, a WRITE or QUERY_AVG every F seconds, LOGOUT (the thesis: sessions of
600 s, a request every 10 s; here sessions of S s and a request every F s, both
scaled down so a run takes minutes). A LOGIN that finds no free instance is
retried and timed from its first attempt. The memory of the instances (the sum
of their proportional set sizes, /proc/<pid>/smaps_rollup) is sampled every half
second. Type-1 clients (LOGIN, LONG_WRITE of one hour of metrics, LOGOUT) run once
per mode.

Router overhead: one consumer's session, 200 QUERY_AVG through the embedded
router and 200 straight to its instance, interleaved, on kept-alive connections
(`router_overhead_p50_ms`) and on fresh TLS connections (`*_connect_*`); the
same through a real HAProxy with the shipped config.

    python bench/portal.py --out bench/results/portal.json
    python bench/portal.py --quick --out /tmp/portal-quick.json
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, write_results
from securecloud.apps.portal.client import (
    OPERATIONS,
    Credentials,
    PortalError,
    PortalSession,
    alarms_for,
    metrics_for,
)
from securecloud.apps.portal.haproxy import start_haproxy
from securecloud.apps.portal.names import consumer_uids
from securecloud.apps.portal.provision import consumer_dir, provision
from securecloud.apps.portal.service import BackgroundPortal, PortalConfig
from securecloud.apps.portal.wrapper import START_SECONDS
from securecloud.cli.common import service_url
from securecloud.cli.kvs import _client
from securecloud.infra.supervisor import Supervisor, free_port

THESIS = {  # Table 5.2-5.5 (trivial, 105 servers): p50 / p95 / p99 in ms; Fig. 5.14 savings
    "LOGIN": (676.8, 1012.1, 1131.7),
    "LOGOUT": (366.0, 740.5, 1081.5),
    "QUERY_AVG": (173.1, 489.8, 1211.9),
    "WRITE": (344.9, 706.7, 1386.2),
    "memory_saving_5pct": 0.9171,
    "memory_saving_50pct": 0.4480,
}


class Cell:
    """One (mode, active ratio, write ratio) run: its samples and memory."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        self.errors: dict[str, int] = {}
        self.memory_kb: list[int] = []
        self.instances: list[int] = []
        self.starts: tuple[float, float] = (0.0, 0.0)  # instance starts: count, seconds


def start_totals() -> tuple[float, float]:
    """(count, seconds) of instance starts so far, from the wrapper's histogram."""
    found = {s.name: s.value for m in START_SECONDS.collect() for s in m.samples}
    return found["securecloud_portal_instance_start_seconds_count"], found[
        "securecloud_portal_instance_start_seconds_sum"
    ]


async def login(session: PortalSession, cell: Cell, patience: float = 60.0) -> None:
    """LOGIN, retried while no instance is free; timed from the first attempt."""
    started = time.perf_counter()
    while True:
        try:
            await session.login()
            break
        except PortalError as exc:
            if exc.status != 0 or time.perf_counter() - started > patience:
                raise
            cell.errors["login-retry"] = cell.errors.get("login-retry", 0) + 1
            await asyncio.sleep(0.05)  # the router closed it (none free): connect again
    session.samples = [s for s in session.samples if s.operation != "LOGIN"]
    cell.samples["LOGIN"].append((time.perf_counter() - started) * 1000)


async def consumer(address, credentials, cell, ends, duration, frequency, write_ratio, rng):
    """Sessions back to back until `ends`, the first one after a random delay."""
    await asyncio.sleep(rng.uniform(0, duration))
    while time.monotonic() < ends:
        session = PortalSession(address, credentials)
        try:
            await login(session, cell)
            stop = time.monotonic() + duration
            while time.monotonic() < stop:
                await asyncio.sleep(frequency * rng.uniform(0.5, 1.5))
                if rng.random() < write_ratio:
                    await session.write(alarms_for())
                else:
                    await session.query_avg()
            await session.logout()
        except PortalError as exc:
            cell.errors[exc.reason] = cell.errors.get(exc.reason, 0) + 1
        finally:
            for s in session.samples:
                if s.status == 200:
                    cell.samples[s.operation].append(s.latency_ms)
            await session.close()


def sample_memory(portal, cell: Cell, stop: threading.Event, steady_after: float) -> None:
    """Memory of the instances, once every consumer has started its first session."""
    steady = time.monotonic() + steady_after
    while not stop.wait(0.5):
        if time.monotonic() < steady:
            continue
        memory = portal.portal.wrapper.memory()
        cell.memory_kb.append(sum(m["pss_kb"] for m in memory.values()))
        cell.instances.append(len(memory))


def run_cell(portal, creds, active, duration, frequency, write_ratio, cell_s, seed) -> Cell:
    cell = Cell()
    stop = threading.Event()
    sampler = threading.Thread(
        target=sample_memory, args=(portal, cell, stop, duration), daemon=True
    )
    sampler.start()
    rng = random.Random(seed)
    chosen = rng.sample(creds, active)
    before = start_totals()

    async def main():
        ends = time.monotonic() + cell_s
        await asyncio.gather(
            *(
                consumer(
                    portal.address,
                    c,
                    cell,
                    ends,
                    duration,
                    frequency,
                    write_ratio,
                    random.Random(rng.random()),
                )
                for c in chosen
            )
        )

    asyncio.run(main())
    stop.set()
    sampler.join()
    after = start_totals()
    cell.starts = (after[0] - before[0], after[1] - before[1])
    return cell


def type1(portal, creds, count: int) -> Cell:
    cell = Cell()

    async def one(c):
        session = PortalSession(portal.address, c)
        try:
            await login(session, cell)
            await session.long_write(metrics_for(1.0))
            await session.logout()
        finally:
            for s in session.samples:
                if s.status == 200:
                    cell.samples[s.operation].append(s.latency_ms)
            await session.close()

    async def main():
        for c in creds[:count]:
            await one(c)

    asyncio.run(main())
    return cell


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p95_ms": round(percentile(values, 95), 2),
        "p99_ms": round(percentile(values, 99), 2),
    }


def overhead(portal: BackgroundPortal, credentials, haproxy_address: str | None, n: int) -> dict:
    """Per-request latency through the router (and HAProxy) vs straight to the instance."""

    async def main():
        owner = PortalSession(portal.address, credentials)
        await login(owner, Cell())
        instance = next(x["address"] for x in portal.instances() if x["uid"] == credentials.uid)
        paths = {"direct": instance, "router": portal.address}
        if haproxy_address:
            paths["haproxy"] = haproxy_address
        kept = {}
        for name, address in paths.items():
            kept[name] = PortalSession(address, credentials)
            kept[name].token = owner.token
            await kept[name].query_avg()  # connect once
            kept[name].samples.clear()
        fresh: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(n):
            for name, address in paths.items():
                await kept[name].query_avg()
                one = PortalSession(address, credentials)
                one.token = owner.token
                await one.query_avg()
                fresh[name].append(one.samples[-1].latency_ms)
                await one.close()
        out = {}
        for name in paths:
            out[name] = {
                "kept_alive_p50_ms": round(
                    percentile([s.latency_ms for s in kept[name].samples], 50), 3
                ),
                "new_connection_p50_ms": round(percentile(fresh[name], 50), 3),
            }
            await kept[name].close()
        await owner.logout()
        await owner.close()
        return out

    return asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="20 consumers, fewer cells, short")
    p.add_argument("--consumers", type=int, help="override N")
    p.add_argument(
        "--modes",
        default="trivial,standby,standby-reuse,on-demand",
        help="comma-separated subset to run (figures that need a missing mode are left out)",
    )
    args = p.parse_args()
    n = args.consumers or (20 if args.quick else 60)
    aurs = (0.5, 0.05) if args.quick else (0.5, 0.25, 0.05)
    write_ratios = (0.5,) if args.quick else (0.5, 0.1)
    duration, frequency = (4.0, 0.5) if args.quick else (45.0, 1.5)
    cell_s = duration + (4.0 if args.quick else 15.0)  # memory counts after `duration`
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = set(modes) - {"trivial", "standby", "standby-reuse", "on-demand"}
    if unknown:
        p.error(f"--modes: unknown mode(s) {sorted(unknown)}")
    startup_s = 4.0  # an instance's start under load, with margin: the buffer covers it
    results: dict = {"consumers": n, "session_s": duration, "request_every_s": frequency}
    with tempfile.TemporaryDirectory(prefix="bench-portal-") as tmp:
        data_dir = Path(tmp)
        supervisor = Supervisor(data_dir)
        supervisor.up(free_port(), free_port(), None, free_port())
        try:
            started = time.perf_counter()
            with _client(data_dir, None) as kvs:
                provision(data_dir, kvs, n, seed_hours=24)
            results["provision_s"] = round(time.perf_counter() - started, 1)
            ca = data_dir / "portal" / "ca.crt"
            creds = [Credentials.load(consumer_dir(data_dir, u), ca) for u in consumer_uids(n)]
            cells, memory, type1_cells = {}, {}, {}
            for mode in modes:
                base = mode.split("-")[0] if mode != "on-demand" else mode
                config = PortalConfig(
                    data_dir,
                    service_url(data_dir, "cas", ""),
                    service_url(data_dir, "las", ""),
                    base,
                    consumers=n if base == "trivial" else 0,
                    buffer=2,
                    router_port=free_port(),
                    manager_port=free_port(),
                    wrapper_port=free_port(),
                    reuse=mode == "standby-reuse",
                    report_interval=1.0,
                    claim_timeout=10.0,
                )
                began = time.perf_counter()
                with BackgroundPortal(config) as portal:
                    if base == "trivial":
                        portal.ready(n, timeout=600)
                    elif base == "standby":
                        portal.ready(2)
                    results.setdefault("startup_s", {})[mode] = round(
                        time.perf_counter() - began, 1
                    )
                    for aur in aurs:
                        active = max(1, math.ceil(aur * n))
                        if base == "standby":  # Ready buffer: arrivals during one start
                            buffer = max(2, math.ceil(active * startup_s / duration))
                            portal.call(setattr, portal.portal.table, "buffer", buffer)
                            portal.ready(buffer, timeout=300)
                        if mode not in ("trivial", "standby") and aur not in (aurs[0], aurs[-1]):
                            continue  # the variants at the extremes only
                        ratios = write_ratios if mode in ("trivial", "standby") else (0.5,)
                        for wr in ratios:
                            key = f"{mode}/aur{int(aur * 100)}/wr{int(wr * 100)}"
                            cell = run_cell(
                                portal, creds, active, duration, frequency, wr, cell_s, 7
                            )
                            cells[key] = cell
                            memory.setdefault(mode, {}).setdefault(str(aur), [])
                            memory[mode][str(aur)] += cell.memory_kb
                            print(
                                key,
                                {op: stats(v).get("p99_ms") for op, v in cell.samples.items()},
                                f"mem {statistics.fmean(cell.memory_kb or [0]) / 1024:.0f} MiB",
                                f"starts {cell.starts[0]:.0f} "
                                f"(mean {cell.starts[1] / max(1, cell.starts[0]):.2f} s)",
                                cell.errors or "",
                                flush=True,
                            )
                    type1_cells[mode] = type1(portal, creds, min(n, 10))
                    if mode == "standby":
                        hp_dir = data_dir / "haproxy"
                        hp_port = free_port()
                        process, _ = start_haproxy(
                            hp_dir, f"127.0.0.1:{hp_port}", config.manager_url, config.domain
                        )
                        try:
                            while not (hp_dir / "haproxy.sock").exists():
                                time.sleep(0.05)
                            results["overhead"] = overhead(
                                portal, creds[0], f"127.0.0.1:{hp_port}", 50 if args.quick else 200
                            )
                        finally:
                            process.terminate()
                            process.wait(10)
        finally:
            supervisor.stop_all()
    by_mode = {}
    for mode in modes:
        merged = {op: [] for op in OPERATIONS}
        for key, cell in cells.items():
            if key.startswith(mode + "/"):
                for op, values in cell.samples.items():
                    merged[op] += values
        for op, values in type1_cells[mode].samples.items():
            if op == "LONG_WRITE":
                merged[op] += values
        by_mode[mode] = {op: stats(v) for op, v in merged.items()}
    results["latency"] = by_mode
    results["cells"] = {
        k: {
            "latency": {op: stats(v) for op, v in c.samples.items()},
            "errors": c.errors,
            "memory_mib": round(statistics.fmean(c.memory_kb or [0]) / 1024, 1),
            "instances_mean": round(statistics.fmean(c.instances or [0]), 1),
            "instance_starts": int(c.starts[0]),
            "instance_start_mean_s": round(c.starts[1] / c.starts[0], 2) if c.starts[0] else None,
        }
        for k, c in cells.items()
    }
    memory = {
        mode: {aur: statistics.fmean(kb or [0]) for aur, kb in per.items()}
        for mode, per in memory.items()
    }
    results["memory_mib"] = {
        mode: {aur: round(kb / 1024, 1) for aur, kb in per.items()} for mode, per in memory.items()
    }

    def saving(mode: str, aur: float) -> float | None:
        if mode not in memory or "trivial" not in memory:
            return None
        return round(1 - memory[mode][str(aur)] / memory["trivial"][str(aur)], 4)

    def p99(mode: str, op: str) -> float | None:
        return by_mode[mode][op]["p99_ms"] if mode in by_mode else None

    results["memory_saving_5pct"] = saving("standby", 0.05)
    results["memory_saving_50pct"] = saving("standby", 0.5)
    results["memory_saving_reuse_5pct"] = saving("standby-reuse", 0.05)
    results["login_p99_ms"] = p99("standby", "LOGIN")
    results["query_avg_p99_ms"] = p99("standby", "QUERY_AVG")
    results["login_p99_ms_on_demand"] = p99("on-demand", "LOGIN")
    o = results.get("overhead")  # measured in standby mode
    for figure, path, kind in (
        ("router_overhead_p50_ms", "router", "kept_alive_p50_ms"),
        ("router_connect_overhead_p50_ms", "router", "new_connection_p50_ms"),
        ("haproxy_overhead_p50_ms", "haproxy", "kept_alive_p50_ms"),
        ("haproxy_connect_overhead_p50_ms", "haproxy", "new_connection_p50_ms"),
    ):
        results[figure] = round(o[path][kind] - o["direct"][kind], 3) if o else None
    results["thesis"] = THESIS
    notes = {
        "login_p99_ms": "standby; target <= 100 (thesis 1,131.7)",
        "query_avg_p99_ms": "standby (thesis 1,211.9)",
        "login_p99_ms_on_demand": "cold start at LOGIN",
        "memory_saving_5pct": "target >= 0.90 (thesis 0.917)",
        "memory_saving_50pct": "target >= 0.45 (thesis 0.448)",
        "memory_saving_reuse_5pct": "standby + reuse",
        "router_overhead_p50_ms": "kept alive; target <= 1",
        "router_connect_overhead_p50_ms": "new TLS",
        "haproxy_overhead_p50_ms": "kept alive",
        "haproxy_connect_overhead_p50_ms": "new TLS",
    }
    rows = [(k, results[k], note) for k, note in notes.items() if results[k] is not None]
    for mode, per in by_mode.items():
        for op in OPERATIONS:
            if per[op].get("n"):
                s = per[op]
                rows.append(
                    (
                        f"{mode} {op}",
                        f"{s['p50_ms']} / {s['p95_ms']} / {s['p99_ms']}",
                        f"p50/p95/p99 ms, n={s['n']}",
                    )
                )
    for mode, per in results["memory_mib"].items():
        rows.append((f"{mode} memory", per, "MiB of instances (Pss) per active ratio"))
    write_results(args.out, "portal", results, rows)


if __name__ == "__main__":
    main()
