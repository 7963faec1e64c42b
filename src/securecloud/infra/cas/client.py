"""Client of the CAS owner API: enrollment, policies, approvals.

An owner identity is a P-256 key and the certificate CAS issued for it, kept
as `identity.key` / `identity.crt` in a directory (default
<data dir>/identity). Requests go over TLS verified against CAS's CA and
present that certificate.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from securecloud.crypto import (
    canonical,
    fingerprint,
    generate_signing_key,
    load_private_key_pem,
    private_key_pem,
    sign,
)
from securecloud.infra.api_client import ApiClient
from securecloud.infra.cas.errors import CasError
from securecloud.infra.cas.policy import parse_policy
from securecloud.infra.cas.service import APPROVAL_CONTEXT


@dataclass(frozen=True)
class Identity:
    directory: Path

    @property
    def key_path(self) -> Path:
        return self.directory / "identity.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / "identity.crt"

    def exists(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists()

    def fingerprint(self) -> str:
        return fingerprint(load_private_key_pem(self.key_path.read_bytes()).public_key())


def _tls_context(ca_file: Path, identity: Identity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if identity is not None and identity.exists():
        context.load_cert_chain(identity.cert_path, identity.key_path)
    return context


class CasClient(ApiClient):
    error = CasError

    def __init__(self, url: str, ca_file: Path, identity: Identity | None = None, timeout=30.0):
        self.identity = identity
        super().__init__(
            httpx.Client(base_url=url, verify=_tls_context(ca_file, identity), timeout=timeout)
        )

    def enroll(self, directory: Path) -> Identity:
        """Create a key, have CAS certify it, store both under `directory`."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = generate_signing_key("p256")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "policy owner")]))
            .sign(key, hashes.SHA256())
        )
        doc = self._call(
            "POST",
            "/v1/identities",
            json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
        ).json()
        identity = Identity(directory)
        fd = os.open(identity.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_pem(key))
        identity.cert_path.write_text(doc["certificate"])
        return identity

    def apply(self, policy_text: str, approvals: list[dict] | None = None) -> dict:
        return self._call(
            "POST", "/v1/sessions", json={"policy": policy_text, "approvals": approvals or []}
        ).json()

    def show(self, name: str) -> dict:
        return self._call("GET", f"/v1/sessions/{name}").json()


def owner_client(url: str, ca_file: Path, directory: Path) -> CasClient:
    """A client with the owner identity in `directory`, enrolling one first if there is none."""
    identity = Identity(directory)
    if not identity.exists():
        with CasClient(url, ca_file) as anonymous:
            anonymous.enroll(directory)
    return CasClient(url, ca_file, identity)


def apply_session(client: CasClient, policy: dict) -> dict:
    """Create the session `policy` describes, or update it from its current version."""
    try:
        current = client.show(policy["name"])["hash"]
    except CasError as exc:
        if exc.reason != "no-such-session":
            raise
        current = None
    document = {**policy, "predecessor": current} if current else policy
    return client.apply(canonical.encode(document).decode())


def approve(policy_text: str, identity: Identity) -> dict:
    """An approval of this exact policy text by `identity`, for require_at_least > 1."""
    digest = parse_policy(policy_text, creator="0" * 64).hash
    key = load_private_key_pem(identity.key_path.read_bytes())
    return {
        "certificate": identity.cert_path.read_text(),
        "signature": sign(key, APPROVAL_CONTEXT + bytes.fromhex(digest)).hex(),
    }
