"""Public-key encryption to one recipient: RFC 9180 HPKE, base mode, single shot.

`encrypt_to(public_key, plaintext, aad)` uses cryptography's HPKE with
DHKEM(X25519 or P-256, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM. The caller's
`aad` is bound through HPKE's `info` (with our label), so a ciphertext only
opens with the same aad, as an AEAD's associated data would.

Byte layout::

    0   1   format version, 0x01
    1   1   KEM: 0x20 = DHKEM(X25519), 0x10 = DHKEM(P-256)  (RFC 9180 ids, low byte)
    2   ..  HPKE output: encapsulated key (32 or 65 bytes), then ciphertext and tag
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from securecloud.crypto.errors import FormatError, IntegrityError

VERSION = 1
_INFO = b"securecloud/hpke/v1\x00"
_KEMS = {0x20: hpke.KEM.X25519, 0x10: hpke.KEM.P256}


def _suite(kem_id: int) -> hpke.Suite:
    return hpke.Suite(_KEMS[kem_id], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _kem_id(key) -> int:
    if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
        return 0x20
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return 0x10
    raise FormatError(f"{type(key).__name__} cannot receive HPKE (need X25519 or P-256)")


def encrypt_to(public_key, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt `plaintext` so that only the holder of the private key opens it."""
    kem_id = _kem_id(public_key)
    body = _suite(kem_id).encrypt(plaintext, public_key, info=_INFO + aad)
    return bytes([VERSION, kem_id]) + body


def decrypt_with(private_key, blob: bytes, aad: bytes = b"") -> bytes:
    """Open a ciphertext of `encrypt_to`, with the same `aad`."""
    if len(blob) < 2 or blob[0] != VERSION:
        raise FormatError("not an HPKE ciphertext of version 1")
    kem_id = _kem_id(private_key)
    if blob[1] != kem_id:
        raise FormatError("ciphertext was made for a different key type")
    try:
        return _suite(kem_id).decrypt(blob[2:], private_key, info=_INFO + aad)
    except Exception as exc:  # the binding raises InvalidTag or ValueError on bad input
        raise IntegrityError("HPKE ciphertext does not open (wrong key, aad or altered)") from exc
