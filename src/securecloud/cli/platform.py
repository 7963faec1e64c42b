"""`securecloud up | status | down`: the embedded platform as background processes."""

from typing import Annotated

import typer

from securecloud.cli.common import DEFAULT_DATA_DIR, DataDir, console, handle_errors
from securecloud.infra.supervisor import (
    BATCH_PORT,
    CAS_PORT,
    KVS_PORT,
    LAS_PORT,
    IngestPorts,
    Supervisor,
)


@handle_errors
def up(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    las_port: Annotated[int, typer.Option(help="LAS port.")] = LAS_PORT,
    cas_port: Annotated[int, typer.Option(help="CAS port.")] = CAS_PORT,
    batch_port: Annotated[int, typer.Option(help="Batch manager (Asperathos) port.")] = BATCH_PORT,
    kvs_port: Annotated[int, typer.Option(help="KVS gateway port (HTTPS).")] = KVS_PORT,
    ingest: Annotated[
        bool,
        typer.Option(
            help="Also start the meter authenticator (API 8084, link 4810) and an aggregator "
            "(meters 4800, metrics 8085)."
        ),
    ] = True,
) -> None:
    """Start the embedded platform (LAS, CAS, batch manager, KVS gateway) in the background."""
    for service in Supervisor(data_dir).up(
        las_port, cas_port, batch_port, kvs_port, IngestPorts() if ingest else None
    ):
        console.print(f"[green]started[/] {service.name:<5} pid {service.pid:<8} {service.url}")


@handle_errors
def status(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Show each service started by `up`, its address and health."""
    supervisor = Supervisor(data_dir)
    services = supervisor.running()
    if not services:
        console.print("nothing running (start it with `securecloud up`)")
        raise typer.Exit(1)
    unhealthy = 0
    for service in services:
        health = supervisor.health(service)
        state = "[green]healthy[/]" if health else "[red]down[/]"
        unhealthy += health is None
        console.print(f"{service.name:<5} pid {service.pid:<8} {service.url:<28} {state}")
    raise typer.Exit(1 if unhealthy else 0)


@handle_errors
def down(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Stop the services started by `up` (SIGTERM, then SIGKILL after 15 s)."""
    stopped = Supervisor(data_dir).stop_all()
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
