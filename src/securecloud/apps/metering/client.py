"""Client of the authenticator's operator API, for the CLI and the demo."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from securecloud.infra.api_client import ApiClient, ServiceError


class AuthenticatorError(ServiceError):
    pass


class AuthenticatorClient(ApiClient):
    error = AuthenticatorError

    def __init__(self, url: str, ca_file: Path, token: str, timeout: float = 120):
        super().__init__(
            httpx.Client(
                base_url=url,
                verify=ssl.create_default_context(cafile=str(ca_file)),
                headers={"Authorization": f"Bearer {token}"},
                timeout=timeout,
            )
        )

    def status(self, meter: int | None = None) -> dict:
        params = {"meter": meter} if meter is not None else None
        return self._call("GET", "/v1/status", params=params).json()

    def flush(self) -> dict:
        return self._call("POST", "/v1/flush").json()

    def command(self, meter: int, command: str) -> dict:
        return self._call("POST", "/v1/commands", json={"meter": meter, "command": command}).json()

    def reload_registry(self) -> dict:
        return self._call("POST", "/v1/registry/reload").json()
