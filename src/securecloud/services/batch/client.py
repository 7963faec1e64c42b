"""Client of the manager's REST API, for the CLI and for applications."""

from __future__ import annotations

import httpx

from securecloud.infra.api_client import ApiClient
from securecloud.services.batch.errors import BatchError


class BatchClient(ApiClient):
    error = BatchError

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        super().__init__(
            httpx.Client(
                base_url=url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
            )
        )

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
