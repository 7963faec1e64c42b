"""Message authentication: HMAC-SHA256, compared in constant time."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from securecloud.crypto.errors import IntegrityError

MAC_SIZE = 32


def mac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def verify_mac(key: bytes, data: bytes, tag: bytes) -> None:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    try:
        h.verify(tag)
    except InvalidSignature as exc:
        raise IntegrityError("MAC does not verify") from exc
