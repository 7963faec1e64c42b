"""The binary body of a KVS batch: the JSON form's operations without JSON or base64.

A CascaDB checkpoint sends its blocks in batches of up to 8 MiB; as JSON the data
travels base64-encoded, and encoding it (client) and decoding it (gateway) cost
more than the TLS that carries it (docs/kvs.md). Content type MEDIA_TYPE:

    body      = b"SCB1" | count (u32) | operation * count
    operation = kind (1 byte: b"P" put, b"D" delete)
              | key length (u16) | key (UTF-8)
              | if_match (i64; -1: none, 0: must not exist)
              | policy length (u8) | policy (ASCII; empty: the gateway's default)
              | data length (u64) | data          (puts only)

Integers are big-endian. A body that does not parse, or holds another number of
operations than it announces (a body cut between two), is refused whole: `decode`
raises BatchFormatError naming the operation and the field.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MEDIA_TYPE = "application/vnd.securecloud.batch"
_MAGIC = b"SCB1"
_HEAD = struct.Struct(">4sI")
_KEY = struct.Struct(">cH")
_IF_MATCH_POLICY = struct.Struct(">qB")
_DATA = struct.Struct(">Q")
_NO_VERSION = -1


class BatchFormatError(ValueError):
    """A binary batch body that does not follow the layout."""


class Operation(NamedTuple):
    delete: bool
    key: str
    data: bytes
    policy: str | None
    if_match: int | None


def encode(operations: list[dict]) -> bytes:
    """`operations` as the client's batch takes them: {"op": "put" | "delete", "key",
    "data" (puts), "policy", "if_match"}."""
    parts = [_HEAD.pack(_MAGIC, len(operations))]
    for op in operations:
        key = op["key"].encode()
        policy = (op.get("policy") or "").encode("ascii")
        if_match = op.get("if_match")
        put = op["op"] == "put"
        parts += [
            _KEY.pack(b"P" if put else b"D", len(key)),
            key,
            _IF_MATCH_POLICY.pack(_NO_VERSION if if_match is None else if_match, len(policy)),
            policy,
        ]
        if put:
            data = op["data"]
            parts += [_DATA.pack(len(data)), data]
    return b"".join(parts)


def decode(body: bytes) -> list[Operation]:
    if body[:4] != _MAGIC or len(body) < _HEAD.size:
        raise BatchFormatError(
            f"body: expected {_MAGIC!r} and a count first (content type {MEDIA_TYPE})"
        )
    _, count = _HEAD.unpack_from(body)
    view, at, out = memoryview(body), _HEAD.size, []
    while at < len(body) or len(out) < count:
        if len(out) == count:
            raise BatchFormatError(f"body: {len(body) - at} bytes after the {count} operations")
        where = f"operations[{len(out)}]"
        try:
            kind, size = _KEY.unpack_from(body, at)
            if kind not in (b"P", b"D"):
                raise BatchFormatError(f"{where}.op: {kind!r} is neither P (put) nor D (delete)")
            at += _KEY.size
            key = _take(view, at, size, f"{where}.key").decode()
            at += size
            if_match, size = _IF_MATCH_POLICY.unpack_from(body, at)
            at += _IF_MATCH_POLICY.size
            policy = _take(view, at, size, f"{where}.policy").decode("ascii")
            at += size
            data = b""
            if kind == b"P":
                (size,) = _DATA.unpack_from(body, at)
                at += _DATA.size
                data = _take(view, at, size, f"{where}.data")
                at += size
        except struct.error:
            raise BatchFormatError(f"{where}: cut short") from None
        except UnicodeDecodeError as exc:
            raise BatchFormatError(f"{where}: key or policy is not text: {exc}") from None
        if if_match < _NO_VERSION:
            raise BatchFormatError(f"{where}.if_match: {if_match} is not a version number")
        out.append(
            Operation(
                kind == b"D",
                key,
                data,
                policy or None,
                None if if_match == _NO_VERSION else if_match,
            )
        )
    return out


def _take(view: memoryview, at: int, size: int, field: str) -> bytes:
    if at + size > len(view):
        raise BatchFormatError(f"{field}: {size} bytes announced, {len(view) - at} left")
    return bytes(view[at : at + size])
