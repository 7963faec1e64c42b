"""The server name in a TLS ClientHello, read without terminating TLS.

A ClientHello may span several TLS records (RFC 8446 §5.1 lets a handshake
message be fragmented) and arrive in any number of TCP segments. `read_hello`
collects records until the whole handshake message is there, within a byte cap
(16 KiB) and a deadline, and returns every byte it read, so the router can
forward them unchanged. `server_name` parses the message (RFC 8446 §4.1.2,
extension server_name of RFC 6066 §3).
"""

from __future__ import annotations

import asyncio

MAX_HELLO = 16 * 1024
HANDSHAKE, CLIENT_HELLO, SERVER_NAME, HOST_NAME = 22, 1, 0, 0


class HelloError(ValueError):
    """Not a ClientHello we can route: the reason is in the message."""


def handshake_bytes(records: bytes) -> tuple[bytes, bool]:
    """The handshake payload of the complete records at the start of `records`, up to
    the end of the ClientHello, and whether the ClientHello is complete. What follows
    it (a compatibility ChangeCipherSpec, say) is not looked at."""
    out, at = bytearray(), 0
    while len(records) - at >= 5:
        kind, length = records[at], int.from_bytes(records[at + 3 : at + 5], "big")
        if kind != HANDSHAKE:
            raise HelloError(f"record type {kind}, expected a handshake (22)")
        if records[at + 1] != 3:
            raise HelloError("not a TLS record (version major is not 3)")
        if length == 0 or length > MAX_HELLO:
            raise HelloError(f"record length {length}")
        if len(records) - at - 5 < length:
            break
        out += records[at + 5 : at + 5 + length]
        at += 5 + length
        if len(out) >= 4:
            if out[0] != CLIENT_HELLO:
                raise HelloError(f"handshake type {out[0]}, expected ClientHello (1)")
            if len(out) >= 4 + int.from_bytes(out[1:4], "big"):
                return bytes(out), True
    return bytes(out), False


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise HelloError("ClientHello is truncated")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))


def server_name(records: bytes) -> str | None:
    """The host name of the SNI extension, or None when the hello carries none."""
    payload, _ = handshake_bytes(records)
    r = _Reader(payload)
    if r.number(1) != CLIENT_HELLO:
        raise HelloError("not a ClientHello")
    body = _Reader(r.take(r.number(3)))
    body.take(2 + 32)  # legacy_version, random
    body.vector(1)  # legacy_session_id
    body.vector(2)  # cipher_suites
    body.vector(1)  # legacy_compression_methods
    if body.at == len(body.data):
        return None  # no extensions at all
    extensions = _Reader(body.vector(2))
    while extensions.at < len(extensions.data):
        kind, data = extensions.number(2), extensions.vector(2)
        if kind != SERVER_NAME:
            continue
        names = _Reader(_Reader(data).vector(2))
        while names.at < len(names.data):
            name_type, name = names.number(1), names.vector(2)
            if name_type == HOST_NAME:
                try:
                    return name.decode("ascii")
                except UnicodeDecodeError:
                    raise HelloError("server name is not ASCII") from None
        return None
    return None


async def read_hello(reader: asyncio.StreamReader, deadline: float) -> bytes:
    """Every byte up to the end of the ClientHello (raises HelloError or TimeoutError)."""
    buffer = bytearray()
    async with asyncio.timeout(deadline):
        while not handshake_bytes(bytes(buffer))[1]:
            if len(buffer) >= MAX_HELLO:
                raise HelloError(f"no complete ClientHello in {MAX_HELLO} bytes")
            chunk = await reader.read(MAX_HELLO - len(buffer))
            if not chunk:
                raise HelloError("connection closed before the ClientHello ended")
            buffer += chunk
    return bytes(buffer)
