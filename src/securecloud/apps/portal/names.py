"""Consumer names and the certificates that carry them.

A consumer's UID is a short DNS label (`c000042`); its server name is
`<uid>.<domain>` (default domain `consumers.portal.local`). Clients put the
server name in the SNI; routers route on it; an instance learns from it, during
the handshake, which consumer it is about to serve and presents a certificate
naming that UID in CN and SAN. The instance mints that certificate itself with
the portal's issuing CA, whose name constraints confine it to `<domain>`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOMAIN = "consumers.portal.local"
UID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class BadName(ValueError):
    """A server name or UID that is not a consumer's."""


def check_uid(uid: str) -> str:
    if not isinstance(uid, str) or not UID.match(uid):
        raise BadName(f"uid: {uid!r} is not a consumer UID (lowercase DNS label)")
    return uid


def server_name(uid: str, domain: str = DOMAIN) -> str:
    return f"{check_uid(uid)}.{domain}"


def uid_of(name: str | None, domain: str = DOMAIN) -> str:
    """The UID a server name designates; BadName for any other name."""
    if not name:
        raise BadName("sni: the client sent no server name")
    label, dot, rest = name.lower().partition(".")
    if not dot or rest != domain:
        raise BadName(f"sni: {name!r} is not under {domain}")
    return check_uid(label)


def consumer_uids(count: int) -> list[str]:
    return [f"c{i:06d}" for i in range(1, count + 1)]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def leaf_certificate(
    issuer_key, issuer_cert: x509.Certificate, uid: str, domain: str, server: bool, hours: int
):
    """(key, certificate) naming `uid` in CN and SAN, signed by the issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uid)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(server_name(uid, domain))]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


def pem_pair(key, cert: x509.Certificate) -> tuple[bytes, bytes]:
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def uid_in_certificate(der: bytes | None) -> str | None:
    """The CN of a peer certificate (as ssl returns it in DER), or None."""
    if not der:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


class ServerIdentities:
    """TLS server contexts per UID, each with a freshly minted certificate; they live in
    memory only (the key file is written to the instance's private folder, loaded and
    removed at once, since `ssl` loads keys from files)."""

    def __init__(self, issuer_key_pem: bytes, issuer_cert_pem: bytes, client_ca: Path, domain):
        self.issuer_key = serialization.load_pem_private_key(issuer_key_pem, None)
        self.issuer_cert = x509.load_pem_x509_certificate(issuer_cert_pem)
        self.issuer_pem = issuer_cert_pem
        self.client_ca = client_ca
        self.domain = domain
        self._contexts: dict[str, ssl.SSLContext] = {}

    def context(self, uid: str) -> ssl.SSLContext:
        context = self._contexts.get(uid)
        if context is None:
            key, cert = leaf_certificate(
                self.issuer_key, self.issuer_cert, uid, self.domain, server=True, hours=24
            )
            key_pem, cert_pem = pem_pair(key, cert)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            fd, name = tempfile.mkstemp(dir=".", prefix=".leaf-")
            try:
                os.write(fd, key_pem + cert_pem + self.issuer_pem)
                os.close(fd)
                context.load_cert_chain(name)
            finally:
                os.unlink(name)
            if len(self._contexts) >= 8:  # handshakes before a LOGIN; keep the newest
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[uid] = context
        return context

    def forget(self, uid: str) -> None:
        self._contexts.pop(uid, None)

    def uid_of_context(self, context: ssl.SSLContext) -> str | None:
        """Which UID a handshake chose (the context the SNI callback switched to)."""
        return next((uid for uid, c in self._contexts.items() if c is context), None)
