"""Sealing: encrypt data so only the same code on the same platform opens it.

The sealing key is derived by the platform, never chosen by the code:
HKDF-SHA256(platform seal root, salt = platform id,
info = b"securecloud/seal/v1/" || mrenclave). In `sim` mode the LAS holds the
seal root and hands the derived key to the caller encrypted to an ephemeral
key (as EGETKEY would return it inside the enclave); so a process that names
other code gets other code's key (no isolation in simulation, see
docs/threat-model.md), but changed code or another platform never opens data
sealed before.

A sealed blob is a crypto envelope whose key id is b"seal:" + the first 8
bytes of mrenclave and platform id (hex), and whose associated data starts
with b"securecloud/sealed\\x00".
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from securecloud.crypto import (
    CryptoError,
    decrypt_with,
    derive_key,
    generate_agreement_key,
    open_sealed,
    seal,
)
from securecloud.crypto.agreement import public_bytes
from securecloud.runtime.errors import SealingError

_AAD = b"securecloud/sealed\x00"


def derive_sealing_key(seal_root: bytes, platform_id: str, mrenclave: str) -> bytes:
    """Platform side (LAS): the key of code `mrenclave` on this platform."""
    return derive_key(
        seal_root,
        salt=bytes.fromhex(platform_id),
        info=b"securecloud/seal/v1/" + bytes.fromhex(mrenclave),
    )


@dataclass(frozen=True)
class Sealer:
    key: bytes
    mrenclave: str
    platform_id: str

    @property
    def key_id(self) -> bytes:
        return f"seal:{self.mrenclave[:16]}:{self.platform_id[:16]}".encode()

    def seal(self, data: bytes, aad: bytes = b"") -> bytes:
        return seal(self.key, data, _AAD + aad, key_id=self.key_id)

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        try:
            return open_sealed(self.key, blob, _AAD + aad)
        except CryptoError as exc:
            raise SealingError(
                "sealed data does not open: other code, other platform, or altered"
            ) from exc

    @classmethod
    def from_las(cls, las_url: str, service: str, sigstruct: bytes | None = None) -> Sealer:
        """Ask the LAS for the sealing key of `service` as measured now."""
        ephemeral = generate_agreement_key()
        request = {"service": service, "public_key": public_bytes(ephemeral.public_key()).hex()}
        if sigstruct is not None:
            request["sigstruct"] = sigstruct.decode()
        try:
            response = httpx.post(f"{las_url.rstrip('/')}/v1/seal-key", json=request, timeout=10)
        except httpx.HTTPError as exc:
            raise SealingError(f"LAS at {las_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise SealingError(f"LAS refused the sealing key: {response.text}")
        doc = response.json()
        key = decrypt_with(ephemeral, bytes.fromhex(doc["wrapped_key"]), b"seal-key")
        return cls(key=key, mrenclave=doc["mrenclave"], platform_id=doc["platform_id"])
