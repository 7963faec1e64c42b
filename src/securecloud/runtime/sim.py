"""The `sim` backend: quotes signed by a software platform key held by the LAS.

It runs every step of remote attestation (measurement, report data, quote,
signature, platform identity, TCB status) but a process is not isolated from
the operating system: anyone root on the machine can read its memory or ask
the LAS for a quote naming code it does not run. Quotes say tee="simulation"
and CAS refuses them unless a policy tolerates simulation.

Quote layout (evidence kind "sim"): payload = {"body": B, "signature": hex}
where B is the object below and the signature is Ed25519 by the platform key
over b"securecloud/quote/v1\\x00" || canonical JSON of B::

    {"version": 1, "tee": "simulation", "mrenclave": hex32, "mrsigner": hex32,
     "isv_prod_id": int, "isv_svn": int, "debug": bool, "tcb_status": str,
     "advisories": [str], "report_data": hex64, "platform_id": hex32}

platform_id is the fingerprint of the platform public key.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from securecloud.crypto import CryptoError, canonical, fingerprint, sign, verify
from securecloud.runtime.errors import AttestationError
from securecloud.runtime.evidence import REPORT_DATA_SIZE, Claims, Evidence

KIND = "sim"
TEE = "simulation"
_CONTEXT = b"securecloud/quote/v1\x00"
_FIELDS = {
    "version": int,
    "tee": str,
    "mrenclave": str,
    "mrsigner": str,
    "isv_prod_id": int,
    "isv_svn": int,
    "debug": bool,
    "tcb_status": str,
    "advisories": list,
    "report_data": str,
    "platform_id": str,
}


def sign_quote(platform_key, body: dict) -> Evidence:
    """Used by the LAS: sign a quote body with the platform key."""
    body = {**body, "version": 1, "tee": TEE, "platform_id": fingerprint(platform_key.public_key())}
    signature = sign(platform_key, _CONTEXT + canonical.encode(body))
    return Evidence(kind=KIND, payload={"body": body, "signature": signature.hex()})


class SimAttester:
    """Asks the local attestation service (LAS) for a quote over our report data."""

    kind = KIND

    def __init__(self, las_url: str, service: str, sigstruct: bytes | None = None):
        self.las_url = las_url.rstrip("/")
        self.service = service
        self.sigstruct = sigstruct

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttestationError(f"report data must be {REPORT_DATA_SIZE} bytes")
        request = {"service": self.service, "report_data": report_data.hex()}
        if self.sigstruct is not None:
            request["sigstruct"] = self.sigstruct.decode()
        try:
            response = httpx.post(f"{self.las_url}/v1/quote", json=request, timeout=10)
        except httpx.HTTPError as exc:
            raise AttestationError(f"LAS at {self.las_url} unreachable: {exc}", "las") from exc
        if response.status_code != 200:
            raise AttestationError(f"LAS refused to quote: {response.text}", "las")
        return Evidence.from_json(response.json())


class SimVerifier:
    """Checks sim quotes against the platform keys the relying party trusts."""

    kind = KIND

    def __init__(self, platform_keys: Mapping[str, object]):
        # platform id (key fingerprint) -> Ed25519 public key
        self.platform_keys = dict(platform_keys)

    def verify(self, evidence: Evidence) -> Claims:
        if evidence.kind != KIND:
            raise AttestationError(f"evidence of kind {evidence.kind!r} is not a sim quote")
        body, signature = evidence.payload.get("body"), evidence.payload.get("signature")
        if not isinstance(body, dict) or not isinstance(signature, str):
            raise AttestationError("quote must have an object 'body' and a hex 'signature'")
        for name, kind in _FIELDS.items():
            value = body.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise AttestationError(f"quote field {name!r} missing or not {kind.__name__}")
        if set(body) != set(_FIELDS):
            raise AttestationError("quote has unexpected fields", "tampered-quote")
        key = self.platform_keys.get(body["platform_id"])
        if key is None:
            raise AttestationError(
                f"quote from unknown platform {body['platform_id'][:16]}…", "unknown-platform"
            )
        try:
            verify(key, _CONTEXT + canonical.encode(body), bytes.fromhex(signature))
        except (CryptoError, ValueError) as exc:
            raise AttestationError("quote signature does not verify", "tampered-quote") from exc
        if body["tee"] != TEE or body["version"] != 1:
            raise AttestationError("unsupported quote version or TEE type")
        try:
            report_data = bytes.fromhex(body["report_data"])
        except ValueError as exc:
            raise AttestationError("report_data is not hex") from exc
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttestationError(f"report_data must be {REPORT_DATA_SIZE} bytes")
        return Claims(
            tee=TEE,
            mrenclave=body["mrenclave"],
            mrsigner=body["mrsigner"],
            isv_prod_id=body["isv_prod_id"],
            isv_svn=body["isv_svn"],
            debug=body["debug"],
            tcb_status=body["tcb_status"],
            report_data=report_data,
            platform_id=body["platform_id"],
            advisories=tuple(str(a) for a in body["advisories"]),
        )
