"""Signatures: Ed25519 and ECDSA P-256 (SHA-256, DER-encoded signatures).

Keys are the `cryptography` key objects; this module adds one calling
convention for both algorithms, PEM helpers and key fingerprints. A
fingerprint is the lowercase hex SHA-256 of the public key's
SubjectPublicKeyInfo DER encoding, so it names a key independently of any
certificate that carries it.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from securecloud.crypto.errors import FormatError, SignatureError

SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
VerifyKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
SigningAlgorithm = Literal["ed25519", "p256"]


def generate_signing_key(algorithm: SigningAlgorithm = "ed25519") -> SigningKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise FormatError(f"unknown signing algorithm {algorithm!r} (expected ed25519 or p256)")


def _check_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise FormatError(f"ECDSA keys must be on P-256, not {key.curve.name}")


def sign(key: SigningKey, data: bytes) -> bytes:
    """Sign `data` (Ed25519, or ECDSA P-256 with SHA-256)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    raise FormatError(f"{type(key).__name__} is not a signing key")


def verify(key: VerifyKey, data: bytes, signature: bytes) -> None:
    """Return if `signature` over `data` verifies under `key`; raise SignatureError otherwise."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return
        if isinstance(key, ec.EllipticCurvePublicKey):
            _check_curve(key)
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            return
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc
    raise FormatError(f"{type(key).__name__} is not a verification key")


def private_key_pem(key) -> bytes:
    """PKCS#8 PEM, unencrypted: callers seal it before it touches a disk."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key_pem(data: bytes):
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"not an unencrypted PEM private key: {exc}") from exc


def load_public_key_pem(data: bytes):
    try:
        return serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise FormatError(f"not a PEM public key: {exc}") from exc


def fingerprint(public_key) -> str:
    """Lowercase hex SHA-256 of the SubjectPublicKeyInfo DER of `public_key`."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()
