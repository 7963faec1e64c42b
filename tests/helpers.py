"""Helpers for tests that attest against an in-process CAS."""

from securecloud.infra.cas.service import Cas
from securecloud.runtime.provisioning import AttestationAttempt
from securecloud.runtime.sigstruct import UNSIGNED_MRSIGNER
from securecloud.runtime.sim import sign_quote

MRENCLAVE = "ab" * 32


def sim_evidence(platform_key, attempt: AttestationAttempt, **overrides):
    """A quote as the LAS would sign it, for code `MRENCLAVE` unless overridden."""
    body = {
        "mrenclave": MRENCLAVE,
        "mrsigner": UNSIGNED_MRSIGNER,
        "isv_prod_id": 0,
        "isv_svn": 0,
        "debug": False,
        "tcb_status": "UpToDate",
        "advisories": [],
        "report_data": attempt.report_data().hex(),
    }
    body.update(overrides)
    return sign_quote(platform_key, body)


def attest(cas: Cas, platform_key, config_id: str = "app/svc", **overrides):
    """One full attestation against an in-process CAS; returns (attempt, response)."""
    attempt = AttestationAttempt(config_id, cas.new_nonce())
    evidence = sim_evidence(platform_key, attempt, **overrides)
    response = cas.attest(
        config_id, attempt.nonce.hex(), attempt.public_key.hex(), evidence.to_json()
    )
    return attempt, response
