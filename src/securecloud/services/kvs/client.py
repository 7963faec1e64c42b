"""Client of the gateway's native API, for the CLI, CascaDB and the applications."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from urllib.parse import quote

import httpx

from securecloud.infra.api_client import ApiClient
from securecloud.infra.bulk_http import BulkHttp
from securecloud.services.kvs import batchwire
from securecloud.services.kvs.errors import KvsError


class KvsClient(ApiClient):
    error = KvsError

    def __init__(self, url: str, ca_file: Path, key_id: str, secret: str, timeout: float = 120):
        self._args = (url, ca_file, key_id, secret, timeout)
        context = ssl.create_default_context(cafile=str(ca_file))
        headers = {"Authorization": f"Bearer {key_id}:{secret}"}
        super().__init__(
            httpx.Client(base_url=url, verify=context, timeout=timeout, headers=headers)
        )
        self._bulk = BulkHttp(url, context, headers, timeout)  # object bodies: see bulk_http

    def close(self) -> None:
        self._bulk.close()
        super().close()

    def reopen(self) -> KvsClient:
        """A new client with the same credentials and its own connections (for another
        process: a connection must not be shared across a fork)."""
        return KvsClient(*self._args)

    def create_bucket(self, bucket: str) -> dict:
        return self._call("PUT", f"/v1/{bucket}").json()

    def buckets(self) -> list[str]:
        return self._call("GET", "/v1").json()["buckets"]

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        policy: str | None = None,
        if_match: int | None = None,
    ) -> dict:
        headers = {}
        if policy:
            headers["X-Storage-Policy"] = policy
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        return json.loads(
            self._bulk_call(self._bulk, _object_path(bucket, key), data, headers).body
        )

    def get(self, bucket: str, key: str) -> bytes:
        return self._bulk_call(self._bulk, _object_path(bucket, key)).body

    def get_versioned(self, bucket: str, key: str) -> tuple[bytes, int]:
        """The object and its version (for a later put with if_match)."""
        got = self._bulk_call(self._bulk, _object_path(bucket, key))
        return got.body, int(got.headers["x-object-version"])

    def head(self, bucket: str, key: str) -> dict[str, str]:
        return dict(self._call("HEAD", _object_path(bucket, key)).headers)

    def delete(self, bucket: str, key: str) -> None:
        self._call("DELETE", _object_path(bucket, key))

    def list(
        self, bucket: str, prefix: str = "", start_after: str = "", limit: int = 1000
    ) -> list[dict]:
        params = {"prefix": prefix, "start_after": start_after, "limit": limit}
        return self._call("GET", f"/v1/{bucket}", params=params).json()["objects"]

    def batch(self, bucket: str, operations: list[dict]) -> list[dict]:
        """Atomic puts and deletes: [{"op": "put", "key", "data": bytes, ...},
        {"op": "delete", "key"}]."""
        body = batchwire.encode(operations)  # binary: no JSON, no base64 of the data
        headers = {"Content-Type": batchwire.MEDIA_TYPE}
        return self._call("POST", f"/v1-batch/{bucket}", content=body, headers=headers).json()[
            "objects"
        ]

    def set_policy(self, bucket: str, key: str, policy: str) -> dict:
        return self._call(
            "PUT", f"/v1-admin/policy/{bucket}/{_quoted(key)}", json={"policy": policy}
        ).json()

    def scrub(self, sample: float = 1.0) -> dict:
        return self._call("POST", "/v1-admin/scrub", params={"sample": sample}).json()

    def rebuild_index(self) -> dict:
        return self._call("POST", "/v1-admin/rebuild-index").json()

    def stat(self, bucket: str, key: str) -> dict:
        return self._call("GET", f"/v1-admin/stat/{bucket}/{_quoted(key)}").json()


def _quoted(key: str) -> str:
    """A key is any UTF-8: it travels wholly percent-encoded, '/' and '.' too, so that
    no client or proxy reads '?', '#' or a '..' segment in it (httpx would resolve
    'a/../b' to 'b')."""
    return quote(key, safe="").replace(".", "%2E")


def _object_path(bucket: str, key: str) -> str:
    return f"/v1/{bucket}/{_quoted(key)}"
