"""Key derivation: HKDF-SHA256 (RFC 5869), the only way keys are derived from keys."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derive_key(secret: bytes, *, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    """Derive `length` bytes from `secret`; `info` names the purpose, so keys for
    different purposes never coincide even when derived from the same secret."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)
