"""Streaming AES-256-GCM for payloads too large to hold twice in memory.

The payload is cut into packages of 64 KiB of plaintext. This is the STREAM
construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): each package's nonce
carries its index and a flag that is 1 only on the final package, under a key
derived for this stream alone. Reordering changes an index, truncation loses
the final flag, splicing packages of another stream fails under its other key.

Byte layout (integers big-endian)::

    header:
      0      3    magic b"SES"
      3      1    format version, 0x01
      4      1    L = length of key id
      5      L    key id
      5+L    32   salt (random); stream key = HKDF-SHA256(key, salt,
                  info=b"securecloud/stream/v1")
    then packages, in order:
      ciphertext of min(64 KiB, rest) plaintext bytes, then 16-byte tag
      nonce  = 7 zero bytes || package index (4 bytes) || final flag (1 byte)
      aad    = header || caller's aad

Every package but the last holds exactly 64 KiB of plaintext; the last holds
0..64 KiB and is the only one with the final flag (an empty payload is one
empty final package). A stream has at most 2**32 packages (256 TiB).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securecloud.crypto.envelope import KEY_SIZE, TAG_SIZE
from securecloud.crypto.errors import FormatError, IntegrityError
from securecloud.crypto.kdf import derive_key

MAGIC = b"SES"
VERSION = 1
PACKAGE_SIZE = 64 * 1024
SALT_SIZE = 32
_INFO = b"securecloud/stream/v1"
_MAX_PACKAGES = 2**32


def _nonce(index: int, final: bool) -> bytes:
    if index >= _MAX_PACKAGES:
        raise FormatError("stream longer than 2**32 packages")
    return b"\x00" * 7 + struct.pack(">IB", index, 1 if final else 0)


def _chunks(source: Iterable[bytes]) -> Iterator[tuple[bytes | memoryview, bool]]:
    """Re-cut arbitrary input pieces into 64 KiB packages, flagging the last.

    Packages are views into the input (no copy of large pieces); only a tail
    shorter than a package is carried over to the next piece.
    """
    held: memoryview | None = None  # a full package, waiting to learn whether it is the last
    carry = b""
    for piece in source:
        if not piece:
            continue
        data = carry + bytes(piece) if carry else piece
        view, offset = memoryview(data), 0
        while len(view) - offset >= PACKAGE_SIZE:
            if held is not None:
                yield held, False
            held = view[offset : offset + PACKAGE_SIZE]
            offset += PACKAGE_SIZE
        carry = bytes(view[offset:])
    if carry:
        if held is not None:
            yield held, False
        yield carry, True
    elif held is not None:
        yield held, True
    else:
        yield b"", True


def seal_stream(
    key: bytes, source: Iterable[bytes], aad: bytes = b"", *, key_id: bytes = b""
) -> Iterator[bytes]:
    """Yield the header, then one sealed package per 64 KiB of `source`."""
    if len(key) != KEY_SIZE:
        raise FormatError(f"key must be {KEY_SIZE} bytes")
    if len(key_id) > 255:
        raise FormatError("key id longer than 255 bytes")
    salt = os.urandom(SALT_SIZE)
    header = MAGIC + struct.pack(">BB", VERSION, len(key_id)) + key_id + salt
    aead = AESGCM(derive_key(key, salt=salt, info=_INFO))
    yield header
    for index, (chunk, final) in enumerate(_chunks(source)):
        yield aead.encrypt(_nonce(index, final), chunk, header + aad)


def seal_bytes(key: bytes, payload: bytes, aad: bytes = b"", *, key_id: bytes = b"") -> bytes:
    """`seal_stream` over an in-memory payload, joined."""
    return b"".join(seal_stream(key, [payload], aad, key_id=key_id))


def _read_header(reader: BinaryIO) -> bytes:
    head = reader.read(5)
    if len(head) < 5 or head[:3] != MAGIC:
        raise FormatError("not a sealed stream (bad magic)")
    if head[3] != VERSION:
        raise FormatError(f"unsupported stream version {head[3]}")
    rest = reader.read(head[4] + SALT_SIZE)
    if len(rest) != head[4] + SALT_SIZE:
        raise FormatError("stream header is truncated")
    return head + rest


def open_stream(key: bytes, reader: BinaryIO, aad: bytes = b"") -> Iterator[bytes]:
    """Yield verified plaintext packages; raise IntegrityError on any tampering.

    A consumer must not act on the yielded data as complete until the iterator
    ends: truncation is only detectable at the end.
    """
    if len(key) != KEY_SIZE:
        raise FormatError(f"key must be {KEY_SIZE} bytes")
    header = _read_header(reader)
    salt = header[-SALT_SIZE:]
    aead = AESGCM(derive_key(key, salt=salt, info=_INFO))
    sealed_size = PACKAGE_SIZE + TAG_SIZE
    current = reader.read(sealed_size)
    index = 0
    while True:
        if len(current) < TAG_SIZE:
            raise IntegrityError("stream is truncated (no final package)")
        following = reader.read(sealed_size) if len(current) == sealed_size else b""
        final = not following
        try:
            yield aead.decrypt(_nonce(index, final), current, header + aad)
        except InvalidTag as exc:
            raise IntegrityError(
                f"package {index} does not authenticate (altered, reordered, spliced or truncated)"
            ) from exc
        if final:
            return
        current, index = following, index + 1


def open_bytes(key: bytes, blob: bytes | memoryview, aad: bytes = b"") -> bytearray:
    """What `open_stream` yields, joined, for a sealed stream in memory: every package
    is decrypted from the blob straight into one buffer, which is returned (the KVS
    opens every object it serves this way; copies of multi-MB objects cost more than
    the decryption)."""
    if len(key) != KEY_SIZE:
        raise FormatError(f"key must be {KEY_SIZE} bytes")
    view = memoryview(blob).cast("B")
    header = _read_header(io.BytesIO(view[: 5 + 255 + SALT_SIZE]))
    aead = AESGCM(derive_key(key, salt=header[-SALT_SIZE:], info=_INFO))
    sealed_size = PACKAGE_SIZE + TAG_SIZE
    rest = len(view) - len(header)
    count = max(1, -(-rest // sealed_size))
    if rest - (count - 1) * sealed_size < TAG_SIZE:
        raise IntegrityError("stream is truncated (no final package)")
    out = bytearray(rest - count * TAG_SIZE)
    written = memoryview(out)
    associated = header + aad
    for index in range(count):
        start = len(header) + index * sealed_size
        package = view[start : start + sealed_size]
        try:
            aead.decrypt_into(
                _nonce(index, index == count - 1),
                package,
                associated,
                written[index * PACKAGE_SIZE : index * PACKAGE_SIZE + len(package) - TAG_SIZE],
            )
        except InvalidTag as exc:
            raise IntegrityError(
                f"package {index} does not authenticate (altered, reordered, spliced or truncated)"
            ) from exc
    return out
