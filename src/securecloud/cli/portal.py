"""`securecloud portal`: consumers reach their own data through their own instance."""

from __future__ import annotations

import asyncio
import csv
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    console,
    fail,
    handle_errors,
    print_json,
    service_url,
)

app = typer.Typer(
    help="Consumer portal with standby servers: per-consumer attested instances behind an "
    "SNI router that never terminates TLS.",
    no_args_is_help=True,
)


@app.command("provision")
@handle_errors
def provision(
    consumers: Annotated[int, typer.Option(help="Consumers c000001..cN to create.", min=1)],
    seed_hours: Annotated[
        float, typer.Option(help="Hours of 15-second metrics already in each database.", min=0)
    ] = 24.0,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Create the consumers' client keys and certificates, database keys (under
    <data dir>/portal/consumers/<uid>/) and SQLCipher databases (in the KVS, bucket
    `portal`). Existing consumers are kept."""
    from rich.progress import Progress

    from securecloud.apps.portal.provision import provision as run
    from securecloud.cli.kvs import _client

    with _client(data_dir, None) as kvs, Progress(disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("consumers", total=consumers)
        made = run(
            data_dir, kvs, consumers, progress=lambda n: bar.advance(task, n), seed_hours=seed_hours
        )
    console.print(f"provisioned {len(made)} new consumers; {consumers} in all")


@app.command("serve")
@handle_errors
def serve(
    mode: Annotated[
        str, typer.Option(help="trivial (an instance per consumer), on-demand, or standby.")
    ] = "standby",
    consumers: Annotated[
        int, typer.Option(help="trivial: instances to keep running (one per consumer).", min=0)
    ] = 0,
    buffer: Annotated[int, typer.Option(help="standby: Ready instances to keep.", min=0)] = 2,
    ready_wait: Annotated[
        float,
        typer.Option(
            help="Seconds a LOGIN that finds no Ready instance waits for one being started "
            "(0: refuse it at once; the client connects again).",
            min=0,
        ),
    ] = 5.0,
    host: Annotated[str, typer.Option(help="Address of the router and the APIs.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SNI router port (TLS passes through).")] = 8443,
    manager_port: Annotated[int, typer.Option(help="Routing Manager API port.")] = 8095,
    wrapper_port: Annotated[int, typer.Option(help="Application Wrapper API port.")] = 8096,
    session_ttl: Annotated[float, typer.Option(help="Session lifetime in seconds.")] = 900.0,
    reuse: Annotated[
        bool, typer.Option(help="Instances serve another consumer after LOGOUT instead of exiting.")
    ] = False,
    haproxy_socket: Annotated[
        Path | None, typer.Option(help="HAProxy runtime API socket: keep its map current.")
    ] = None,
    haproxy_map: Annotated[
        Path | None, typer.Option(help="The map file HAProxy's config names.")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Run the Routing Manager, an Application Wrapper and the embedded SNI router; the
    instances are attested processes started by the wrapper (CAS session `portal`)."""
    from securecloud.apps.portal.routing import MODES
    from securecloud.apps.portal.service import Portal, PortalConfig

    if mode not in MODES:
        fail(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    if (haproxy_socket is None) != (haproxy_map is None):
        fail("haproxy-socket and haproxy-map go together")
    config = PortalConfig(
        data_dir,
        service_url(data_dir, "cas", "https://127.0.0.1:8081"),
        service_url(data_dir, "las", "http://127.0.0.1:8080"),
        mode,
        consumers,
        buffer,
        host,
        port,
        manager_port,
        wrapper_port,
        session_ttl=session_ttl,
        reuse=reuse,
        ready_wait=ready_wait,
        haproxy_socket=haproxy_socket,
        haproxy_map=haproxy_map,
    )
    try:
        portal = Portal(config)
    except ValueError as exc:
        fail(str(exc))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, portal.stopped.set)
        started = asyncio.Event()
        runner = asyncio.create_task(portal.run(started))
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
        if started.is_set():
            console.print(f"portal ({mode}) routing on {host}:{port}", highlight=False)
        await runner

    asyncio.run(main())


@app.command("client")
@handle_errors
def client(
    server: Annotated[str, typer.Option(help="Router (or instance) address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Router port.")] = 8443,
    sni: Annotated[str | None, typer.Option(help="Consumer UID (the server name's label).")] = None,
    keydir: Annotated[
        Path | None, typer.Option(help="Consumer folder: client.crt, client.key, db.key.")
    ] = None,
    cert: Annotated[
        Path | None, typer.Option(help="Client certificate (default in keydir).")
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="Client private key (default in keydir).")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option(help="CA of the instances (default <data dir>/portal/ca.crt).")
    ] = None,
    mode: Annotated[str, typer.Option(help="type1 (meter: LONG_WRITE) or type2 (consumer).")] = (
        "type2"
    ),
    duration: Annotated[float, typer.Option(help="type2: session length, seconds.", min=0)] = 60.0,
    frequency: Annotated[
        float, typer.Option(help="type2: seconds between requests.", min=0.01)
    ] = 10.0,
    write_ratio: Annotated[
        float, typer.Option(help="type2: share of WRITE among requests.", min=0, max=1)
    ] = 0.5,
    hours: Annotated[float, typer.Option(help="type1: hours of 15 s metrics to push.")] = 1.0,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print one CSV line per request.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """One consumer's session against the portal, timing every operation."""
    from dataclasses import replace

    from securecloud.apps.portal.client import Credentials, PortalError, type1, type2
    from securecloud.apps.portal.provision import consumer_dir

    if mode not in ("type1", "type2"):
        fail(f"mode: {mode!r} is not type1 or type2")
    if sni is None and keydir is None:
        fail("sni: name the consumer (--sni UID) or its folder (--keydir)")
    folder = keydir or consumer_dir(data_dir, sni)
    if not (folder / "db.key").exists():
        fail(f"keydir: {folder} holds no db.key (run `securecloud portal provision`)")
    creds = Credentials.load(folder, ca or data_dir / "portal" / "ca.crt", sni)
    creds = replace(creds, cert=cert or creds.cert, key=key or creds.key)
    address = f"{server}:{port}"
    try:
        if mode == "type1":
            samples = asyncio.run(type1(address, creds, hours))
        else:
            samples = asyncio.run(type2(address, creds, duration, frequency, write_ratio))
    except PortalError as exc:
        fail(str(exc))
    if csv_out:
        out = csv.writer(sys.stdout)
        out.writerow(["operation", "latency_ms", "status", "uid"])
        for s in samples:
            out.writerow([s.operation, s.latency_ms, s.status, s.uid])
    else:
        print_json([s.__dict__ for s in samples])


@app.command("status")
@handle_errors
def status(
    manager: Annotated[str, typer.Option(help="Routing Manager URL.")] = "http://127.0.0.1:8095",
) -> None:
    """The Routing Manager's instances: state, address, consumer."""
    import httpx

    try:
        print_json(httpx.get(f"{manager}/v1/instances", timeout=10).json())
    except httpx.HTTPError as exc:
        fail(f"manager: {manager} unreachable: {exc}")
