"""AWS Signature Version 4, as S3 clients (boto3, rclone) sign requests.

    canonical request = METHOD \\n URI \\n sorted query \\n signed headers (name:value\\n)
                        \\n signed header names \\n payload hash
    string to sign    = "AWS4-HMAC-SHA256" \\n amz-date \\n scope \\n SHA-256(canonical request)
    signing key       = HMAC chain "AWS4"+secret → date → region → "s3" → "aws4_request"

The payload hash is the hex SHA-256 of the body (checked), `UNSIGNED-PAYLOAD`,
or a streaming form: `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (aws-chunked body,
each chunk signed in a chain from the request's signature, all checked) or
`STREAMING-UNSIGNED-PAYLOAD-TRAILER` (aws-chunked, checksum trailer). Requests
more than 15 minutes from our clock are refused (replay window).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from securecloud.crypto import mac
from securecloud.services.kvs.errors import KvsError

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, ?"
    r"SignedHeaders=([a-z0-9;\-]+), ?Signature=([0-9a-f]{64})$"
)
MAX_SKEW = dt.timedelta(minutes=15)


class SignatureInvalid(KvsError):
    status = 403
    reason = "SignatureDoesNotMatch"


@dataclass(frozen=True)
class Signed:
    access_key: str
    date: str
    region: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Signed | None:
    match = _AUTH.match(value.strip())
    if not match:
        return None
    key, date, region, headers, signature = match.groups()
    return Signed(key, date, region, tuple(headers.split(";")), signature)


def signing_key(secret: str, date: str, region: str) -> bytes:
    key = mac(("AWS4" + secret).encode(), date.encode())
    key = mac(key, region.encode())
    key = mac(key, b"s3")
    return mac(key, b"aws4_request")


def _canonical_query(query: str) -> str:
    pairs = []
    for part in query.split("&") if query else []:
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def verify(
    signed: Signed,
    secret: str,
    method: str,
    raw_path: str,
    query: str,
    headers: dict[str, str],
    now: dt.datetime | None = None,
) -> bytes:
    """Check the request signature; return the signing key (for chunk signatures)."""
    amz_date = headers.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise SignatureInvalid("x-amz-date missing or malformed", reason="AccessDenied") from None
    now = now or dt.datetime.now(dt.UTC)
    if abs(now - when) > MAX_SKEW:
        raise SignatureInvalid(
            "request time too far from the server's clock", reason="RequestTimeTooSkewed"
        )
    if not amz_date.startswith(signed.date) or "host" not in signed.signed_headers:
        raise SignatureInvalid("credential scope does not match the request date or host")
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed.signed_headers
    )
    canonical_request = "\n".join(
        [
            method,
            quote(unquote(raw_path), safe="/-_.~"),
            _canonical_query(query),
            canonical_headers,
            ";".join(signed.signed_headers),
            headers.get("x-amz-content-sha256", EMPTY_SHA256),
        ]
    )
    scope = f"{signed.date}/{signed.region}/s3/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = signing_key(secret, signed.date, signed.region)
    expected = mac(key, string_to_sign.encode()).hex()
    if not hmac.compare_digest(expected, signed.signature):
        raise SignatureInvalid(
            "the request signature does not match (wrong secret or altered request)"
        )
    return key


def decode_body(body: bytes, headers: dict[str, str], signed: Signed, key: bytes) -> bytes:
    """The payload, checked against its hash or unwrapped from aws-chunked."""
    declared = headers.get("x-amz-content-sha256", EMPTY_SHA256)
    if declared == "UNSIGNED-PAYLOAD":
        return body
    if declared.startswith("STREAMING-"):
        return _dechunk(body, declared, signed, key, headers.get("x-amz-date", ""))
    if hashlib.sha256(body).hexdigest() != declared:
        raise SignatureInvalid(
            "the body does not match x-amz-content-sha256", reason="XAmzContentSHA256Mismatch"
        )
    return body


def _dechunk(body: bytes, mode: str, signed: Signed, key: bytes, amz_date: str) -> bytes:
    signed_chunks = mode == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    if not signed_chunks and not mode.startswith("STREAMING-UNSIGNED-PAYLOAD"):
        raise KvsError(
            f"x-amz-content-sha256 {mode} is not supported", status=400, reason="NotImplemented"
        )
    scope = f"{signed.date}/{signed.region}/s3/aws4_request"
    previous = signed.signature
    out, position = bytearray(), 0
    while True:
        end = body.find(b"\r\n", position)
        if end < 0:
            raise KvsError("aws-chunked body is truncated", status=400, reason="IncompleteBody")
        size_text, _, extension = body[position:end].decode().partition(";")
        size = int(size_text, 16)
        data = body[end + 2 : end + 2 + size]
        if len(data) != size:
            raise KvsError("aws-chunked body is truncated", status=400, reason="IncompleteBody")
        if signed_chunks:
            signature = extension.partition("chunk-signature=")[2]
            to_sign = "\n".join(
                [
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    amz_date,
                    scope,
                    previous,
                    EMPTY_SHA256,
                    hashlib.sha256(data).hexdigest(),
                ]
            )
            if not hmac.compare_digest(mac(key, to_sign.encode()).hex(), signature):
                raise SignatureInvalid("a chunk signature does not match")
            previous = signature
        out += data
        position = end + 2 + size
        if size == 0:
            return bytes(out)  # trailers (checksums) follow; TLS protects them in transit
        if body[position : position + 2] == b"\r\n":
            position += 2
