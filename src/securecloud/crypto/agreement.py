"""Key agreement: X25519 and ECDH on P-256, always followed by HKDF.

A raw Diffie-Hellman output is never used as a key: `agree` runs HKDF-SHA256
over it with both public keys in the salt and the caller's purpose as info,
so both sides get the same key and a key for one purpose is useless for
another.
"""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from securecloud.crypto.errors import FormatError
from securecloud.crypto.kdf import derive_key

AgreementKey = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey
AgreementPublicKey = x25519.X25519PublicKey | ec.EllipticCurvePublicKey
AgreementAlgorithm = Literal["x25519", "p256"]


def generate_agreement_key(algorithm: AgreementAlgorithm = "x25519") -> AgreementKey:
    if algorithm == "x25519":
        return x25519.X25519PrivateKey.generate()
    if algorithm == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise FormatError(f"unknown agreement algorithm {algorithm!r} (expected x25519 or p256)")


def public_bytes(key: AgreementPublicKey) -> bytes:
    """Raw X25519 (32 bytes) or uncompressed P-256 point (65 bytes)."""
    if isinstance(key, x25519.X25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    raise FormatError(f"{type(key).__name__} is not an agreement public key")


def load_public_bytes(data: bytes) -> AgreementPublicKey:
    """Inverse of `public_bytes`, choosing the algorithm by length."""
    try:
        if len(data) == 32:
            return x25519.X25519PublicKey.from_public_bytes(data)
        if len(data) == 65:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError as exc:
        raise FormatError(f"invalid agreement public key: {exc}") from exc
    raise FormatError(f"agreement public key of {len(data)} bytes (expected 32 or 65)")


def agree(private_key: AgreementKey, peer: AgreementPublicKey, *, info: bytes) -> bytes:
    """A 32-byte key shared with the holder of `peer`'s private key, for purpose `info`."""
    if isinstance(private_key, x25519.X25519PrivateKey) and isinstance(
        peer, x25519.X25519PublicKey
    ):
        shared = private_key.exchange(peer)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
        peer, ec.EllipticCurvePublicKey
    ):
        if not isinstance(peer.curve, ec.SECP256R1):
            raise FormatError("P-256 agreement needs a P-256 peer key")
        shared = private_key.exchange(ec.ECDH(), peer)
    else:
        raise FormatError("private and peer keys are of different algorithms")
    mine, theirs = public_bytes(private_key.public_key()), public_bytes(peer)
    salt = min(mine, theirs) + max(mine, theirs)
    return derive_key(shared, salt=salt, info=info)
