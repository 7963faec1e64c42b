"""What clients of our HTTP services share, without the server side's imports.

`ServiceError` carries an HTTP status and a stable reason code (services raise
it, `web.make_app` maps it to a response); `ApiClient` turns transport failures
and `{"detail", "reason"}` error bodies back into it. Kept apart from `web` so
that a client (an attested instance, the CLI) does not import FastAPI and
uvicorn: about 0.4 s of start-up each time.
"""

from __future__ import annotations

import httpx


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
            raise self.error(
                f"{self._http.base_url} unreachable: {exc}", reason="unreachable", status=503
            ) from exc
        if response.status_code >= 400:
            try:
                doc = response.json()
                detail, reason = doc.get("detail"), doc.get("reason", "error")
            except ValueError:
                detail, reason = response.text, "error"
            raise self.error(str(detail), reason=reason, status=response.status_code)
        return response
