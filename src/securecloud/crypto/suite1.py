"""DLMS/COSEM security suite 1 recipes for the meter protocol.

Suite 1 is ECDH and ECDSA on P-256, AES-128/256-GCM and SHA-256. We use:

- Key agreement, static-static ("Static Unified Model" in DLMS terms):
  Z = ECDH(meter key, authenticator key), run through HKDF by `agree` with both
  public keys in the salt. Z never changes for a meter; each session mixes in a
  fresh 8-byte session id chosen by the authenticator:

      keys = HKDF(Z, salt=session_id, info="securecloud meter session v1" || meter_id(4))
      uplink key = keys[0:32]   (AES-256-GCM, meter -> platform)
      ack key    = keys[32:64]  (HMAC-SHA256/128 over acknowledgements)

  Any authenticator holding the authenticator key derives the same keys from
  the frame alone, so sessions survive restarts and scale-out.
- Frame encryption: AES-256-GCM, IV = system title (8 bytes) || invocation
  counter (4 bytes, big endian), 16-byte tag, associated data = the frame
  header. A meter never reuses an invocation counter (it persists them), so an
  IV is never reused under one key.
- Acknowledgements are HMAC-SHA256 truncated to 16 bytes: deterministic, so an
  acknowledgement sent twice for a redelivered frame reuses nothing.
- Handshake signatures: ECDSA P-256 / SHA-256 as raw r || s (64 bytes), the
  fixed-size encoding DLMS uses, so frames keep a fixed size.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securecloud.crypto.agreement import agree
from securecloud.crypto.errors import FormatError, IntegrityError, SignatureError
from securecloud.crypto.kdf import derive_key

SIGNATURE_SIZE = 64
TAG_SIZE = 16
ACK_TAG_SIZE = 16
SESSION_ID_SIZE = 8
SYSTEM_TITLE_SIZE = 8
STATIC_INFO = b"securecloud meter static v1"
SESSION_INFO = b"securecloud meter session v1"


def generate_meter_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def meter_key_from_scalar(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from its 32-byte big-endian scalar (how meter keys are stored)."""
    if len(scalar) != 32:
        raise FormatError(f"P-256 private scalar of {len(scalar)} bytes (expected 32)")
    return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())


def scalar_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(32, "big")


def static_secret(
    private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey
) -> bytes:
    """Z: the long-term secret of one meter and the authenticator (same on both sides)."""
    return agree(private_key, peer, info=STATIC_INFO)


@dataclass(frozen=True)
class SessionKeys:
    uplink: AESGCM
    ack_key: bytes
    # The ack key already absorbed into an HMAC state: a tag copies it (0.8 us)
    # instead of keying a new one (2.2 us); one tag per reading on both sides.
    _ack_mac: crypto_hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ack_mac", crypto_hmac.HMAC(self.ack_key, hashes.SHA256()))


def session_keys(static: bytes, session_id: bytes, meter_id: int) -> SessionKeys:
    if len(session_id) != SESSION_ID_SIZE:
        raise FormatError(f"session id of {len(session_id)} bytes (expected {SESSION_ID_SIZE})")
    keys = derive_key(
        static, salt=session_id, info=SESSION_INFO + meter_id.to_bytes(4, "big"), length=64
    )
    return SessionKeys(AESGCM(keys[:32]), keys[32:])


def _iv(system_title: bytes, invocation_counter: int) -> bytes:
    if len(system_title) != SYSTEM_TITLE_SIZE:
        raise FormatError(f"system title of {len(system_title)} bytes (expected 8)")
    return system_title + invocation_counter.to_bytes(4, "big")


def encrypt_frame(
    keys: SessionKeys, system_title: bytes, invocation_counter: int, aad: bytes, plaintext: bytes
) -> bytes:
    """Ciphertext || 16-byte tag."""
    return keys.uplink.encrypt(_iv(system_title, invocation_counter), plaintext, aad)


def decrypt_frame(
    keys: SessionKeys, system_title: bytes, invocation_counter: int, aad: bytes, sealed: bytes
) -> bytes:
    try:
        return keys.uplink.decrypt(_iv(system_title, invocation_counter), sealed, aad)
    except InvalidTag as exc:
        raise IntegrityError("frame does not authenticate") from exc


def ack_tag(keys: SessionKeys, data: bytes) -> bytes:
    mac = keys._ack_mac.copy()
    mac.update(data)
    return mac.finalize()[:ACK_TAG_SIZE]


def check_ack_tag(keys: SessionKeys, data: bytes, tag: bytes) -> None:
    if not hmac.compare_digest(ack_tag(keys, data), tag):
        raise IntegrityError("acknowledgement does not authenticate")


def sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_raw(key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> None:
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"signature of {len(signature)} bytes (expected 64)")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc
