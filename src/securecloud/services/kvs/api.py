"""The gateway's native REST API (OpenAPI at /openapi.json).

GET    /v1                          buckets the key can read
PUT    /v1/{bucket}                 create a bucket (admin)
GET    /v1/{bucket}?prefix=&start_after=&end=&limit=   objects in key order (read)
PUT    /v1/{bucket}/{key}           store; headers X-Storage-Policy, If-Match: <version>
                                    (0: must not exist), Content-Type (write)
GET    /v1/{bucket}/{key}           the object; ETag, X-Object-Version, X-Storage-Policy
HEAD   /v1/{bucket}/{key}           the same headers
DELETE /v1/{bucket}/{key}           (write)
POST   /v1-batch/{bucket}           {"operations": [{"op": "put"|"delete", "key", "data":
                                    base64, "policy", "if_match"}]}, or the same in binary
                                    (batchwire.MEDIA_TYPE): all or nothing (write)
PUT    /v1-admin/policy/{bucket}/{key}  {"policy": "..."}: re-encode (admin)
GET    /v1-admin/stat/{bucket}/{key}    policy, version, fragment health per node (admin)
"""

from __future__ import annotations

import base64
import json

import anyio
from fastapi import Body, Depends, FastAPI, Header, Query, Request, Response

import securecloud
from securecloud.infra.web import PiecewiseResponse, make_app
from securecloud.services.kvs import batchwire, s3
from securecloud.services.kvs.apikeys import ApiKey, KeyStore, require
from securecloud.services.kvs.codec import ObjectMeta
from securecloud.services.kvs.errors import BadRequest
from securecloud.services.kvs.gateway import BatchOp, Gateway

MAX_OBJECT = 5 * 1024 * 1024 * 1024
SMALL_READ = 256 * 1024


def _headers(meta: ObjectMeta) -> dict[str, str]:
    return {
        "ETag": f'"{meta.etag}"',
        "X-Object-Version": str(meta.version),
        "X-Storage-Policy": meta.policy,
        "Content-Length": str(meta.size),
        "Content-Type": meta.content_type,
    }


