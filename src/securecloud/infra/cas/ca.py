"""X.509 issuance: CAS is the certificate authority for services and policy owners.

All keys are P-256; certificates are SHA-256-signed. Service certificates carry
the SANs the policy names (DNS names and IP addresses), and are issued for a
key that CAS generates and releases only to attested code.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securecloud.infra.cas.errors import PolicyError


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(
    common_name: str, valid_days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        # path length 1: an x509 secret with `ca: true` is the one intermediate it may sign
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san(entries: tuple[str, ...] | list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for entry in entries:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            if not entry or len(entry) > 253:
                raise PolicyError(
                    f"san: {entry!r} is neither an IP address nor a DNS name"
                ) from None
            names.append(x509.DNSName(entry))
    return names


def issue(
    ca_key,
    ca_cert: x509.Certificate,
    public_key,
    *,
    common_name: str,
    san: tuple[str, ...] | list[str] = (),
    valid_days: int = 365,
    client: bool = True,
    server: bool = True,
    issuing: bool = False,
) -> x509.Certificate:
    """A leaf certificate; with `issuing`, a CA that may sign only names under `san`
    (name constraints, path length 0): its key can be released to attested code that
    must mint certificates at handshake time without asking CAS."""
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(
            x509.BasicConstraints(ca=issuing, path_length=0 if issuing else None), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if issuing:
        return (
            builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.NameConstraints([x509.DNSName(name) for name in san], None), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san(san)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def client_fingerprint(der: bytes) -> str:
    """Identity of a policy owner: the fingerprint of the key in its certificate."""
    from securecloud.crypto import fingerprint

    return fingerprint(x509.load_der_x509_certificate(der).public_key())
