"""LAS HTTP API: quotes and sealing keys for code it measures itself.

The LAS measures the named service from the files on disk (it does not take
the caller's word for a measurement) and signs a quote with the platform key.
It listens on loopback only, as the AESM socket would.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, Field

import securecloud
from securecloud.crypto import encrypt_to
from securecloud.crypto.agreement import load_public_bytes
from securecloud.crypto.errors import CryptoError
from securecloud.infra.api_client import ServiceError
from securecloud.infra.las.platform import Platform
from securecloud.infra.web import make_app
from securecloud.runtime.errors import EnclaveError
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.runtime.sealing import derive_sealing_key
from securecloud.runtime.sigstruct import UNSIGNED_MRSIGNER, SigStruct
from securecloud.runtime.sim import TEE, sign_quote


class QuoteRequest(BaseModel):
    service: str = Field(
        min_length=1, max_length=4096, description="registered name or manifest path"
    )
    report_data: str = Field(pattern=r"^[0-9a-f]{128}$", description="64 bytes, lowercase hex")
    sigstruct: str | None = Field(default=None, max_length=65536)


class SealKeyRequest(BaseModel):
    service: str = Field(min_length=1, max_length=4096)
    public_key: str = Field(pattern=r"^[0-9a-f]{64}([0-9a-f]{66})?$", description="X25519 or P-256")
    sigstruct: str | None = Field(default=None, max_length=65536)


class LasError(ServiceError):
    reason = "las"


def _identity(platform: Platform, service: str, sigstruct: str | None) -> dict:
    try:
        manifest = load_manifest(service)
        mrenclave = measure(manifest)
    except EnclaveError as exc:
        raise LasError(str(exc), reason="unknown-service", status=404) from exc
    identity = {
        "mrenclave": mrenclave,
        "mrsigner": UNSIGNED_MRSIGNER,
        "isv_prod_id": 0,
        "isv_svn": 0,
        "debug": manifest.debug,
    }
    if sigstruct is not None:
        try:
            signed = SigStruct.from_bytes(sigstruct.encode())
            identity["mrsigner"] = signed.verified_mrsigner(mrenclave)
        except EnclaveError as exc:
            raise LasError(str(exc), reason="bad-sigstruct") from exc
        identity["isv_prod_id"], identity["isv_svn"] = signed.isv_prod_id, signed.isv_svn
    return identity


def create_app(platform: Platform) -> FastAPI:
    app = make_app(
        "securecloud LAS",
        securecloud.__version__,
        health=lambda: {"platform_id": platform.platform_id, "tee": TEE},
        description="Simulated local attestation: quotes and sealing keys. No hardware isolation.",
    )

    @app.get("/v1/platform")
    async def platform_info() -> dict:
        return {
            "platform_id": platform.platform_id,
            "public_key": platform.public_key_pem.decode(),
            "tee": TEE,
            "tcb_status": platform.tcb_status,
        }

    @app.post("/v1/quote")
    async def quote(request: QuoteRequest) -> dict:
        identity = _identity(platform, request.service, request.sigstruct)
        body = {
            **identity,
            "tcb_status": platform.tcb_status,
            "advisories": list(platform.advisories),
            "report_data": request.report_data,
        }
        return sign_quote(platform.signing_key, body).to_json()

    @app.post("/v1/seal-key")
    async def seal_key(request: SealKeyRequest) -> dict:
        identity = _identity(platform, request.service, request.sigstruct)
        try:
            recipient = load_public_bytes(bytes.fromhex(request.public_key))
        except CryptoError as exc:
            raise LasError(f"public_key: {exc}", reason="invalid-request") from exc
        key = derive_sealing_key(platform.seal_root, platform.platform_id, identity["mrenclave"])
        return {
            "mrenclave": identity["mrenclave"],
            "platform_id": platform.platform_id,
            "wrapped_key": encrypt_to(recipient, key, b"seal-key").hex(),
        }

    return app
