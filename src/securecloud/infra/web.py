"""How every securecloud HTTP service is served.

One place for what an operator expects of each of them: structured JSON logs,
`/healthz`, `/metrics` (Prometheus), errors mapped to status codes with a
message and a stable `reason`, TLS (optionally mutual) with the verified
client certificate handed to the application, and a clean stop on SIGTERM
(uvicorn finishes in-flight requests, then the lifespan shutdown runs).

Client certificates: uvicorn (0.54) does not yet put the peer certificate in
the ASGI scope, so `PeerCertProtocol` adds it as the ASGI TLS extension does
(`scope["extensions"]["tls"]["client_cert_chain"]`, PEM, leaf first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from securecloud.infra.api_client import ServiceError
from securecloud.runtime.gcpause import watch_pauses


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PiecewiseResponse(Response):
    """A Response whose body goes to the transport in pieces of 256 KiB (still with its
    Content-Length). asyncio's TLS transport encrypts each write in one SSLObject.write
    into a memory BIO, and one multi-megabyte write made OpenSSL regrow that buffer: a
    5 MB body took 26 ms instead of 2.5 ms to encrypt. For large objects (KVS reads)."""

    PIECE = 256 * 1024

    def render(self, content) -> bytes | bytearray | memoryview:
        if isinstance(content, (bytearray, memoryview)):  # e.g. a buffer decrypted into
            return content
        return super().render(content)

    async def __call__(self, scope, receive, send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body, step = self.body, self.PIECE
        for start in range(0, max(len(body), 1), step):
            await send(
                {
                    "type": "http.response.body",
                    "body": body[start : start + step],
                    "more_body": start + step < len(body),
                }
            )
        if self.background is not None:
            await self.background()


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def peer_certificate(request: Request) -> bytes | None:
    """DER of the verified client certificate, or None without mutual TLS."""
    tls = request.scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("client_cert_chain"):
        return None
    return ssl.PEM_cert_to_DER_cert(tls["client_cert_chain"][0])


GC_PAUSES = Histogram(
    "securecloud_gc_pause_seconds",
    "Time each run of Python's cyclic garbage collector held the interpreter, by generation "
    "(a service with a large heap of long-lived objects pays here on every full collection)",
    ["generation"],
    buckets=(0.0001, 0.001, 0.005, 0.02, 0.1, 0.5, 2.0),
)
_gc_watched = False


def make_app(title: str, version: str, health: Callable[[], dict] | None = None, **kw) -> FastAPI:
    global _gc_watched
    app = FastAPI(title=title, version=version, **kw)
    if not _gc_watched:
        watch_pauses(lambda generation, s: GC_PAUSES.labels(str(generation)).observe(s))
        _gc_watched = True

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "reason": exc.reason}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        ]
        return JSONResponse(
            {"detail": "; ".join(problems), "reason": "invalid-request"}, status_code=422
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        return {"status": "ok", **(health() if health else {})}

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


class PeerCertProtocol(HttpToolsProtocol):
    """httptools protocol that exposes the verified client certificate to the app."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls_extension = None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
            self._tls_extension = {
                "client_cert_chain": chain,
                "tls_version": ssl_object.version(),
                "cipher_suite": ssl_object.cipher()[0],
            }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls_extension is not None:
            self.scope["extensions"] = {"tls": self._tls_extension}


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key (PEM bytes), and the CA that client certs must chain to."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None
    require_client_cert: bool = False


def server_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """Build the context without leaving a plaintext key on disk: Python's ssl only
    loads keys from files, so the key is written re-encrypted under a random
    password kept in memory, loaded, and deleted."""
    from cryptography.hazmat.primitives import serialization

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    password = os.urandom(32).hex().encode()
    key = serialization.load_pem_private_key(tls.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(tls.cert_pem)
        key_path.write_bytes(encrypted)
        context.load_cert_chain(cert_path, key_path, password=password)
    if tls.client_ca_pem is not None:
        context.load_verify_locations(cadata=tls.client_ca_pem.decode())
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def serve(app: FastAPI, host: str, port: int, tls: TlsFiles | None = None) -> None:
    """Run `app` until SIGINT/SIGTERM; in-flight requests finish before exit."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=PeerCertProtocol,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    config.load()
    if tls is not None:
        config.ssl = server_ssl_context(tls)
    uvicorn.Server(config).run()


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that runs beside others on one event loop: the process, not
    each server, owns SIGTERM/SIGINT (uvicorn's own handlers would re-raise them)."""

    def __init__(self, app: FastAPI, host: str, port: int):
        super().__init__(
            uvicorn.Config(
                app, host=host, port=port, http=PeerCertProtocol, log_config=None, access_log=False
            )
        )

    @contextlib.contextmanager
    def capture_signals(self):
        yield