def _summary(meta: ObjectMeta) -> dict:
    return {
        "key": meta.key,
        "size": meta.size,
        "etag": meta.etag,
        "version": meta.version,
        "policy": meta.policy,
        "modified_ms": meta.created_ms,
    }


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"operations": {"type": "array"}}},
                "example": {
                    "operations": [
                        {"op": "put", "key": "a", "data": "aGVsbG8=", "if_match": 0},
                        {"op": "delete", "key": "b"},
                    ]
                },
            },
            batchwire.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _json_operations(body: bytes) -> list[BatchOp]:
    """The JSON form: {"operations": [{"op": "put" | "delete", "key", "data" (base64),
    "policy", "if_match"}]}."""
    try:
        raw = json.loads(body).get("operations")
    except (ValueError, AttributeError):
        raise BadRequest(
            f"body: expected JSON with operations, or content type {batchwire.MEDIA_TYPE}",
            reason="bad-batch",
        ) from None
    if not isinstance(raw, list):
        raise BadRequest("operations: expected a list", reason="bad-batch")
    operations = []
    for i, entry in enumerate(raw):
        try:
            kind = entry["op"]
            if kind not in ("put", "delete"):
                raise ValueError("op must be put or delete")
            if_match = entry.get("if_match")
            if if_match is not None and (
                not isinstance(if_match, int) or isinstance(if_match, bool)
            ):
                raise ValueError("if_match must be a version number")
            operations.append(
                BatchOp(
                    key=str(entry["key"]),
                    data=base64.b64decode(entry.get("data", ""), validate=True),
                    delete=kind == "delete",
                    policy=entry.get("policy"),
                    if_match=if_match,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"operations[{i}]: {exc}", reason="bad-batch") from exc
    return operations


def create_app(gateway: Gateway, keys: KeyStore) -> FastAPI:
    app = make_app(
        "securecloud KVS gateway",
        securecloud.__version__,
        health=lambda: {"nodes": len(gateway.nodes), "buckets": len(gateway.index.buckets)},
        description="Confidential object store: encrypted, erasure-coded fragments.",
    )

    def caller(
        authorization: str = Header(default="", description="Bearer <id>:<secret>"),
    ) -> ApiKey:
        return keys.bearer(authorization)

    @app.get("/v1", tags=["buckets"])
    def list_buckets(key: ApiKey = Depends(caller)) -> dict:
        names = sorted(b for b in gateway.index.buckets if key.allows(b, "read"))
        return {"buckets": names}

    @app.put("/v1/{bucket}", tags=["buckets"])
    def create_bucket(bucket: str, key: ApiKey = Depends(caller)) -> dict:
        require(key, bucket, "admin")
        return {"bucket": bucket, "created": gateway.create_bucket(bucket)}

    @app.get("/v1/{bucket}", tags=["objects"])
    def list_objects(
        bucket: str,
        prefix: str = Query("", max_length=1024),
        start_after: str = Query("", max_length=1024),
        end: str | None = Query(None, max_length=1024),
        limit: int = Query(1000, ge=1, le=10000),
        key: ApiKey = Depends(caller),
    ) -> dict:
        require(key, bucket, "read")
        found = gateway.list(bucket, prefix, start_after, end, limit)
        return {
            "bucket": bucket,
            "objects": [_summary(m) for m in found],
            "truncated": len(found) == limit,
        }

    @app.put("/v1/{bucket}/{object_key:path}", tags=["objects"])
    async def put_object(
        request: Request,
        bucket: str,
        object_key: str,
        x_storage_policy: str | None = Header(None, max_length=64),
        if_match: str | None = Header(None, max_length=32),
        content_type: str = Header("application/octet-stream", max_length=256),
        key: ApiKey = Depends(caller),
    ) -> dict:
        require(key, bucket, "write")
        expected = None
        if if_match is not None:
            try:
                expected = int(if_match.strip('"'))
            except ValueError:
                raise BadRequest(
                    "If-Match: expected an object version number", reason="bad-if-match"
                ) from None
        data = await request.body()
        if len(data) > MAX_OBJECT:
            raise BadRequest("object larger than 5 GiB", reason="too-large")
        meta = await anyio.to_thread.run_sync(
            lambda: gateway.put(
                bucket,
                object_key,
                data,
                policy=x_storage_policy,
                if_match=expected,
                content_type=content_type,
            )
        )
        return _summary(meta)

    @app.get("/v1/{bucket}/{object_key:path}", tags=["objects"])
    async def get_object(bucket: str, object_key: str, key: ApiKey = Depends(caller)) -> Response:
        require(key, bucket, "read")
        # Small objects on local pack stores are read on the event loop (a page-cache read
        # and microseconds of crypto); anything else in a worker thread, so a large object
        # or a slow remote node never stalls other requests.
        if gateway.local_reads and gateway.head(bucket, object_key).size < SMALL_READ:
            meta, data = gateway.get(bucket, object_key)
        else:
            meta, data = await anyio.to_thread.run_sync(gateway.get, bucket, object_key)
        return PiecewiseResponse(data, headers=_headers(meta), media_type=meta.content_type)

    @app.head("/v1/{bucket}/{object_key:path}", tags=["objects"])
    def head_object(bucket: str, object_key: str, key: ApiKey = Depends(caller)) -> Response:
        require(key, bucket, "read")
        return Response(headers=_headers(gateway.head(bucket, object_key)))

    @app.delete("/v1/{bucket}/{object_key:path}", status_code=204, tags=["objects"])
    def delete_object(bucket: str, object_key: str, key: ApiKey = Depends(caller)) -> Response:
        require(key, bucket, "write")
        gateway.delete(bucket, object_key)
        return Response(status_code=204)

    @app.post("/v1-batch/{bucket}", tags=["objects"], openapi_extra=_BATCH_BODY)
    async def batch(request: Request, bucket: str, key: ApiKey = Depends(caller)) -> dict:
        """Puts and deletes, visible together or not at all: JSON (data base64) or the
        binary form (batchwire, what the platform's own clients send)."""
        require(key, bucket, "write")
        body = await request.body()
        if request.headers.get("content-type", "").startswith(batchwire.MEDIA_TYPE):
            try:
                operations = [BatchOp(**o._asdict()) for o in batchwire.decode(body)]
            except batchwire.BatchFormatError as exc:
                raise BadRequest(str(exc), reason="bad-batch") from None
        else:
            operations = _json_operations(body)
        done = await anyio.to_thread.run_sync(gateway.batch, bucket, operations)
        return {
            "bucket": bucket,
            "objects": [_summary(m) | {"deleted": m.deleted} for m in done],
        }

    @app.put("/v1-admin/policy/{bucket}/{object_key:path}", tags=["admin"])
    def set_policy(
        bucket: str,
        object_key: str,
        body: dict = Body(examples=[{"policy": "ec:6+3"}]),
        key: ApiKey = Depends(caller),
    ) -> dict:
        require(key, bucket, "admin")
        policy = body.get("policy")
        if not isinstance(policy, str):
            raise BadRequest("policy: expected a string such as ec:6+3", reason="bad-policy")
        return _summary(gateway.set_policy(bucket, object_key, policy))

    @app.post("/v1-admin/scrub", tags=["admin"])
    def scrub(sample: float = Query(1.0, gt=0, le=1), key: ApiKey = Depends(caller)) -> dict:
        require(key, None, "admin")
        return gateway.scrub(sample)

    @app.post("/v1-admin/rebuild-index", tags=["admin"])
    def rebuild_index(key: ApiKey = Depends(caller)) -> dict:
        require(key, None, "admin")
        return gateway.rebuild_index()

    @app.get("/v1-admin/stat/{bucket}/{object_key:path}", tags=["admin"])
    def stat(bucket: str, object_key: str, key: ApiKey = Depends(caller)) -> dict:
        require(key, bucket, "admin")
        meta, health = gateway.stat(bucket, object_key)
        return {
            **_summary(meta),
            "fragments": [{"index": h.index, "node": h.node, "state": h.state} for h in health],
        }

    s3.install(app, gateway, keys)  # last: its routes match any /{bucket}/{key}
    return app
