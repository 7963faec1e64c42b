"""CascaDB as an attested service (`sql-server`): it starts only with what CAS releases.

CAS gives it, after attestation: its TLS certificate and key (tls/), the
access token (token), the KVS tenant key and gateway (kvs.json), and its
arguments. It serves the PostgreSQL protocol (a thread per client) and HTTPS
/v1/query (an event loop); SIGTERM stops accepting, lets running statements
finish and exits.
Acknowledged commits are already in the KVS log, so nothing is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from securecloud.infra.web import EmbeddedServer, TlsFiles, configure_logging, server_ssl_context
from securecloud.runtime.manifest import builtin_service
from securecloud.services.sql.api import create_app
from securecloud.services.sql.deploy import SPIN_US
from securecloud.services.sql.engine import Database
from securecloud.services.sql.objects import KvsObjects
from securecloud.services.sql.pgwire import Authenticator, PgServer
from securecloud.services.sql.storage import CHECKPOINT_ENTRIES, Store

MANIFEST = builtin_service("sql-server", "securecloud.services.sql.server:main", heap_mb=256)
PG_PORT, HTTP_PORT = 5433, 8097
BUCKET = "sql"
log = logging.getLogger("securecloud.sql")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sql-server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=PG_PORT, help="PostgreSQL protocol port")
    p.add_argument("--http-port", type=int, default=HTTP_PORT, help="HTTPS /v1/query port")
    p.add_argument("--cache-mb", type=int, default=128, help="decoded blocks kept in memory")
    p.add_argument(
        "--checkpoint-entries",
        type=int,
        default=CHECKPOINT_ENTRIES,
        help="memtable entries that start a checkpoint (memory against rewrites)",
    )
    p.add_argument(
        "--spin-us",
        type=int,
        default=SPIN_US,
        help="microseconds a connection waits busy for its client's next message before "
        "sleeping (0: never): lower latency for a CPU's worth of waiting (docs/sql.md)",
    )
    p.add_argument("--log-level", default="info")
    return p


async def run(database: Database, tls: TlsFiles, token: str, args) -> None:
    context = server_ssl_context(tls)
    pg = PgServer(database, context, Authenticator(token), spin_seconds=args.spin_us / 1e6)
    pg.start(args.host, args.port)
    http = EmbeddedServer(create_app(database, token), args.host, args.http_port)
    http.config.load()
    http.config.ssl = context
    http_task = asyncio.create_task(http.serve())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "CascaDB listening",
        extra={
            "fields": {"pg": f"{args.host}:{args.port}", "https": f"{args.host}:{args.http_port}"}
        },
    )
    print(f"LISTENING pg={args.port} https={args.http_port}", flush=True)
    await stop.wait()
    http.should_exit = True
    await asyncio.to_thread(pg.close)
    await http_task


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    from securecloud.services.kvs.deploy import injected_client

    try:
        token = Path("token").read_text().strip()
        tls = TlsFiles(Path("tls/server.crt").read_bytes(), Path("tls/server.key").read_bytes())
        client = injected_client(Path("kvs.json"))
    except FileNotFoundError as exc:
        print(
            f"sql-server: {exc.filename} was not provided by CAS; refusing to start",
            file=sys.stderr,
        )
        return 3
    store = Store(
        KvsObjects(client, BUCKET),
        cache_bytes=args.cache_mb * 1024 * 1024,
        checkpoint_entries=args.checkpoint_entries,
    )
    database = Database(store)
    asyncio.run(run(database, tls, token, args))
    store.close()
    client.close()
    return 0
