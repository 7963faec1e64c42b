"""What every command shares: the data directory option, the console, error exits."""

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from securecloud.crypto.errors import CryptoError
from securecloud.infra.api_client import ServiceError
from securecloud.infra.supervisor import SupervisorError
from securecloud.runtime.errors import EnclaveError

console = Console(stderr=False, highlight=False)
errors = Console(stderr=True, highlight=False)

DEFAULT_DATA_DIR = Path(os.environ.get("SECURECLOUD_DATA_DIR", ".securecloud"))

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="SECURECLOUD_DATA_DIR",
        help="Data directory: one sub-folder per service (env SECURECLOUD_DATA_DIR).",
    ),
]


LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error.")]
KvsUrl = Annotated[str | None, typer.Option(help="KVS gateway URL (default: the running one).")]
ShowConfig = Annotated[bool, typer.Option(help="Print the configuration and exit.")]


def fail(message: str, code: int = 1) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def handle_errors(func):
    """Turn our exceptions into a one-line message and a non-zero exit, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ServiceError, EnclaveError, CryptoError, SupervisorError) as exc:
            reason = getattr(exc, "reason", None)
            fail(f"{exc}" + (f" [{reason}]" if reason else ""))
        except OSError as exc:
            fail(f"{exc.filename or ''}: {exc.strerror or exc}")

    return wrapper


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def service_url(data_dir: Path, name: str, default: str) -> str:
    """The URL of a service started by `securecloud up`, or the default address."""
    record = data_dir / "run" / f"{name}.json"
    if record.exists():
        return json.loads(record.read_text())["url"]
    return default


def run_attested(
    service: str,
    config_id: str,
    data_dir: Path,
    workdir: Path,
    cas: str,
    cas_ca: Path,
    las: str,
    **spec,
) -> None:
    """Launch `service` attested in the foreground: SIGTERM/SIGINT go to it, and its exit
    code becomes ours. `spec`: more LaunchSpec fields (overcommit, heap_mb)."""
    import signal

    from securecloud.runtime.launcher import LaunchSpec, launch

    process = launch(
        LaunchSpec(
            service=service,
            config_id=config_id,
            cas_addr=cas,
            cas_ca=cas_ca.resolve(),
            las_addr=las,
            ledger_dir=(data_dir / "runtime").resolve(),
            workdir=workdir.resolve(),
            **spec,
        )
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: process.send_signal(s))
    raise typer.Exit(process.wait())
