"""`securecloud sql`: CascaDB, SQL over the secure KVS (docs/sql.md)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    KvsUrl,
    fail,
    handle_errors,
    run_attested,
)

app = typer.Typer(help="CascaDB: SQL (PostgreSQL protocol and HTTPS) over the secure KVS.")


@app.command()
@handle_errors
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Address the server listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="PostgreSQL protocol port (TLS required).")] = 5433,
    http_port: Annotated[int, typer.Option(help="HTTPS port of POST /v1/query.")] = 8097,
    cache_mb: Annotated[int, typer.Option(help="Decoded blocks kept in enclave memory.")] = 128,
    spin_us: Annotated[
        int,
        typer.Option(
            min=0,
            help="Microseconds a connection waits busy for its client's next message before "
            "it sleeps: answers a client that asks again within that time about twice as "
            "fast, for up to that much CPU per answer; 0 never spins.",
        ),
    ] = 200,  # deploy.SPIN_US: importing it here would cost every command 0.13 s
    cas: Annotated[str, typer.Option(help="CAS URL.")] = "https://127.0.0.1:8081",
    las: Annotated[str, typer.Option(help="LAS URL of this node.")] = "http://127.0.0.1:8080",
    kvs_url: KvsUrl = None,
    identity: Annotated[
        Path | None,
        typer.Option(help="Policy-owner identity folder (default <data dir>/identity)."),
    ] = None,
) -> None:
    """Write CascaDB's CAS policy, create its KVS bucket, then run the server as an attested
    service: its TLS key, access token and KVS key come from CAS, or it does not start.
    Clients: `psql "host=HOST port=PORT sslmode=verify-full sslrootcert=<data dir>/sql/ca.crt"`
    with the password in <data dir>/sql/token."""
    from securecloud.cli.kvs import _client
    from securecloud.services.sql.deploy import SqlDeployment, sql_dir
    from securecloud.services.sql.server import BUCKET
    from securecloud.services.sql.storage import MEMTABLES_MB

    with _client(data_dir, kvs_url) as admin:
        admin.create_bucket(BUCKET)
    cas_ca = data_dir / "cas" / "ca.crt"
    deployment = SqlDeployment(
        data_dir,
        cas,
        cas_ca,
        identity or data_dir / "identity",
        host,
        port,
        http_port,
        cache_mb,
        kvs_url,
        spin_us,
    )
    config_id = deployment.apply()
    run_attested(
        "sql-server",
        config_id,
        data_dir,
        sql_dir(data_dir) / "work",
        cas,
        cas_ca,
        las,
        overcommit=True,  # the block cache is larger than the EPC budget: docs/sql.md
        heap_mb=cache_mb + MEMTABLES_MB + 64,
    )


@app.command()
@handle_errors
def shell(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="CascaDB host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="CascaDB PostgreSQL protocol port.")] = 5433,
    command: Annotated[
        str | None, typer.Option("-c", "--command", help="Run this SQL and exit.")
    ] = None,
    history: Annotated[
        Path | None, typer.Option(help="History file (default ~/.securecloud_sql_history).")
    ] = None,
) -> None:
    """An interactive SQL client (psycopg over TLS, verified against <data dir>/sql/ca.crt),
    with line editing and history; statements end with `;`, `\\q` quits."""
    import psycopg

    from securecloud.services.sql.deploy import conninfo, sql_dir

    directory = sql_dir(data_dir)
    if not (directory / "ca.crt").exists():
        fail(f"no {directory / 'ca.crt'}: start the server with `securecloud sql serve` first")
    with psycopg.connect(
        conninfo(data_dir, port, host, user="cascadb"), autocommit=True
    ) as connection:
        if command is not None:
            _run(connection, command)
            return
        _interactive(connection, history or Path.home() / ".securecloud_sql_history")


def _run(connection, sql: str) -> None:
    import psycopg
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.encode())
            if cursor.description:
                table = Table(*[d.name for d in cursor.description])
                for row in cursor.fetchall():
                    table.add_row(*["NULL" if v is None else str(v) for v in row])
                console.print(table)
            console.print(cursor.statusmessage or "")
    except psycopg.Error as exc:
        console.print(f"[red]ERROR {exc.sqlstate or ''}: {str(exc).strip()}[/red]")


def _interactive(connection, history: Path) -> None:
    import readline

    with contextlib.suppress(OSError):  # no history yet
        readline.read_history_file(history)
    buffer: list[str] = []
    try:
        while True:
            try:
                line = input("cascadb> " if not buffer else "     ...> ")
            except EOFError:
                break
            if not buffer and line.strip() in ("\\q", "quit", "exit"):
                break
            buffer.append(line)
            if line.rstrip().endswith(";"):
                _run(connection, "\n".join(buffer))
                buffer = []
    finally:
        readline.write_history_file(history)
