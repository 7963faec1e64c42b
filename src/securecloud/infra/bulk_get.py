"""GETs of large bodies with the standard library's `http.client`.

httpx hands a response body over in 64 KiB pieces parsed by h11 and joins
them; http.client reads a body of known length into one buffer. For the
multi-megabyte objects the applications read (a day of one meter group's
readings is 4-5 MB) that halves the client's CPU: 0.046 against 0.10 s for
51 MB over TLS (docs/performance.md). Clients keep httpx for everything else.

Connections are kept alive in a small pool, so threads may share one
`BulkGet`; a kept connection that the server closed meanwhile is replaced
once, which is safe because a GET changes nothing.
"""

from __future__ import annotations

import http.client
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


class BulkGet:
    """GET requests to one HTTPS origin, with fixed headers (credentials)."""

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
        with self._lock:
            kept = self._idle.pop() if self._idle else None
        if kept is not None:
            try:
                return self._request(kept, path)
            except _STALE:
                kept.close()
        return self._request(self._connect(), path)

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout, context=self._context
        )

    def _request(self, connection: http.client.HTTPSConnection, path: str) -> BulkResponse:
        try:
            connection.request("GET", path, headers=self._headers)
            response = connection.getresponse()
            body = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.append(connection)
        return BulkResponse(response.status, response.headers, body)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
