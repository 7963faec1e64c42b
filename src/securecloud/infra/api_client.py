"""What clients of our HTTP services share, without the server side's imports.

`ServiceError` carries an HTTP status and a stable reason code (services raise
it, `web.make_app` maps it to a response); `ApiClient` turns transport failures
and `{"detail", "reason"}` error bodies back into it. Kept apart from `web` so
that a client (an attested instance, the CLI) does not import FastAPI and
uvicorn: about 0.4 s of start-up each time.
"""

from __future__ import annotations

import http.client
import json
from typing import NoReturn

import httpx

from securecloud.infra.bulk_http import BulkHttp, BulkResponse


class ServiceError(Exception):
    """An error with an HTTP status and a stable reason code; subclassed per package."""

    status = 400
    reason = "bad-request"

    def __init__(self, message: str, *, reason: str | None = None, status: int | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status


class ApiClient:
    """Base of the clients of our HTTP services: one place that turns transport
    failures and `{"detail", "reason"}` error bodies into the service's exception."""

    error: type[ServiceError] = ServiceError

    def __init__(self, http: httpx.Client):
        self._http = http

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            self._refused(response.status_code, response.content)
        return response

    def _bulk_call(
        self, bulk: BulkHttp, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> BulkResponse:
        """A GET (or with `body` a PUT) of a large body through `bulk` (http.client), with
        `_call`'s errors."""
        try:
            got = bulk.get(path) if body is None else bulk.put(path, body, headers or {})
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
        if got.status >= 400:
            self._refused(got.status, got.body)
        return got

    def _unreachable(self, exc: Exception) -> ServiceError:
        return self.error(
            f"{self._http.base_url} unreachable: {exc}", reason="unreachable", status=503
        )

    def _refused(self, status: int, body: bytes) -> NoReturn:
        try:
            doc = json.loads(body)
            detail, reason = doc.get("detail"), doc.get("reason", "error")
        except (ValueError, AttributeError):
            detail, reason = body.decode("utf-8", "replace"), "error"
        raise self.error(str(detail), reason=reason, status=status)
