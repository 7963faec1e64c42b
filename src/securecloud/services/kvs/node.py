"""Storage nodes: untrusted HTTP services that store opaque fragments.

`securecloud kvs node serve` wraps a PackStore:

    PUT    /v1/fragments/{id}        body: the fragment; 204 once durable
    GET    /v1/fragments/{id}        200 with the bytes, 404 if absent
    DELETE /v1/fragments/{id}        204
    GET    /v1/fragments?after=&limit=   {"ids": [...]} in id order

A node holds only fragment ids, lengths and ciphertext. Requests need the
node token (`Authorization: Bearer`), which the gateway receives from CAS,
so nobody else can write or delete fragments; a node may still lie, which the
fragment MACs catch. The traffic is plain HTTP: add TLS in front of nodes that
are reached over an untrusted network (the content is encrypted and
authenticated already; TLS would hide only access patterns and tokens).
"""

from __future__ import annotations

import hmac

import anyio
import httpx
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from prometheus_client import Counter

import securecloud
from securecloud.infra.api_client import ServiceError
from securecloud.infra.web import make_app
from securecloud.services.kvs.packstore import PackStore

MAX_FRAGMENT = 256 * 1024 * 1024
FragmentId = PathParam(pattern=r"^[0-9a-f]{8,128}$", description="fragment id (hex)")
NODE_REQUESTS = Counter("securecloud_kvs_node_requests_total", "Fragment requests", ["op"])


class NodeError(ServiceError):
    reason = "node-error"


def create_node_app(store: PackStore, token: str | None) -> FastAPI:
    app = make_app(
        "securecloud KVS storage node",
        securecloud.__version__,
        health=lambda: store.stats(),
        description="Untrusted storage of opaque, authenticated fragments.",
    )

    def authorized(authorization: str = Header(default="")) -> None:
        if token is None:
            return
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, token):
            raise NodeError("missing or wrong node token", reason="bad-token", status=401)

    guard = [Depends(authorized)]

    @app.put("/v1/fragments/{fragment_id}", status_code=204, dependencies=guard)
    async def put(request: Request, fragment_id: str = FragmentId) -> Response:
        body = await request.body()
        if len(body) > MAX_FRAGMENT:
            raise NodeError("fragment too large", reason="too-large", status=413)
        await anyio.to_thread.run_sync(store.put, fragment_id, body)
        NODE_REQUESTS.labels("put").inc()
        return Response(status_code=204)

    @app.get("/v1/fragments/{fragment_id}", dependencies=guard)
    def get(fragment_id: str = FragmentId) -> Response:
        data = store.get(fragment_id)
        NODE_REQUESTS.labels("get").inc()
        if data is None:
            raise NodeError("no such fragment", reason="not-found", status=404)
        return Response(data, media_type="application/octet-stream")

    @app.delete("/v1/fragments/{fragment_id}", status_code=204, dependencies=guard)
    def delete(fragment_id: str = FragmentId) -> Response:
        store.delete(fragment_id)
        NODE_REQUESTS.labels("delete").inc()
        return Response(status_code=204)

    @app.get("/v1/fragments", dependencies=guard)
    def listing(
        after: str = Query("", max_length=128), limit: int = Query(1000, ge=1, le=10000)
    ) -> dict:
        return {"ids": store.list(after, limit)}

    return app


class HttpFragmentStore:
    """A storage node seen from the gateway."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.name = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, limits=httpx.Limits(max_connections=64)
        )

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise NodeError(
                f"node {self.name}: {response.status_code} {response.text[:200]}",
                status=502,
                reason="node-error",
            )

    def put(self, fragment_id: str, data: bytes) -> None:
        self._check(self._http.put(f"/v1/fragments/{fragment_id}", content=data))

    def get(self, fragment_id: str) -> bytes | None:
        response = self._http.get(f"/v1/fragments/{fragment_id}")
        if response.status_code == 404:
            return None
        self._check(response)
        return response.content

    def delete(self, fragment_id: str) -> None:
        self._check(self._http.delete(f"/v1/fragments/{fragment_id}"))

    def list(self, after: str = "", limit: int = 1000) -> list[str]:
        response = self._http.get("/v1/fragments", params={"after": after, "limit": limit})
        self._check(response)
        return response.json()["ids"]

    def close(self) -> None:
        self._http.close()
