"""Generating, keeping and rendering policy secrets.

A secret's value is stored as a small record inside CAS's encrypted state and
rendered into a service's configuration through placeholders:

    $$SC::name$$        ascii (text), hex (hex text), binary (base64),
                        aes-256 (64 hex digits), private-key (PKCS#8 PEM)
    $$SC::name.pub$$    private-key: its public key (PEM)
    $$SC::name.crt$$    x509 / x509-ca: the certificate (PEM)
    $$SC::name.key$$    x509: the private key (PEM); a CA key is never released
    $$SC::name.chain$$  x509: the issuing CA's certificate (PEM)

An x509 secret with `ca: true` is an issuing CA confined to its SANs by name
constraints; unlike an x509-ca, its key is released (`.key`) to attested code.
"""

from __future__ import annotations

import base64
import os
import secrets as pysecrets
import string

from securecloud.crypto import (
    generate_agreement_key,
    generate_signing_key,
    load_private_key_pem,
    private_key_pem,
    public_key_pem,
)
from securecloud.infra.cas import ca
from securecloud.infra.cas.policy import SecretSpec

_ASCII = string.ascii_letters + string.digits + "-_.~+/="


def generate(spec: SecretSpec, issuers: dict[str, dict]) -> dict:
    """Make the stored record of one secret; `issuers` holds x509-ca records by name."""
    kind = spec.kind
    if kind == "ascii":
        value = spec.value or "".join(pysecrets.choice(_ASCII) for _ in range(spec.size or 32))
        return {"kind": kind, "text": value}
    if kind == "hex":
        return {"kind": kind, "text": spec.value or os.urandom(spec.size or 32).hex()}
    if kind == "binary":
        raw = spec.value.encode() if spec.value is not None else os.urandom(spec.size or 32)
        return {"kind": kind, "text": base64.b64encode(raw).decode()}
    if kind == "aes-256":
        return {"kind": kind, "text": os.urandom(32).hex()}
    if kind == "private-key":
        if spec.algorithm == "x25519":
            key = generate_agreement_key("x25519")
        else:
            key = generate_signing_key(spec.algorithm)
        return {"kind": kind, "key": private_key_pem(key).decode()}
    if kind == "x509-ca":
        key, cert = ca.make_ca(spec.common_name or spec.name)
        return {
            "kind": kind,
            "key": private_key_pem(key).decode(),
            "crt": ca.cert_pem(cert).decode(),
        }
    if kind == "x509":
        issuer = issuers[spec.issuer]
        issuer_key = load_private_key_pem(issuer["key"].encode())
        issuer_cert = ca.load_cert(issuer["crt"].encode())
        key = generate_signing_key("p256")
        cert = ca.issue(
            issuer_key,
            issuer_cert,
            key.public_key(),
            common_name=spec.common_name or (spec.san[0] if spec.san else spec.name),
            san=spec.san,
            valid_days=spec.valid_for,
            issuing=spec.ca,
        )
        return {
            "kind": kind,
            "key": private_key_pem(key).decode(),
            "crt": ca.cert_pem(cert).decode(),
            "chain": issuer["crt"],
        }
    raise ValueError(f"unknown secret kind {kind}")


def render(record: dict, view: str) -> str:
    """The text a placeholder `$$SC::name<view>$$` stands for."""
    kind = record["kind"]
    if kind in ("ascii", "hex", "binary", "aes-256") and view == "":
        return record["text"]
    if kind == "private-key":
        if view == "":
            return record["key"]
        if view == ".pub":
            return public_key_pem(
                load_private_key_pem(record["key"].encode()).public_key()
            ).decode()
    if kind == "x509-ca" and view == ".crt":
        return record["crt"]
    if kind == "x509" and view in (".crt", ".key", ".chain"):
        return record[view[1:]]
    raise KeyError(f"{kind} secret has no {view or 'plain'} view")
