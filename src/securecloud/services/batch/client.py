"""Client of the manager's REST API, for the CLI and for applications."""

from __future__ import annotations

import httpx

from securecloud.services.batch.errors import BatchError


class BatchClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self._http = httpx.Client(
            base_url=url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise BatchError(
                f"batch manager unreachable: {exc}", reason="unreachable", status=503
            ) from exc
        if response.status_code >= 400:
            try:
                doc = response.json()
                detail, reason = doc.get("detail"), doc.get("reason", "error")
            except ValueError:
                detail, reason = response.text, "error"
            raise BatchError(str(detail), reason=reason, status=response.status_code)
        return response

    def submit(self, document: dict) -> dict:
        return self._call("POST", "/submissions", json=document).json()

    def list(self) -> list[dict]:
        return self._call("GET", "/submissions").json()

    def status(self, run_id: str) -> dict:
        return self._call("GET", f"/submissions/{run_id}").json()

    def report(self, run_id: str) -> dict:
        return self._call("GET", f"/submissions/{run_id}/report").json()

    def report_png(self, run_id: str) -> bytes:
        return self._call("GET", f"/submissions/{run_id}/report.png").content

    def log(self, run_id: str) -> list[str]:
        return self._call("GET", f"/submissions/{run_id}/log").json()["lines"]

    def stop(self, run_id: str) -> dict:
        return self._call("PUT", f"/submissions/{run_id}/stop").json()
