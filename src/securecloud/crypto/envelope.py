"""AES-256-GCM envelope: `seal` / `open_sealed` for messages that fit in memory.

Byte layout (all integers big-endian)::

    offset  size  field
    0       2     magic  b"SE"
    2       1     format version, 0x01
    3       1     L = length of key id (0..255)
    4       L     key id: which key sealed it (a label, never the key)
    4+L     12    nonce, random per message
    16+L    n+16  AES-256-GCM ciphertext of the n plaintext bytes, then the tag

The GCM associated data is the header (bytes 0 .. 16+L) followed by the
caller's `aad`; so the version, the key id and the caller's context (for
example a bucket and object name) are all authenticated and a ciphertext moved
to another context does not open. Random 96-bit nonces bound one key to about
2**32 messages; callers with more derive per-object keys.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securecloud.crypto.errors import FormatError, IntegrityError

MAGIC = b"SE"
VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(KEY_SIZE)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise FormatError(f"key must be {KEY_SIZE} bytes, got {len(key)}")


def seal(key: bytes, plaintext: bytes, aad: bytes = b"", *, key_id: bytes = b"") -> bytes:
    """Encrypt and authenticate `plaintext`, binding `aad` and `key_id`."""
    _check_key(key)
    if len(key_id) > 255:
        raise FormatError("key id longer than 255 bytes")
    header = MAGIC + struct.pack(">BB", VERSION, len(key_id)) + key_id + os.urandom(NONCE_SIZE)
    nonce = header[-NONCE_SIZE:]
    return header + AESGCM(key).encrypt(nonce, plaintext, header + aad)


def _split(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (header, key id, ciphertext) or raise FormatError."""
    if len(blob) < 4 or blob[:2] != MAGIC:
        raise FormatError("not a sealed envelope (bad magic)")
    version, id_len = blob[2], blob[3]
    if version != VERSION:
        raise FormatError(f"unsupported envelope version {version}")
    header_len = 4 + id_len + NONCE_SIZE
    if len(blob) < header_len + TAG_SIZE:
        raise FormatError("envelope is truncated")
    return blob[:header_len], blob[4 : 4 + id_len], blob[header_len:]


def envelope_key_id(blob: bytes) -> bytes:
    """The key id a sealed envelope names, to pick the key that opens it."""
    return _split(blob)[1]


def open_sealed(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Verify and decrypt an envelope made by `seal` with the same key and `aad`."""
    _check_key(key)
    header, _, ciphertext = _split(blob)
    try:
        return AESGCM(key).decrypt(header[-NONCE_SIZE:], ciphertext, header + aad)
    except InvalidTag as exc:
        raise IntegrityError("envelope does not authenticate (wrong key, aad or altered)") from exc
