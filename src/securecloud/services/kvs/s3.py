"""The S3-compatible API on the gateway's data: what boto3 and rclone need.

CreateBucket, HeadBucket, ListBuckets, GetBucketLocation, PutObject,
GetObject (with Range), HeadObject, DeleteObject, DeleteObjects,
ListObjectsV2 (prefix, delimiter, continuation token, start-after, max-keys)
and multipart upload (create, upload part, complete, abort), path-style
(`https://gateway/bucket/key`), authenticated with AWS Signature V4 where the
access key id and secret are a gateway API key's id and secret (same scopes).
Parts of unfinished multipart uploads are stored, encrypted like everything
else, in the internal bucket `securecloud-mpu`. Errors are S3's XML.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from email.utils import formatdate

import anyio
from fastapi import FastAPI, Request, Response

from securecloud.infra.web import PiecewiseResponse
from securecloud.services.kvs import sigv4
from securecloud.services.kvs.apikeys import ApiKey, KeyStore, Unauthorized, require
from securecloud.services.kvs.codec import ObjectMeta
from securecloud.services.kvs.errors import KvsError
from securecloud.services.kvs.gateway import Gateway

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MPU_BUCKET = "securecloud-mpu"
MAX_XML = 1 << 20
_CODES = {
    "no-such-bucket": ("NoSuchBucket", 404),
    "no-such-key": ("NoSuchKey", 404),
    "version-mismatch": ("PreconditionFailed", 412),
    "bad-credentials": ("InvalidAccessKeyId", 403),
    "access-denied": ("AccessDenied", 403),
    "quorum-lost": ("ServiceUnavailable", 503),
    "unreadable": ("ServiceUnavailable", 503),
    "bad-bucket": ("InvalidBucketName", 400),
    "bad-key": ("KeyTooLongError", 400),
    "bad-policy": ("InvalidArgument", 400),
    "no-such-upload": ("NoSuchUpload", 404),
    "bad-range": ("InvalidRange", 416),
    "invalid-part": ("InvalidPart", 400),
    "malformed": ("MalformedXML", 400),
}


def _xml(root: ET.Element, status: int = 200, headers: dict | None = None) -> Response:
    if root.tag != "Error":  # S3's error documents carry no namespace
        root.set("xmlns", NS)
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _error(exc: KvsError, resource: str) -> Response:
    code, status = _CODES.get(exc.reason, (exc.reason, exc.status))
    if exc.reason in (
        "SignatureDoesNotMatch",
        "RequestTimeTooSkewed",
        "AccessDenied",
        "XAmzContentSHA256Mismatch",
        "IncompleteBody",
        "NotImplemented",
    ):
        code, status = exc.reason, exc.status
    root = ET.Element("Error")
    _sub(root, "Code", code)
    _sub(root, "Message", str(exc))
    _sub(root, "Resource", resource)
    _sub(root, "RequestId", uuid.uuid4().hex)
    return _xml(root, status)


def _http_date(meta: ObjectMeta) -> str:
    return formatdate(meta.created_ms / 1000, usegmt=True)


def _iso(meta: ObjectMeta) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(meta.created_ms / 1000, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.groups() == ("", ""):
        raise KvsError(f"Range {header!r} is not bytes=a-b", status=416, reason="bad-range")
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    if start >= size or start > end:
        raise KvsError(f"Range {header!r} outside 0..{size - 1}", status=416, reason="bad-range")
    return start, end


def install(app: FastAPI, gateway: Gateway, keys: KeyStore) -> None:
    async def authenticate(request: Request) -> tuple[ApiKey, bytes]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        signed = sigv4.parse_authorization(headers.get("authorization", ""))
        if signed is None:
            raise Unauthorized("an AWS Signature V4 Authorization header is required")
        key = keys.keys.get(signed.access_key)
        if key is None:
            raise Unauthorized(f"unknown access key {signed.access_key!r}")
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode()
        query = request.scope.get("query_string", b"").decode()
        signing = sigv4.verify(signed, key.secret, request.method, raw_path, query, headers)
        body = await request.body()
        return key, sigv4.decode_body(body, headers, signed, signing)

    def blocking(func, *args):
        return anyio.to_thread.run_sync(lambda: func(*args))

    def ensure_mpu_bucket() -> None:
        if MPU_BUCKET not in gateway.index.buckets:
            gateway.create_bucket(MPU_BUCKET, internal=True)

    async def handle(request: Request, bucket: str | None, key: str | None) -> Response:
        resource = "/" + "/".join(p for p in (bucket, key) if p)
        try:
            caller, body = await authenticate(request)
            if bucket == MPU_BUCKET:
                raise KvsError(f"{MPU_BUCKET} is reserved", status=400, reason="bad-bucket")
            if bucket is None:
                return list_buckets(caller)
            if key is None:
                return await bucket_operation(request, caller, bucket, body)
            return await object_operation(request, caller, bucket, key, body)
        except KvsError as exc:
            return _error(exc, resource)

    def list_buckets(caller: ApiKey) -> Response:
        root = ET.Element("ListAllMyBucketsResult")
        owner = _sub(root, "Owner")
        _sub(owner, "ID", caller.tenant)
        _sub(owner, "DisplayName", caller.tenant)
        buckets = _sub(root, "Buckets")
        for name in sorted(gateway.index.buckets):
            if name != MPU_BUCKET and caller.allows(name, "read"):
                entry = _sub(buckets, "Bucket")
                _sub(entry, "Name", name)
                _sub(entry, "CreationDate", "2026-01-01T00:00:00.000Z")
        return _xml(root)

    async def bucket_operation(request, caller, bucket, body) -> Response:
        params = request.query_params
        method = request.method
        if method == "PUT":
            require(caller, bucket, "admin")
            await blocking(gateway.create_bucket, bucket)
            return Response(status_code=200, headers={"Location": f"/{bucket}"})
        if method == "HEAD":
            require(caller, bucket, "read")
            gateway._bucket(bucket)
            return Response(status_code=200)
        if method == "GET" and "location" in params:
            require(caller, bucket, "read")
            gateway._bucket(bucket)
            return _xml(ET.Element("LocationConstraint"))
        if method == "GET":
            require(caller, bucket, "read")
            return list_objects(bucket, params)
        if method == "POST" and "delete" in params:
            require(caller, bucket, "write")
            return await delete_objects(bucket, body)
        raise KvsError(
            f"{method} on a bucket is not supported", status=501, reason="NotImplemented"
        )

    def list_objects(bucket: str, params) -> Response:
        gateway._bucket(bucket)
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        max_keys = min(1000, max(0, int(params.get("max-keys", "1000") or 1000)))
        token = params.get("continuation-token")
        after = base64.urlsafe_b64decode(token).decode() if token else params.get("start-after", "")
        contents, prefixes, last, truncated = [], [], after, False
        while len(contents) + len(prefixes) < max_keys:
            batch = list(gateway.index.scan(bucket, prefix, last, None, max_keys + 1))
            if not batch:
                break
            for meta in batch:
                rest = meta.key[len(prefix) :]
                if delimiter and delimiter in rest:
                    common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                    if not prefixes or prefixes[-1] != common:
                        if len(contents) + len(prefixes) >= max_keys:
                            truncated = True
                            break
                        prefixes.append(common)
                    last = common + "\U0010ffff"
                    break
                if len(contents) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                contents.append(meta)
                last = meta.key
            else:
                continue
            if truncated:
                break
        if not truncated and len(contents) + len(prefixes) >= max_keys:
            truncated = bool(list(gateway.index.scan(bucket, prefix, last, None, 1)))
        root = ET.Element("ListBucketResult")
        _sub(root, "Name", bucket)
        _sub(root, "Prefix", prefix)
        if delimiter:
            _sub(root, "Delimiter", delimiter)
        _sub(root, "MaxKeys", str(max_keys))
        _sub(root, "KeyCount", str(len(contents) + len(prefixes)))
        _sub(root, "IsTruncated", "true" if truncated else "false")
        if token:
            _sub(root, "ContinuationToken", token)
        if truncated:
            _sub(root, "NextContinuationToken", base64.urlsafe_b64encode(last.encode()).decode())
        for meta in contents:
            entry = _sub(root, "Contents")
            _sub(entry, "Key", meta.key)
            _sub(entry, "LastModified", _iso(meta))
            _sub(entry, "ETag", f'"{meta.etag}"')
            _sub(entry, "Size", str(meta.size))
            _sub(entry, "StorageClass", "STANDARD")
        for common in prefixes:
            _sub(_sub(root, "CommonPrefixes"), "Prefix", common)
        return _xml(root)

    def _parse_xml(body: bytes) -> ET.Element:
        if len(body) > MAX_XML:
            raise KvsError("XML body too large", status=400, reason="malformed")
        try:
            return ET.fromstring(body)
        except ET.ParseError as exc:
            raise KvsError(f"malformed XML: {exc}", status=400, reason="malformed") from exc

    async def delete_objects(bucket: str, body: bytes) -> Response:
        root = ET.Element("DeleteResult")
        for obj in _parse_xml(body).iter(f"{{{NS}}}Object"):
            key = obj.findtext(f"{{{NS}}}Key", "")
            try:
                await blocking(gateway.delete, bucket, key)
            except KvsError as exc:
                if exc.reason != "no-such-key":
                    error = _sub(root, "Error")
                    _sub(error, "Key", key)
                    _sub(error, "Code", _CODES.get(exc.reason, (exc.reason, 0))[0])
                    _sub(error, "Message", str(exc))
                    continue
            _sub(_sub(root, "Deleted"), "Key", key)
        return _xml(root)

    async def object_operation(request, caller, bucket, key, body) -> Response:
        params, method = request.query_params, request.method
        if method == "PUT" and "uploadId" in params:
            require(caller, bucket, "write")
            return await upload_part(bucket, key, params, body)
        if method == "PUT":
            require(caller, bucket, "write")
            if "x-amz-copy-source" in request.headers:
                raise KvsError("CopyObject is not supported", status=501, reason="NotImplemented")
            policy = request.headers.get("x-amz-meta-storage-policy")
            content_type = request.headers.get("content-type", "application/octet-stream")
            meta = await blocking(
                lambda: gateway.put(bucket, key, body, policy=policy, content_type=content_type)
            )
            return Response(status_code=200, headers={"ETag": f'"{meta.etag}"'})
        if method in ("GET", "HEAD"):
            require(caller, bucket, "read")
            if method == "HEAD":
                meta, data = await blocking(gateway.head, bucket, key), b""
            else:
                meta, data = await blocking(gateway.get, bucket, key)
            headers = {
                "ETag": f'"{meta.etag}"',
                "Last-Modified": _http_date(meta),
                "Accept-Ranges": "bytes",
                "x-amz-version-id": str(meta.version),
                "x-amz-meta-storage-policy": meta.policy,
            }
            range_header = request.headers.get("range")
            if range_header and method == "GET":
                start, end = _parse_range(range_header, meta.size)
                headers["Content-Range"] = f"bytes {start}-{end}/{meta.size}"
                return Response(
                    bytes(memoryview(data)[start : end + 1]),
                    status_code=206,
                    headers=headers,
                    media_type=meta.content_type,
                )
            if method == "HEAD":
                headers["Content-Length"] = str(meta.size)
                return Response(status_code=200, headers=headers, media_type=meta.content_type)
            return PiecewiseResponse(data, headers=headers, media_type=meta.content_type)
        if method == "DELETE" and "uploadId" in params:
            require(caller, bucket, "write")
            await blocking(abort_upload, params["uploadId"])
            return Response(status_code=204)
        if method == "DELETE":
            require(caller, bucket, "write")
            try:
                await blocking(gateway.delete, bucket, key)
            except KvsError as exc:
                if exc.reason != "no-such-key":  # S3 deletes are idempotent
                    raise
            return Response(status_code=204)
        if method == "POST" and "uploads" in params:
            require(caller, bucket, "write")
            gateway._bucket(bucket)
            upload_id = uuid.uuid4().hex
            await blocking(ensure_mpu_bucket)
            await blocking(
                lambda: gateway.put(MPU_BUCKET, f"{upload_id}/target", f"{bucket}/{key}".encode())
            )
            root = ET.Element("InitiateMultipartUploadResult")
            _sub(root, "Bucket", bucket)
            _sub(root, "Key", key)
            _sub(root, "UploadId", upload_id)
            return _xml(root)
        if method == "POST" and "uploadId" in params:
            require(caller, bucket, "write")
            return await complete_upload(bucket, key, params["uploadId"], body)
        raise KvsError(
            f"{method} on an object is not supported", status=501, reason="NotImplemented"
        )

    def _upload_target(upload_id: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise KvsError("no such upload", status=404, reason="no-such-upload")
        try:
            return gateway.get(MPU_BUCKET, f"{upload_id}/target")[1].decode()
        except KvsError as exc:
            raise KvsError("no such upload", status=404, reason="no-such-upload") from exc

    async def upload_part(bucket, key, params, body) -> Response:
        upload_id = params["uploadId"]
        number = int(params.get("partNumber", "0") or 0)
        if not 1 <= number <= 10000:
            raise KvsError("partNumber must be 1..10000", status=400, reason="invalid-part")
        if await blocking(_upload_target, upload_id) != f"{bucket}/{key}":
            raise KvsError("upload belongs to another object", status=404, reason="no-such-upload")
        meta = await blocking(lambda: gateway.put(MPU_BUCKET, f"{upload_id}/{number:05d}", body))
        return Response(status_code=200, headers={"ETag": f'"{meta.etag}"'})

    async def complete_upload(bucket, key, upload_id, body) -> Response:
        if await blocking(_upload_target, upload_id) != f"{bucket}/{key}":
            raise KvsError("upload belongs to another object", status=404, reason="no-such-upload")
        parts = []
        for part in _parse_xml(body).iter(f"{{{NS}}}Part"):
            parts.append(
                (
                    int(part.findtext(f"{{{NS}}}PartNumber", "0")),
                    part.findtext(f"{{{NS}}}ETag", "").strip('"'),
                )
            )
        if not parts or [n for n, _ in parts] != sorted({n for n, _ in parts}):
            raise KvsError(
                "parts must be listed once each, in order", status=400, reason="invalid-part"
            )

        def assemble() -> ObjectMeta:
            data = bytearray()
            for number, etag in parts:
                meta, chunk = gateway.get(MPU_BUCKET, f"{upload_id}/{number:05d}")
                if meta.etag != etag:
                    raise KvsError(
                        f"part {number}: ETag differs", status=400, reason="invalid-part"
                    )
                data += chunk
            final = gateway.put(bucket, key, bytes(data))
            abort_upload(upload_id)
            return final

        final = await blocking(assemble)
        root = ET.Element("CompleteMultipartUploadResult")
        _sub(root, "Location", f"/{bucket}/{key}")
        _sub(root, "Bucket", bucket)
        _sub(root, "Key", key)
        _sub(root, "ETag", f'"{final.etag}"')
        return _xml(root)

    def abort_upload(upload_id: str) -> None:
        for meta in list(gateway.index.scan(MPU_BUCKET, f"{upload_id}/", "", None, 10001)):
            gateway.delete(MPU_BUCKET, meta.key)

    methods = ["GET", "PUT", "HEAD", "DELETE", "POST"]

    @app.api_route("/", methods=["GET"], include_in_schema=False)
    async def s3_root(request: Request) -> Response:
        return await handle(request, None, None)

    @app.api_route("/{bucket}", methods=methods, include_in_schema=False)
    async def s3_bucket(request: Request, bucket: str) -> Response:
        return await handle(request, bucket, None)

    @app.api_route("/{bucket}/{key:path}", methods=methods, include_in_schema=False)
    async def s3_object(request: Request, bucket: str, key: str) -> Response:
        return await handle(request, bucket, key)
