"""`securecloud batch`: the Asperathos manager and its client commands."""

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    LogLevel,
    ShowConfig,
    console,
    fail,
    handle_errors,
    print_json,
    service_url,
)

app = typer.Typer(
    help="Asperathos: deadline-aware batch jobs on attested workers.", no_args_is_help=True
)

Url = Annotated[
    str | None,
    typer.Option(
        "--url", help="Manager URL (default: the one `up` started, else http://127.0.0.1:8082)."
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SECURECLOUD_BATCH_TOKEN",
        help="API token (default: <data dir>/batch/api-token; env SECURECLOUD_BATCH_TOKEN).",
    ),
]
RunId = Annotated[str, typer.Argument(help="Submission id (from `batch submit`).")]


def _client(data_dir: Path, url: str | None, token: str | None):
    from securecloud.services.batch.client import BatchClient
    from securecloud.services.batch.manager import DEFAULT_PORT

    if token is None:
        path = data_dir / "batch" / "api-token"
        if not path.exists():
            fail(f"--token: none given and {path} does not exist (is the manager running?)")
        token = path.read_text().strip()
    return BatchClient(
        url or service_url(data_dir, "batch", f"http://127.0.0.1:{DEFAULT_PORT}"), token
    )


@app.command()
@handle_errors
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8082,
    queue_url: Annotated[
        str | None,
        typer.Option(
            help="Work queue: redis://host:port/db for Redis; default a local SQLite queue under "
            "the data directory (no server)."
        ),
    ] = None,
    cas: Annotated[str, typer.Option(help="CAS URL (workers attest there).")] = (
        "https://127.0.0.1:8081"
    ),
    las: Annotated[str, typer.Option(help="LAS URL of this node.")] = "http://127.0.0.1:8080",
    cas_ca: Annotated[
        Path | None, typer.Option(help="CAS CA certificate (default <data dir>/cas/ca.crt).")
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            help="Policy-owner identity folder used to write worker policies (default "
            "<data dir>/identity; enrolled if missing)."
        ),
    ] = None,
    budget_mb: Annotated[int, typer.Option(help="Enclave memory budget of this node, MB.")] = 93,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace (kubejobs plugin).")] = (
        "default"
    ),
    log_level: LogLevel = "info",
    show_config: ShowConfig = False,
) -> None:
    """Serve the manager's REST API; resumes submissions a previous run left unfinished."""
    from securecloud.infra.web import configure_logging
    from securecloud.infra.web import serve as serve_app
    from securecloud.services.batch.api import create_app
    from securecloud.services.batch.manager import BatchConfig, Manager

    config = BatchConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        queue_url=queue_url,
        cas_url=cas,
        las_url=las,
        cas_ca=cas_ca,
        identity=identity,
        budget_mb=budget_mb,
        namespace=namespace,
        log_level=log_level,
    )
    if show_config:
        print_json(config.show())
        return
    configure_logging(log_level)
    serve_app(create_app(Manager(config)), host, port)


@app.command()
@handle_errors
def submit(
    file: Annotated[
        Path, typer.Argument(help="Submission JSON (docs/batch.md).", exists=True, dir_okay=False)
    ],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
    token: Token = None,
) -> None:
    """Submit a job; prints its id."""
    try:
        document = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        fail(f"{file}: not JSON: {exc}")
    with _client(data_dir, url, token) as client:
        console.print(client.submit(document)["id"])


@app.command("list")
@handle_errors
def list_submissions(
    data_dir: DataDir = DEFAULT_DATA_DIR, url: Url = None, token: Token = None
) -> None:
    """List submissions with their status."""
    with _client(data_dir, url, token) as client:
        for run in client.list():
            sample = run["last_sample"] or {}
            console.print(
                f"{run['id']}  {run['status']:<11} {run['strategy']:<7} "
                f"done {sample.get('done', 0)}/{sample.get('total', 0)}"
            )


@app.command()
@handle_errors
def status(
    run_id: RunId,
    watch: Annotated[bool, typer.Option(help="Follow progress live until the job ends.")] = True,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
    token: Token = None,
) -> None:
    """Show a submission's progress (a live progress bar on a terminal)."""
    with _client(data_dir, url, token) as client:
        run = client.status(run_id)
        live = watch and console.is_terminal and not os.environ.get("CI")
        if not live:
            print_json(run)
            return
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} items"),
            TextColumn("{task.fields[workers]} workers, error {task.fields[error]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(run_id, total=1, workers=0, error="+0.000")
            while True:
                sample = run["last_sample"] or {}
                progress.update(
                    task,
                    total=max(1, sample.get("total", 1)),
                    completed=sample.get("done", 0) + sample.get("failed", 0),
                    workers=sample.get("replicas", 0),
                    error=f"{sample.get('error', 0.0):+.3f}",
                )
                if run["status"] not in ("queued", "running"):
                    break
                time.sleep(1)
                run = client.status(run_id)
        console.print(f"{run_id}: {run['status']}")


@app.command()
@handle_errors
def report(
    run_id: RunId,
    png: Annotated[
        Path | None,
        typer.Option(
            help="Write the plot of progress error and workers over time to this PNG file."
        ),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
    token: Token = None,
) -> None:
    """Execution time, errors, workers over time, items done and failed; optional PNG plot."""
    with _client(data_dir, url, token) as client:
        doc = client.report(run_id)
        if png is not None:
            png.write_bytes(client.report_png(run_id))
    summary = {k: v for k, v in doc.items() if k != "replicas_over_time"}
    print_json(summary)
    if png is not None:
        console.print(f"plot written to {png}")


@app.command()
@handle_errors
def log(
    run_id: RunId, data_dir: DataDir = DEFAULT_DATA_DIR, url: Url = None, token: Token = None
) -> None:
    """Print the submission's log: queueing, scaling decisions with their reasons, errors."""
    with _client(data_dir, url, token) as client:
        for line in client.log(run_id):
            console.print(line, markup=False)


@app.command()
@handle_errors
def stop(
    run_id: RunId, data_dir: DataDir = DEFAULT_DATA_DIR, url: Url = None, token: Token = None
) -> None:
    """Stop a submission: workers finish their current item, the rest stays in the queue."""
    with _client(data_dir, url, token) as client:
        console.print(client.stop(run_id)["status"])


def run_job(
    data_dir: Path, entry_point: str, items: list[str], workers: int, deadline: float
) -> dict:
    """Submit `items` to the registered task `entry_point` on attested local workers and
    wait for the job to end; returns its final status."""
    import time

    document = {
        "plugin": "local",
        "plugin_info": {
            "entry_point": entry_point,
            "init_size": workers,
            "redis_workload": items,
            "control_plugin": "kubejobs",
            "control_parameters": {"min_rep": 1, "max_rep": max(workers, 2)},
            "monitor_plugin": "kubejobs",
            "monitor_info": {"expected_time": deadline},
            "max_retries": 2,
            "lease_seconds": 900,
        },
    }
    with _client(data_dir, None, None) as client:
        run_id = client.submit(document)["id"]
        console.print(f"submitted {run_id}: {len(items)} items of task {entry_point}")
        while (run := client.status(run_id))["status"] not in ("finished", "failed", "stopped"):
            time.sleep(0.5)
    return run
