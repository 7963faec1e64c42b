"""`securecloud ingest`: aggregators (untrusted) and authenticators (attested)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    KvsUrl,
    LogLevel,
    console,
    errors,
    fail,
    handle_errors,
    print_json,
    run_attested,
    service_url,
)

app = typer.Typer(
    help="Ingestion: meters -> aggregators -> authenticators -> KVS.", no_args_is_help=True
)
aggregator_app = typer.Typer(help="Untrusted aggregators meters connect to.", no_args_is_help=True)
authenticator_app = typer.Typer(help="Attested authenticators.", no_args_is_help=True)
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(authenticator_app, name="authenticator")


NatsUrl = Annotated[
    str | None,
    typer.Option(help="NATS URL: exchange batches through its JetStream stream (scale-out mode)."),
]
Partitions = Annotated[
    int, typer.Option(help="Meter partitions (meter id mod P); the same on every process.", min=1)
]


@aggregator_app.command("serve")
@handle_errors
def aggregator_serve(
    host: Annotated[str, typer.Option(help="Address meters connect to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port meters connect to.")] = 4800,
    metrics_port: Annotated[
        int, typer.Option(help="HTTP port of /metrics and /healthz (0: none).")
    ] = 0,
    authenticator: Annotated[
        list[str] | None,
        typer.Option(help="Authenticator link HOST:PORT (repeatable; meters are split by id)."),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(help="CA of the authenticators' TLS certificates (default: the data dir's)."),
    ] = None,
    batch_frames: Annotated[int, typer.Option(help="Frames per batch at most.", min=1)] = 2000,
    batch_delay_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch.")] = 5.0,
    nats: NatsUrl = None,
    partitions: Partitions = 1,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    log_level: LogLevel = "info",
) -> None:
    """Accept meter connections and forward their frames in batches; never decrypts.
    Direct TLS links to --authenticator by default; with --nats, a JetStream stream
    partitioned by meter that any number of authenticators consume."""
    import uvloop

    from securecloud.apps.metering.aggregator import Aggregator, AggregatorConfig
    from securecloud.infra.web import configure_logging, make_app

    configure_logging(log_level)
    ca_file = ca or data_dir / "metering" / "ca.crt"
    if not nats and not ca_file.exists():
        fail(f"ca: {ca_file} does not exist (start the authenticator first, or pass --ca)")
    if nats and authenticator:
        fail("authenticator: links and --nats exclude each other; choose one")
    try:
        config = AggregatorConfig(
            host,
            port,
            tuple(authenticator or ["127.0.0.1:4810"]),
            str(ca_file),
            batch_frames,
            batch_delay_ms / 1000,
            nats=nats,
            partitions=partitions,
        )
    except ValueError as exc:
        fail(str(exc))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(Aggregator(config).serve())
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        servers = [task]
        if metrics_port:
            import uvicorn

            app_ = make_app("securecloud aggregator", "1")
            server = uvicorn.Server(
                uvicorn.Config(
                    app_, host=host, port=metrics_port, log_config=None, access_log=False
                )
            )
            servers.append(asyncio.create_task(server.serve()))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for other in servers[1:]:
            other.cancel()

    uvloop.run(main())


@authenticator_app.command("serve")
@handle_errors
def authenticator_serve(
    name: Annotated[
        str, typer.Option(help="Authenticator name (its log and state keys).")
    ] = "auth-1",
    host: Annotated[str, typer.Option(help="Address of the link and the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TLS link port for aggregators.")] = 4810,
    api_port: Annotated[int, typer.Option(help="HTTPS port of the operator API.")] = 8084,
    flush_mb: Annotated[
        int, typer.Option(help="Write segments when accepted readings exceed this (MiB).", min=1)
    ] = 16,
    nats: NatsUrl = None,
    partitions: Partitions = 1,
    shard: Annotated[
        str,
        typer.Option(
            help="I/N: serve the partitions p with p mod N == I (one of N authenticators)."
        ),
    ] = "0/1",
    kvs_url: Annotated[str | None, typer.Option(help="KVS gateway URL.")] = None,
    cas: Annotated[str, typer.Option(help="CAS URL.")] = "https://127.0.0.1:8081",
    las: Annotated[str, typer.Option(help="LAS URL of this node.")] = "http://127.0.0.1:8080",
    cas_ca: Annotated[Path | None, typer.Option(help="CAS CA certificate.")] = None,
    identity: Annotated[
        Path | None,
        typer.Option(help="Policy-owner identity folder (default <data dir>/identity)."),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Write the `metering` CAS session, then run the authenticator as an attested service:
    it gets its keys, TLS certificate, KVS API key and API token from CAS, or does not start.
    Several authenticators (distinct --name, ports and --shard) share the session."""
    from securecloud.apps.metering.deploy import AuthenticatorDeployment
    from securecloud.apps.metering.ownership import Ownership

    try:
        Ownership.parse(partitions, shard)
    except ValueError as exc:
        fail(str(exc))

    if not (data_dir / "kvs" / "ca.crt").exists():
        fail("no KVS gateway in this data directory: start it first (`securecloud kvs serve`)")
    cas_ca = cas_ca or data_dir / "cas" / "ca.crt"
    deployment = AuthenticatorDeployment(
        data_dir,
        cas,
        cas_ca,
        identity or data_dir / "identity",
        kvs_url or service_url(data_dir, "kvs", "https://127.0.0.1:8083"),
        name,
        host,
        port,
        api_port,
        flush_mb,
        nats,
        partitions,
        shard,
    )
    config_id = deployment.apply()
    run_attested(
        "meter-authenticator", config_id, data_dir, data_dir / "metering" / "work", cas, cas_ca, las
    )


