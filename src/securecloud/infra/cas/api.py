"""CAS HTTP API (OpenAPI at /openapi.json).

Policy owners authenticate with a client certificate issued by this CAS
(`POST /v1/identities` turns a CSR into one); attesting services need none,
their evidence is their credential. Every error is JSON {"detail", "reason"}
with a 4xx status; the stable `reason` codes are listed in docs/cas.md.
"""

from __future__ import annotations

from fastapi import FastAPI, Path, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

import securecloud
from securecloud.infra.cas.ca import client_fingerprint
from securecloud.infra.cas.policy import NAME
from securecloud.infra.cas.service import Approval, Cas
from securecloud.infra.web import make_app, peer_certificate

_HEX = r"^[0-9a-f]+$"


class EnrollRequest(BaseModel):
    csr: str = Field(min_length=1, max_length=16384, description="PEM certificate signing request")


class EnrollResponse(BaseModel):
    certificate: str
    fingerprint: str
    ca: str


class ApprovalModel(BaseModel):
    certificate: str = Field(max_length=16384, description="approver's CAS-issued certificate")
    signature: str = Field(
        pattern=_HEX,
        max_length=1024,
        description="signature over the new policy's hash (see docs/cas.md)",
    )


class ApplyRequest(BaseModel):
    policy: str = Field(min_length=1, max_length=1_000_000, description="policy YAML text")
    approvals: list[ApprovalModel] = Field(default_factory=list, max_length=64)


class ApplyResponse(BaseModel):
    name: str
    hash: str
    version: int
    created: bool


class NonceResponse(BaseModel):
    nonce: str
    expires_in: int


class AttestRequest(BaseModel):
    config_id: str = Field(
        min_length=3, max_length=300, pattern=r"^[^/]+/[^/]+$", description="<session>/<service>"
    )
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    public_key: str = Field(
        pattern=r"^([0-9a-f]{64}|[0-9a-f]{130})$",
        description="ephemeral X25519 (32 bytes) or P-256 (65 bytes), hex",
    )
    evidence: dict = Field(description='{"kind": "sim"|"tsm", "payload": {...}}')


class AttestResponse(BaseModel):
    session: str
    session_hash: str
    service: str
    config: str


def _fingerprint(request: Request) -> str | None:
    der = peer_certificate(request)
    return client_fingerprint(der) if der else None


def create_app(cas: Cas) -> FastAPI:
    app = make_app(
        "securecloud CAS",
        securecloud.__version__,
        health=lambda: {"sessions": len(cas.sessions), "audit_seq": cas.audit.head.seq},
        description="Configuration and Attestation Service: policies, attestation, secrets.",
    )

    @app.post("/v1/identities", response_model=EnrollResponse, tags=["owners"])
    def enroll(body: EnrollRequest) -> EnrollResponse:
        certificate, fp = cas.enroll(body.csr.encode())
        return EnrollResponse(
            certificate=certificate.decode(), fingerprint=fp, ca=cas.ca_pem.decode()
        )

    @app.post("/v1/sessions", response_model=ApplyResponse, tags=["owners"])
    def apply_policy(body: ApplyRequest, request: Request) -> ApplyResponse:
        approvals = [Approval(a.certificate, a.signature) for a in body.approvals]
        return ApplyResponse(**cas.apply_policy(body.policy, _fingerprint(request), approvals))

    @app.get("/v1/sessions/{name}", tags=["owners"])
    def show_policy(
        request: Request,
        name: str = Path(pattern=NAME.pattern, description="session name"),
    ) -> dict:
        return cas.show_policy(name, _fingerprint(request))

    @app.post("/v1/attestation/nonce", response_model=NonceResponse, tags=["attestation"])
    def nonce() -> NonceResponse:
        return NonceResponse(nonce=cas.new_nonce().hex(), expires_in=int(cas.nonces.ttl))

    @app.post("/v1/attestation", response_model=AttestResponse, tags=["attestation"])
    def attest(body: AttestRequest) -> AttestResponse:
        return AttestResponse(
            **cas.attest(body.config_id, body.nonce, body.public_key, body.evidence)
        )

    @app.get("/v1/ca", response_class=PlainTextResponse, tags=["public"])
    def ca_certificate() -> str:
        return cas.ca_pem.decode()

    @app.get("/v1/audit/public-key", response_class=PlainTextResponse, tags=["public"])
    def audit_key() -> str:
        return (cas.directory / "audit.pub").read_text()

    return app
