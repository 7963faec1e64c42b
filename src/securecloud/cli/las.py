"""`securecloud las`: the local attestation service (simulated quoting)."""

from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    LogLevel,
    ShowConfig,
    handle_errors,
    print_json,
)
from securecloud.infra.supervisor import LAS_PORT

app = typer.Typer(
    help="Local attestation service: signs simulation quotes for code it measures.",
    no_args_is_help=True,
)


@app.command()
@handle_errors
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    host: Annotated[
        str, typer.Option(help="Address to listen on; keep it on loopback.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = LAS_PORT,
    tcb_status: Annotated[
        str,
        typer.Option(
            help="TCB status written into quotes (UpToDate, OutOfDate, "
            "ConfigurationNeeded, SWHardeningNeeded, ...), to exercise policies."
        ),
    ] = "UpToDate",
    advisory: Annotated[
        list[str] | None,
        typer.Option(help="Security advisory id written into quotes (repeatable)."),
    ] = None,
    log_level: LogLevel = "info",
    show_config: ShowConfig = False,
) -> None:
    """Serve quotes and sealing keys over HTTP on loopback (simulation mode: no isolation)."""
    from securecloud.infra.las.api import create_app
    from securecloud.infra.las.platform import Platform
    from securecloud.infra.web import configure_logging
    from securecloud.infra.web import serve as serve_app

    settings = {
        "data_dir": str(data_dir),
        "host": host,
        "port": port,
        "tcb_status": tcb_status,
        "advisories": advisory or [],
    }
    if show_config:
        print_json(settings)
        return
    configure_logging(log_level)
    platform = Platform.load_or_create(
        data_dir / "las", tcb_status=tcb_status, advisories=tuple(advisory or ())
    )
    serve_app(create_app(platform), host, port)
