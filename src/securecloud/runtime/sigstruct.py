"""Signed service identity: the SIGSTRUCT analogue that gives MRSIGNER.

A vendor signs {mrenclave, isv_prod_id, isv_svn} with its key. The platform
(LAS) only reports a signer, product id and security version for code whose
measurement the signature covers; MRSIGNER is the key's fingerprint (SHA-256 of
its SubjectPublicKeyInfo). Policies can then accept "any code signed by this
vendor with isv_svn >= N" instead of listing every measurement.

File format: canonical JSON
  {"body": {"mrenclave": hex, "isv_prod_id": int, "isv_svn": int},
   "signer": <PEM public key>, "signature": <hex signature over canonical(body)>}
"""

from __future__ import annotations

from dataclasses import dataclass

from securecloud.crypto import (
    CryptoError,
    canonical,
    fingerprint,
    load_public_key_pem,
    public_key_pem,
    sign,
    verify,
)
from securecloud.runtime.errors import AttestationError

UNSIGNED_MRSIGNER = "0" * 64


@dataclass(frozen=True)
class SigStruct:
    mrenclave: str
    isv_prod_id: int
    isv_svn: int
    signer_pem: str
    signature: str

    def body(self) -> dict:
        return {
            "mrenclave": self.mrenclave,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
        }

    def to_bytes(self) -> bytes:
        return canonical.encode(
            {"body": self.body(), "signer": self.signer_pem, "signature": self.signature}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SigStruct:
        try:
            doc = canonical.decode(data)
            body = doc["body"]
            return cls(
                mrenclave=str(body["mrenclave"]),
                isv_prod_id=int(body["isv_prod_id"]),
                isv_svn=int(body["isv_svn"]),
                signer_pem=str(doc["signer"]),
                signature=str(doc["signature"]),
            )
        except (CryptoError, KeyError, TypeError, ValueError) as exc:
            raise AttestationError(f"not a sigstruct: {exc}") from exc

    def verified_mrsigner(self, measured: str) -> str:
        """The signer fingerprint, if the signature is good and covers `measured`."""
        if self.mrenclave != measured:
            raise AttestationError("sigstruct was signed for other code (mrenclave differs)")
        try:
            key = load_public_key_pem(self.signer_pem.encode())
            verify(key, canonical.encode(self.body()), bytes.fromhex(self.signature))
        except (CryptoError, ValueError) as exc:
            raise AttestationError(f"sigstruct signature does not verify: {exc}") from exc
        return fingerprint(key)


def sign_service(mrenclave: str, isv_prod_id: int, isv_svn: int, key) -> SigStruct:
    if not 0 <= isv_prod_id < 2**16 or not 0 <= isv_svn < 2**16:
        raise AttestationError("isv_prod_id and isv_svn must be in 0..65535")
    body = {"mrenclave": mrenclave, "isv_prod_id": isv_prod_id, "isv_svn": isv_svn}
    return SigStruct(
        mrenclave=mrenclave,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        signer_pem=public_key_pem(key.public_key()).decode(),
        signature=sign(key, canonical.encode(body)).hex(),
    )
