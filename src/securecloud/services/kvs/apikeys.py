"""API keys per tenant, with scopes per bucket.

The key store is a JSON document the gateway receives from CAS (an injected
file), so keys never sit on the gateway's disk in clear::

    {"keys": [{"id": "metering-ingest", "secret": "<random>", "tenant": "utility",
               "scopes": {"readings": ["read", "write"], "*": ["read"]}}]}

Scopes: `read` (GET, HEAD, list), `write` (PUT, DELETE), `admin` (create a
bucket, change an object's policy); a bucket name or `*` for all. The native
API takes `Authorization: Bearer <id>:<secret>`.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from securecloud.services.kvs.errors import KvsError

SCOPES = ("read", "write", "admin")


class Unauthorized(KvsError):
    status = 401
    reason = "bad-credentials"


class Forbidden(KvsError):
    status = 403
    reason = "access-denied"


@dataclass(frozen=True)
class ApiKey:
    id: str
    secret: str
    tenant: str
    scopes: dict[str, tuple[str, ...]]

    def allows(self, bucket: str | None, scope: str) -> bool:
        granted = set(self.scopes.get("*", ()))
        if bucket is not None:
            granted |= set(self.scopes.get(bucket, ()))
        return scope in granted


class KeyStore:
    def __init__(self, keys: list[ApiKey]):
        self.keys = {k.id: k for k in keys}

    @classmethod
    def from_json(cls, text: str) -> KeyStore:
        try:
            doc = json.loads(text)
            keys = []
            for i, entry in enumerate(doc["keys"]):
                scopes = {b: tuple(s) for b, s in entry.get("scopes", {}).items()}
                for bucket, granted in scopes.items():
                    unknown = set(granted) - set(SCOPES)
                    if unknown:
                        raise ValueError(f"keys[{i}].scopes.{bucket}: unknown {sorted(unknown)}")
                keys.append(
                    ApiKey(
                        str(entry["id"]),
                        str(entry["secret"]),
                        str(entry.get("tenant", entry["id"])),
                        scopes,
                    )
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise KvsError(
                f"API key store is invalid: {exc}", status=500, reason="bad-key-store"
            ) from exc
        return cls(keys)

    def authenticate(self, key_id: str, secret: str) -> ApiKey:
        key = self.keys.get(key_id)
        # compare against something even for unknown ids, so timing says nothing
        expected = key.secret if key else "x" * 32
        if not hmac.compare_digest(expected.encode(), secret.encode()) or key is None:
            raise Unauthorized("unknown API key or wrong secret")
        return key

    def bearer(self, authorization: str) -> ApiKey:
        scheme, _, credentials = authorization.partition(" ")
        key_id, _, secret = credentials.partition(":")
        if scheme.lower() != "bearer" or not key_id or not secret:
            raise Unauthorized("send Authorization: Bearer <key id>:<secret>")
        return self.authenticate(key_id, secret)


def require(key: ApiKey, bucket: str | None, scope: str) -> None:
    if not key.allows(bucket, scope):
        where = f"bucket {bucket!r}" if bucket else "this gateway"
        raise Forbidden(f"API key {key.id!r} has no {scope} scope on {where}")
