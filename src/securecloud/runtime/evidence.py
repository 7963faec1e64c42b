"""What attestation carries: evidence from an attester, claims from a verifier.

`report_data` is 64 bytes chosen by the attested code and signed into the
quote. Our binding (see docs/protocols.md)::

    report_data = SHA-512( b"securecloud/attest/v1\\x00" || label (32 bytes, zero padded)
                           || nonce (32 bytes) || SHA-256(ephemeral public key) )

so a quote proves this code asked for *this* CAS challenge and *this* key:
the nonce stops replay, the key hash stops a relay handing the secrets to
someone else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from securecloud.runtime.errors import AttestationError

REPORT_DATA_SIZE = 64
NONCE_SIZE = 32


def report_data_for(label: bytes, nonce: bytes, public_key: bytes) -> bytes:
    if len(label) > 32:
        raise AttestationError("report data label longer than 32 bytes")
    if len(nonce) != NONCE_SIZE:
        raise AttestationError(f"nonce must be {NONCE_SIZE} bytes")
    return hashlib.sha512(
        b"securecloud/attest/v1\x00"
        + label.ljust(32, b"\x00")
        + nonce
        + hashlib.sha256(public_key).digest()
    ).digest()


@dataclass(frozen=True)
class Evidence:
    """Backend-specific evidence: `kind` names the verifier, `payload` is its input."""

    kind: str
    payload: dict

    def to_json(self) -> dict:
        return {"kind": self.kind, "payload": self.payload}

    @classmethod
    def from_json(cls, doc: object) -> Evidence:
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
            raise AttestationError("evidence: expected an object with a string 'kind'")
        if not isinstance(doc.get("payload"), dict):
            raise AttestationError("evidence: 'payload' must be an object")
        return cls(kind=doc["kind"], payload=doc["payload"])


@dataclass(frozen=True)
class Claims:
    """What a verifier vouches for after checking evidence."""

    tee: str
    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    tcb_status: str
    report_data: bytes
    platform_id: str
    advisories: tuple[str, ...] = field(default_factory=tuple)
