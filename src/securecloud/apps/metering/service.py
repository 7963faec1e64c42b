"""The authenticator as an attested service (`meter-authenticator`).

CAS releases to it, after attestation: the authenticator key (P-256, whose
public half is in every meter), the regulator-registered signing key, its TLS
certificate and key, the KVS address with its API key, and the operator API
token. Without them it exits 3. One event loop runs the TLS link server for
aggregators, with --nats the JetStream consumer of its partitions (jetstream.py),
and the HTTPS operator API (status, flush, load commands,
/metrics, /healthz). SIGTERM: stop taking batches, flush the table to
segments, checkpoint, exit; nothing acknowledged is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Query
from prometheus_client import Counter, Histogram
from pydantic import BaseModel

from securecloud.apps.metering import frames, link
from securecloud.apps.metering.authenticator import Authenticator, Outcome
from securecloud.apps.metering.jetstream import Consumer
from securecloud.apps.metering.ownership import Ownership
from securecloud.apps.metering.registry import BUCKET, Registry
from securecloud.crypto import load_private_key_pem
from securecloud.infra.web import (
    ServiceError,
    TlsFiles,
    configure_logging,
    make_app,
    serve,
    server_ssl_context,
)
from securecloud.runtime.manifest import builtin_service
from securecloud.services.kvs.client import KvsClient
from securecloud.services.kvs.deploy import injected_client

MANIFEST = builtin_service(
    "meter-authenticator", "securecloud.apps.metering.service:main", heap_mb=24
)
LINK_PORT, API_PORT = 4810, 8084
CHECKPOINT_S = 30.0
log = logging.getLogger("securecloud.metering")
BATCHES = Histogram("securecloud_authenticator_batch_seconds", "Process + store time per batch")
OUTCOMES = Counter("securecloud_authenticator_frames_total", "Frames by outcome", ["outcome"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meter-authenticator")
    p.add_argument("--name", default="auth-1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=LINK_PORT, help="link port for aggregators")
    p.add_argument("--api-port", type=int, default=API_PORT)
    p.add_argument("--flush-mb", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=4000)
    p.add_argument("--log-level", default="info")
    p.add_argument("--nats", default=None, help="also consume the JetStream stream at this URL")
    p.add_argument("--partitions", type=int, default=1, help="meter partitions (mod P)")
    p.add_argument("--shard", default="0/1", help="I/N: serve partitions p with p mod N == I")
    return p


class CommandRequest(BaseModel):
    meter: int
    command: str  # connect | disconnect


class Runner:
    """Serialises batches: process (event loop) -> store (thread) -> replies."""

    def __init__(self, auth: Authenticator, kvs: KvsClient, max_batch: int):
        self.auth, self.kvs, self.max_batch = auth, kvs, max_batch
        # Bounded: when the authenticator falls behind, links stop being read and the
        # backlog stays in the aggregators' and meters' buffers, not in our memory.
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        self.lock = asyncio.Lock()
        self.flushing: asyncio.Task | None = None
        self.checkpointed = time.monotonic()
        self._registry_checked = 0.0
        self.stopping = False

    async def handle_link(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")
        log.info("aggregator linked from %s", peer)
        try:
            while not self.stopping:
                batch_id, entries = await link.read_request(reader)
                await self.queue.put((writer, batch_id, entries))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.info("aggregator %s left: %s", peer, type(exc).__name__)
        finally:
            writer.close()

    def _unknown(self, frame: bytes) -> bool:
        return self.auth.registry.get(frames.meter_id_of(frame) or -1) is None

    def _maybe_reload_registry(self) -> None:
        """A HELLO from a meter we do not know: perhaps it was provisioned since we loaded."""
        if time.monotonic() - self._registry_checked > 5:
            self._registry_checked = time.monotonic()
            self.auth.registry = Registry.load(self.kvs)
            log.info("registry reloaded: %d meters", len(self.auth.registry))

    async def run(self) -> None:
        while True:
            first = await self.queue.get()
            work = [first]
            size = len(first[2])
            while not self.queue.empty() and size < self.max_batch:
                item = self.queue.get_nowait()
                work.append(item)
                size += len(item[2])
            entries = [e for _w, _b, es in work for e in es]
            async with self.lock:
                started = time.perf_counter()
                if any(f[0] == frames.HELLO and self._unknown(f) for _t, f in entries):
                    await asyncio.to_thread(self._maybe_reload_registry)
                try:
                    outcome = self.auth.process([f for _t, f in entries])
                    await asyncio.to_thread(self.auth.store, outcome)
                except Exception:  # a bug must cost a retry, not the service
                    log.exception(
                        "batch of %d frames failed; all refused as unavailable", len(entries)
                    )
                    outcome = _all_unavailable(entries)
                BATCHES.observe(time.perf_counter() - started)
                await self._maybe_flush()
            OUTCOMES.labels("processed").inc(len(entries))
            offset = 0
            for writer, batch_id, es in work:
                replies = []
                for k, (tag, _frame) in enumerate(es):
                    replies.extend((tag, r) for r in outcome.replies[offset + k])
                offset += len(es)
                if not writer.is_closing():
                    writer.write(link.encode(batch_id, replies))

    async def _maybe_flush(self) -> None:
        """Segments are written in the background while batches go on; a checkpoint
        at most every CHECKPOINT_S (replay after a restart covers the rest)."""
        if not self.auth.flush_due:
            return
        if self.flushing is not None and not self.flushing.done():
            if self.auth._table_bytes < 3 * self.auth.flush_bytes:
                return
            await self.flushing  # too far behind: wait rather than grow without bound
        checkpoint = time.monotonic() - self.checkpointed > CHECKPOINT_S
        if checkpoint:
            self.checkpointed = time.monotonic()
        self.flushing = asyncio.create_task(self._write(self.auth.detach(checkpoint)))
        settle_heap(full=checkpoint)

    async def _write(self, detached) -> None:
        try:
            await asyncio.to_thread(self.auth.write, detached)
        except Exception:
            log.exception(
                "writing %d segments failed; kept for the next flush", len(detached.table)
            )
            self.auth.reattach(detached)

    async def flush(self) -> int:
        async with self.lock:
            if self.flushing is not None:
                await self.flushing
            self.checkpointed = time.monotonic()
            return await asyncio.to_thread(self.auth.flush)


def settle_heap(full: bool) -> None:
    """Put what is alive now (meter states, sessions, the registry) out of the cyclic
    collector's sight. The authenticator's heap of long-lived objects made every
    full collection take ~0.24 s, one every ~2 s: a tenth of its CPU. Frozen
    objects are still freed by reference counting; with `full`, everything is
    collected once first, so no cyclic garbage stays frozen."""
    if full:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def _all_unavailable(entries) -> Outcome:
    code = frames.NACK_CODES["unavailable"]
    return Outcome(
        replies=[
            [frames.Nack(frames.meter_id_of(f) or 0, frames.invocation_of(f), code).encode()]
            for _t, f in entries
        ]
    )


def create_app(
    runner: Runner, tls: TlsFiles, host: str, port: int, token: str, nats_url: str | None = None
):
    state: dict = {}

    def authorized(authorization: Annotated[str, Header()] = "") -> None:
        if not hmac.compare_digest(authorization, f"Bearer {token}"):
            raise ServiceError("missing or wrong API token", reason="unauthorized", status=401)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        context = server_ssl_context(tls)
        server = await asyncio.start_server(
            runner.handle_link, host, port, ssl=context, limit=1 << 22
        )
        task = asyncio.create_task(runner.run())
        log.info("authenticator link on %s:%d", host, port)
        state["server"] = server
        consumer = None
        if nats_url:
            consumer = Consumer(nats_url, runner.auth.ownership, runner.queue, runner.auth.name)
            await consumer.start()
        try:
            yield
        finally:
            runner.stopping = True
            server.close()
            if consumer is not None:
                await consumer.stop()  # unacknowledged messages are delivered again
            async with runner.lock:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            written = await runner.flush()
            log.info("flushed %d segments on shutdown", written)

    def health() -> dict:
        return {"authenticator": runner.auth.name, "batches": runner.auth.seq}

    app = make_app("securecloud meter authenticator", "1", health, lifespan=lifespan)

    @app.get("/v1/status", dependencies=[Depends(authorized)])
    async def status(meter: Annotated[int | None, Query(ge=0, le=0xFFFFFFFF)] = None) -> dict:
        return runner.auth.status(meter)

    @app.post("/v1/flush", dependencies=[Depends(authorized)])
    async def flush() -> dict:
        return {"segments": await runner.flush(), "checkpoint": runner.auth.checkpoint_seq}

    @app.post("/v1/registry/reload", dependencies=[Depends(authorized)])
    async def reload_registry() -> dict:
        async with runner.lock:
            registry = await asyncio.to_thread(Registry.load, runner.kvs)
            runner.auth.registry = registry
        return {"meters": len(registry)}

    @app.post("/v1/commands", dependencies=[Depends(authorized)])
    async def command(request: CommandRequest) -> dict:
        codes = {"connect": frames.CONNECT_LOAD, "disconnect": frames.DISCONNECT_LOAD}
        if request.command not in codes:
            raise ServiceError(
                f"command: {request.command!r} is not connect or disconnect",
                reason="invalid-request",
                status=422,
            )
        if runner.auth.registry.get(request.meter) is None:
            raise ServiceError(
                f"meter: {request.meter} is not registered", reason="unknown-meter", status=404
            )
        runner.auth.commands[request.meter] = codes[request.command]
        return {"meter": request.meter, "command": request.command, "queued": True}

    return app


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    needed = [
        "keys/authenticator.pem",
        "keys/signing.pem",
        "tls/auth.crt",
        "tls/auth.key",
        "kvs.json",
    ]
    missing = [p for p in needed if not Path(p).exists()]
    token = os.environ.get("SECURECLOUD_METERING_API_TOKEN", "")
    if missing or not token:
        print(
            "meter-authenticator: nothing from CAS "
            f"({', '.join(missing) or 'token'}); refusing to start",
            file=sys.stderr,
        )
        return 3
    try:
        ownership = Ownership.parse(args.partitions, args.shard)
    except ValueError as exc:
        print(f"meter-authenticator: {exc}", file=sys.stderr)
        return 2
    kvs = injected_client(Path("kvs.json"))
    kvs.create_bucket(BUCKET)  # idempotent: the tenant owns its bucket
    registry = Registry.load(kvs)
    auth = Authenticator(
        args.name,
        load_private_key_pem(Path("keys/authenticator.pem").read_bytes()),
        load_private_key_pem(Path("keys/signing.pem").read_bytes()),
        registry,
        kvs,
        flush_bytes=args.flush_mb << 20,
        ownership=ownership,
    )
    replayed = auth.restore()
    settle_heap(full=True)
    log.info(
        "authenticator ready",
        extra={
            "fields": {"name": args.name, "meters": len(registry), "replayed_batches": replayed}
        },
    )
    tls = TlsFiles(Path("tls/auth.crt").read_bytes(), Path("tls/auth.key").read_bytes())
    runner = Runner(auth, kvs, args.max_batch)
    try:
        app = create_app(runner, tls, args.host, args.port, token, args.nats)
        serve(app, args.host, args.api_port, tls)
    finally:
        kvs.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
