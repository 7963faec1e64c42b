"""The service side of CAS attestation: prove what we run, receive our configuration.

Protocol (docs/protocols.md has the full message layouts):

1. POST /v1/attestation/nonce                  -> {"nonce": hex32, "expires_in": 300}
2. make an ephemeral X25519 key; report_data = report_data_for(LABEL, nonce,
   public key); ask the attester for evidence over it
3. POST /v1/attestation {"config_id", "nonce", "public_key", "evidence"}
                                               -> {"session", "session_hash",
                                                   "service", "config": hex}
4. config = decrypt_with(ephemeral key, config, aad = canonical JSON of
   {"session", "session_hash", "service"}): only this process can open it,
   and it is bound to the policy version that produced it.

The functions are split so a benchmark can drive the same steps asynchronously.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field

import httpx

from securecloud.crypto import CryptoError, canonical, decrypt_with, generate_agreement_key
from securecloud.crypto.agreement import AgreementKey, public_bytes
from securecloud.runtime.attester import Attester
from securecloud.runtime.errors import AttestationError
from securecloud.runtime.evidence import report_data_for

LABEL = b"securecloud/cas-attest"


@dataclass(frozen=True)
class InjectedFile:
    path: str
    content: bytes


@dataclass(frozen=True)
class ServiceConfig:
    """What CAS releases to an attested service."""

    session: str
    session_hash: str
    service: str
    command: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    injection_files: tuple[InjectedFile, ...] = ()

    def to_json(self) -> dict:
        return {
            "session": self.session,
            "session_hash": self.session_hash,
            "service": self.service,
            "command": list(self.command),
            "environment": dict(self.environment),
            "injection_files": [
                {"path": f.path, "content": base64.b64encode(f.content).decode()}
                for f in self.injection_files
            ],
        }

    @classmethod
    def from_json(cls, doc: dict) -> ServiceConfig:
        return cls(
            session=doc["session"],
            session_hash=doc["session_hash"],
            service=doc["service"],
            command=tuple(doc["command"]),
            environment=dict(doc["environment"]),
            injection_files=tuple(
                InjectedFile(f["path"], base64.b64decode(f["content"]))
                for f in doc["injection_files"]
            ),
        )


def config_aad(session: str, session_hash: str, service: str) -> bytes:
    return canonical.encode({"session": session, "session_hash": session_hash, "service": service})


@dataclass
class AttestationAttempt:
    """Client state of one attestation: the ephemeral key and the CAS nonce."""

    config_id: str
    nonce: bytes
    key: AgreementKey = field(default_factory=generate_agreement_key)

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.key.public_key())

    def report_data(self) -> bytes:
        return report_data_for(LABEL, self.nonce, self.public_key)

    def request(self, evidence) -> dict:
        return {
            "config_id": self.config_id,
            "nonce": self.nonce.hex(),
            "public_key": self.public_key.hex(),
            "evidence": evidence.to_json(),
        }

    def open_response(self, doc: dict) -> ServiceConfig:
        try:
            aad = config_aad(doc["session"], doc["session_hash"], doc["service"])
            plain = decrypt_with(self.key, bytes.fromhex(doc["config"]), aad)
            config = ServiceConfig.from_json(canonical.decode(plain))
        except (CryptoError, KeyError, TypeError, ValueError) as exc:
            raise AttestationError(f"CAS response does not open: {exc}", "bad-response") from exc
        if (config.session, config.session_hash) != (doc["session"], doc["session_hash"]):
            raise AttestationError("CAS response is bound to another policy", "bad-response")
        return config


def _raise_for(response: httpx.Response, step: str) -> dict:
    if response.status_code != 200:
        try:
            detail = response.json()
            message, reason = detail.get("detail", response.text), detail.get("reason", step)
        except ValueError:
            message, reason = response.text, step
        raise AttestationError(f"CAS refused {step}: {message}", reason)
    return response.json()


def attest(
    cas_url: str,
    config_id: str,
    attester: Attester,
    *,
    verify: ssl.SSLContext | bool = True,
    client: httpx.Client | None = None,
) -> ServiceConfig:
    """Run the whole protocol against CAS and return our decrypted configuration."""
    own = client is None
    client = client or httpx.Client(base_url=cas_url, verify=verify, timeout=30)
    try:
        nonce_doc = _raise_for(client.post("/v1/attestation/nonce"), "nonce")
        attempt = AttestationAttempt(config_id, bytes.fromhex(nonce_doc["nonce"]))
        evidence = attester.evidence(attempt.report_data())
        doc = _raise_for(client.post("/v1/attestation", json=attempt.request(evidence)), "attest")
        return attempt.open_response(doc)
    except httpx.HTTPError as exc:
        raise AttestationError(f"CAS at {cas_url} unreachable: {exc}", "cas-unreachable") from exc
    finally:
        if own:
            client.close()
