"""Object bodies over the standard library's `http.client`: GETs and PUTs.

httpx hands a response body over in 64 KiB pieces parsed by h11 and joins
them; http.client reads a body of known length into one buffer. For the
multi-megabyte objects the applications read (a day of one meter group's
readings is 4-5 MB) that halves the client's CPU: 0.046 against 0.10 s for
51 MB over TLS (docs/performance.md). A PUT through it costs about a third of
httpx's per-request work, which CascaDB pays at every commit (its log record).
Clients keep httpx for everything else.

Connections are kept alive in a small pool, so threads may share one
`BulkHttp`. A kept connection that the server closed meanwhile: a GET is sent
again once on a new one, which is safe because a GET changes nothing; a PUT is
never sent twice (it may have been carried out), so before a PUT an idle
connection is checked and dropped if the server closed it.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

# what a kept-alive connection raises when the server closed it while it idled
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)


@dataclass(frozen=True)
class BulkResponse:
    status: int
    headers: Message
    body: bytes


class BulkHttp:
    """Requests to one HTTPS origin, with fixed headers (credentials)."""

    def __init__(self, base_url: str, context: ssl.SSLContext, headers: dict, timeout: float):
        url = urlsplit(base_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"base_url must be an https URL, not {base_url!r}")
        self._host, self._port = url.hostname, url.port or 443
        self._context, self._headers, self._timeout = context, dict(headers), timeout
        self._idle: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()

    def get(self, path: str) -> BulkResponse:
        """The whole response. Raises OSError or http.client.HTTPException when the
        server cannot be reached or breaks off."""
        kept = self._kept()
        if kept is not None:
            try:
                return self._request(kept, "GET", path)
            except _STALE:
                kept.close()
        return self._request(self._connect(), "GET", path)

    def put(self, path: str, body: bytes, headers: dict) -> BulkResponse:
        """Sent once: on a kept connection only if the server has not closed it."""
        kept = self._kept()
        if kept is not None and _closed_meanwhile(kept):
            kept.close()
            kept = None
        return self._request(kept or self._connect(), "PUT", path, body, headers)

    def _kept(self) -> http.client.HTTPSConnection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout, context=self._context
        )

    def _request(
        self,
        connection: http.client.HTTPSConnection,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
    ) -> BulkResponse:
        try:
            connection.request(method, path, body, {**self._headers, **(headers or {})})
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.append(connection)
        return BulkResponse(response.status, response.headers, data)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _closed_meanwhile(connection: http.client.HTTPSConnection) -> bool:
    """An idle HTTP/1.1 connection has nothing to read: readable means the server
    closed it (or broke the protocol); either way it must not carry a request."""
    sock = connection.sock
    if sock is None:
        return True
    return bool(sock.pending() or select.select([sock], [], [], 0)[0])
