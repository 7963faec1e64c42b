"""`securecloud meters`: provision meter identities and run the meter simulator."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import DEFAULT_DATA_DIR, DataDir, console, fail, handle_errors

app = typer.Typer(help="Smart meters: identities, registry, simulator.", no_args_is_help=True)
METERS_PER_PROCESS = 16000  # a process may hold 20,000 descriptors here


def _kvs_admin(data_dir: Path):
    from securecloud.cli.kvs import _client

    return _client(data_dir, None)


def _registry(client):
    from securecloud.apps.metering.registry import BUCKET, Registry

    client.create_bucket(BUCKET)  # idempotent: the first provisioning makes it
    return Registry.load(client)


@app.command()
@handle_errors
def provision(
    count: Annotated[int, typer.Option(help="How many meters (ids 1..N).", min=1)] = 2000,
    seed: Annotated[int, typer.Option(help="Seed deciding each meter's consumer.")] = 1,
    large_share: Annotated[
        float, typer.Option(help="Share of consumers supplied above 1 kV.", min=0.0, max=1.0)
    ] = 0.02,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Create meter keys (on the meters' side, <data dir>/meters) and register their public
    keys and supply classes in the platform's registry (in the KVS). Needs the authenticator's
    public key: start it first (`securecloud ingest authenticator serve` or `securecloud up`)."""
    from securecloud.apps.metering.fleet import provision as make
    from securecloud.apps.metering.registry import BUCKET, KEY

    auth_doc = data_dir / "metering" / "authenticator.json"
    if not auth_doc.exists():
        fail(f"no authenticator key in {auth_doc}: start the authenticator first")
    point = bytes.fromhex(json.loads(auth_doc.read_text())["public_key"])
    started = time.perf_counter()
    with console.status(f"generating {count:,} P-256 meter keys"):
        _fleet, records = make(data_dir / "meters", count, point, seed, large_share)
    with _kvs_admin(data_dir) as client:
        registry = _registry(client)
        for record in records:
            registry.add(record)
        client.put(BUCKET, KEY, registry.to_json())
    console.print(
        f"provisioned {count:,} meters in {time.perf_counter() - started:.1f} s; "
        f"registry holds {len(registry):,}"
    )


@app.command()
@handle_errors
def revoke(
    meter: Annotated[int, typer.Argument(help="Meter id.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Revoke a meter: its frames are refused from the next registry reload on."""
    from securecloud.apps.metering.registry import BUCKET, KEY

    with _kvs_admin(data_dir) as client:
        registry = _registry(client)
        if registry.get(meter) is None:
            fail(f"meter: {meter} is not registered")
        registry.revoke(meter)
        client.put(BUCKET, KEY, registry.to_json())
    console.print(f"meter {meter} revoked")
    from securecloud.cli.ingest import reload_registry

    if reload_registry(data_dir):
        console.print("the running authenticator reloaded the registry")


@app.command()
@handle_errors
def simulate(
    count: Annotated[
        int | None, typer.Option(help="Meters to run (default: the whole fleet).", min=1)
    ] = None,
    days: Annotated[int, typer.Option(help="Simulated days.", min=1)] = 1,
    start: Annotated[str, typer.Option(help="First simulated day (YYYY-MM-DD).")] = "2026-03-02",
    speedup: Annotated[
        float, typer.Option(help="Simulated seconds per real second; 0 = as fast as acked.")
    ] = 0.0,
    target: Annotated[
        list[str] | None,
        typer.Option(help="Aggregator HOST:PORT (repeatable; meters spread over them)."),
    ] = None,
    window: Annotated[int, typer.Option(help="Frames in flight per meter.", min=1)] = 4,
    timeout: Annotated[
        float, typer.Option(help="Seconds before an unacknowledged frame is sent again.")
    ] = 20.0,
    p_offline: Annotated[float, typer.Option(help="Chance a meter goes offline in a day.")] = 0.01,
    p_duplicate: Annotated[float, typer.Option(help="Chance a report is sent twice.")] = 0.002,
    processes: Annotated[
        int | None, typer.Option(help="Simulator processes (default: 16,000 meters each).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the run's summary JSON here.")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Run the fleet: every meter connects to an aggregator, handshakes and sends its
    15-minute phasor reports, with offline periods, clock drift and duplicates."""
    from securecloud.apps.metering.fleet import Fleet

    try:
        first_day = dt.date.fromisoformat(start)
    except ValueError:
        fail(f"start: {start!r} is not a date (YYYY-MM-DD)")
    fleet = Fleet.load(data_dir / "meters")
    count = count or fleet.count
    if count > fleet.count:
        fail(f"count: {count} exceeds the fleet of {fleet.count} (provision more)")
    config = {
        "targets": target or ["127.0.0.1:4800"],
        "start": first_day.isoformat(),
        "days": days,
        "speedup": speedup,
        "window": window,
        "timeout": timeout,
        "p_offline": p_offline,
        "p_duplicate": p_duplicate,
    }
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("reports acknowledged", total=count * 96 * days)
        summary = run_fleet(
            fleet.directory, count, config, processes, lambda n: bar.update(task, completed=n)
        )
    console.print(
        f"{summary['meters']:,} meters, {summary['sent']:,} frames sent, "
        f"{summary['acked'].get('stored', 0):,} stored, "
        f"{summary['acked'].get('duplicate', 0):,} duplicates acknowledged, "
        f"{summary['acked'].get('quarantined', 0):,} quarantined, "
        f"{summary['lost_by_fault']:,} lost to meter faults, in {summary['elapsed_s']:.1f} s "
        f"({summary['readings_per_s']:,.0f} readings/s)"
    )
    if out:
        out.write_text(json.dumps(summary, indent=2))


def run_fleet(
    directory: Path,
    count: int,
    config: dict,
    processes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Run meters 1..count in processes of at most METERS_PER_PROCESS; merged summary.
    `progress(acknowledged reports so far)` is called about twice a second."""
    from securecloud.apps.metering.simulator import run_shard

    n = processes or -(-count // METERS_PER_PROCESS)
    bounds = [(1 + i * count // n, (i + 1) * count // n) for i in range(n)]
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"shard-{i}.json" for i in range(n)]
        started = time.perf_counter()
        counters = [context.Value("q", 0) for _ in bounds]
        workers = [
            context.Process(
                target=run_shard,
                args=(str(directory), a, b, config, f"s{i}", str(outs[i]), counters[i]),
            )
            for i, (a, b) in enumerate(bounds)
        ]
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            if progress is not None:
                progress(sum(c.value for c in counters))
            time.sleep(0.5)
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
        failed = [i for i, w in enumerate(workers) if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"simulator processes {failed} failed")
        shards = [json.loads(p.read_text()) for p in outs]
    summary = {"meters": count, "processes": n, "elapsed_s": elapsed}
    summary |= {"acked": {}, "nacks": {}, "commands": {}}
    for key in ("generated", "sent", "resent", "handshakes", "lost_by_fault", "connect_errors"):
        summary[key] = sum(s[key] for s in shards)
    summary["gc_pause_s"] = round(sum(s["gc_pause_s"] for s in shards), 2)
    for key in ("acked", "nacks", "commands"):
        for s in shards:
            for k, v in s[key].items():
                summary[key][k] = summary[key].get(k, 0) + v
    summary["acked_counters"] = {m: r for s in shards for m, r in s["acked_counters"].items()}
    acked = sum(summary["acked"].values())
    summary["readings_per_s"] = acked / elapsed if elapsed else 0.0
    return summary