def api(data_dir: Path, url: str | None = None):
    """A client of the authenticator that `up` (or `ingest authenticator serve`) started."""
    from securecloud.apps.metering.client import AuthenticatorClient

    directory = data_dir / "metering"
    creds, ca = directory / "credentials.json", directory / "ca.crt"
    if not creds.exists() or not ca.exists():
        fail(f"no authenticator credentials in {directory}: start one first")
    return AuthenticatorClient(
        url or service_url(data_dir, "authenticator", "https://127.0.0.1:8084"),
        ca,
        json.loads(creds.read_text())["token"],
    )


def reload_registry(data_dir: Path, url: str | None = None) -> bool:
    """Ask a running authenticator to reload the registry; False when none answers."""
    from securecloud.apps.metering.client import AuthenticatorError

    if not (data_dir / "metering" / "credentials.json").exists():
        return False
    try:
        with api(data_dir, url) as client:
            client.reload_registry()
        return True
    except AuthenticatorError:
        return False


ApiUrl = Annotated[str | None, typer.Option("--url", help="Authenticator API URL.")]


@app.command()
@handle_errors
def status(
    meter: Annotated[int | None, typer.Option(help="One meter's counts.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: ApiUrl = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Accepted, duplicate, missing and quarantined readings (by reason), in total or per meter."""
    with api(data_dir, url) as client:
        doc = client.status(meter)
    if as_json:
        print_json(doc)
        return
    for key, value in doc.items():
        console.print(f"{key:>22}: {value}")


@app.command()
@handle_errors
def flush(url: ApiUrl = None, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Write the accepted readings held in memory as per-day segments now, and checkpoint."""
    with api(data_dir, url) as client:
        doc = client.flush()
    console.print(f"{doc['segments']} segments written; checkpoint at batch {doc['checkpoint']}")


@app.command()
@handle_errors
def command(
    meter: Annotated[int, typer.Argument(help="Meter id.")],
    action: Annotated[str, typer.Argument(help="connect or disconnect (the load).")],
    url: ApiUrl = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Queue a load command; it reaches the meter with the acknowledgement of its next frame."""
    with api(data_dir, url) as client:
        doc = client.command(meter, action)
    console.print(f"{doc['command']} queued for meter {doc['meter']}")


@app.command()
@handle_errors
def export(
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")],
    days: Annotated[int, typer.Option(help="Number of days.", min=1)] = 1,
    out: Annotated[
        Path | None, typer.Option(help="CSV file to write (default: standard output).")
    ] = None,
    kvs_url: KvsUrl = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Write the stored readings of the days as the head-end CSV the legacy collector reads
    (`python -m securecloud.apps.collector`), each checked against its batch's signed root."""
    import datetime as dt
    import sys

    from securecloud.apps.metering.export import export_csv
    from securecloud.cli.billing import regulator_keys
    from securecloud.cli.kvs import _client

    try:
        first = dt.date.fromisoformat(start)
    except ValueError:
        fail(f"start: {start!r} is not a date (YYYY-MM-DD)")
    keys = regulator_keys(data_dir / "metering" / "regulator.json")

    def progress(done: int, written: int) -> None:
        errors.print(f"   day {done}/{days}: {written:,} readings")

    with _client(data_dir, kvs_url) as kvs:
        if out is None:
            export_csv(kvs, first, days, keys, sys.stdout, progress)
            return
        partial = out.with_name(out.name + ".partial")
        with open(partial, "w", newline="") as stream:
            written = export_csv(kvs, first, days, keys, stream, progress)
        partial.replace(out)  # a failed export leaves no half file under the name
    console.print(f"{written:,} readings written to {out}")
