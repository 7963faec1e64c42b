"""Attestation against an in-process CAS: every refusal is distinct, audited, and
releases nothing; the one success releases exactly the policy's configuration."""

import base64
import time

import pytest

from securecloud.crypto import IntegrityError, canonical, decrypt_with, generate_signing_key
from securecloud.infra.cas.audit import iter_entries
from securecloud.infra.cas.errors import AttestationRefused, CasError
from securecloud.runtime.errors import AttestationError
from securecloud.runtime.provisioning import AttestationAttempt
from tests.helpers import MRENCLAVE, attest, sim_evidence

OWNER = "11" * 32

POLICY = f"""
name: app
services:
  - name: svc
    mrenclaves: ["{MRENCLAVE}"]
    command: ["--token", "$$SC::token$$"]
    environment: {{KEY: "$$SC::key$$", PLAIN: "hello"}}
    injection_files:
      - path: tls/cert.pem
        content: "$$SC::tls.crt$$"
  - name: signed
    signer: {{mrsigner: "{"5" * 64}", isv_prod_id: 7, isv_svn_min: 3}}
    environment: {{KEY: "$$SC::key$$"}}
secrets:
  - {{name: token, kind: ascii, size: 24}}
  - {{name: key, kind: aes-256}}
  - {{name: ca, kind: x509-ca}}
  - {{name: tls, kind: x509, issuer: ca, san: [svc.local]}}
security:
  attestation:
    tolerate: [simulation]
access_policy: {{read: [CREATOR], update: [CREATOR]}}
"""


@pytest.fixture
def cas(make_cas):
    cas = make_cas()
    cas.apply_policy(POLICY, OWNER)
    return cas


def audit_events(cas):
    return [entry for entry, _ in iter_entries(cas.audit.path)]


def test_attested_service_receives_its_rendered_configuration(cas, platform_key):
    attempt, response = attest(cas, platform_key)
    config = attempt.open_response(response)
    secrets = cas.state["sessions"]["app"]["secrets"]
    assert config.command == ("--token", secrets["token"]["text"])
    assert config.environment == {"KEY": secrets["key"]["text"], "PLAIN": "hello"}
    assert config.injection_files[0].content.decode() == secrets["tls"]["crt"]
    assert len(secrets["token"]["text"]) == 24 and len(secrets["key"]["text"]) == 64
    assert audit_events(cas)[-1]["event"] == "attest.released"


def test_configuration_is_bound_to_session_name_and_hash(cas, platform_key):
    attempt, response = attest(cas, platform_key)
    with pytest.raises(AttestationError, match="does not open"):
        attempt.open_response({**response, "session_hash": "0" * 64})


def refuses(cas, reason, action):
    """Run `action`, expect a refusal with `reason`, an audit entry, and no state change."""
    state_before = canonical.encode(cas.state)
    audit_before = cas.audit.head.seq
    with pytest.raises(CasError) as caught:
        action()
    assert caught.value.reason == reason, caught.value
    entries = audit_events(cas)
    assert len(entries) > audit_before
    assert entries[-1]["fields"]["reason"] == reason
    assert canonical.encode(cas.state) == state_before
    return caught.value


def test_replayed_evidence_is_refused(cas, platform_key):
    attempt = AttestationAttempt("app/svc", cas.new_nonce())
    request = attempt.request(sim_evidence(platform_key, attempt))
    cas.attest(request["config_id"], request["nonce"], request["public_key"], request["evidence"])
    refuses(
        cas,
        "nonce-reused",
        lambda: cas.attest(
            request["config_id"], request["nonce"], request["public_key"], request["evidence"]
        ),
    )


def test_relayed_evidence_for_another_key_is_refused(cas, platform_key):
    victim = AttestationAttempt("app/svc", cas.new_nonce())
    evidence = sim_evidence(platform_key, victim)
    thief = AttestationAttempt("app/svc", victim.nonce)  # same challenge, its own key
    refuses(
        cas,
        "report-data-mismatch",
        lambda: cas.attest(
            "app/svc", thief.nonce.hex(), thief.public_key.hex(), evidence.to_json()
        ),
    )


def test_evidence_for_another_challenge_is_refused(cas, platform_key):
    old = AttestationAttempt("app/svc", cas.new_nonce())
    evidence = sim_evidence(platform_key, old)
    fresh = cas.new_nonce()
    refuses(
        cas,
        "report-data-mismatch",
        lambda: cas.attest("app/svc", fresh.hex(), old.public_key.hex(), evidence.to_json()),
    )


def test_stale_nonce_is_refused(make_cas, platform_key, tmp_path):
    cas = make_cas(tmp_path / "short", nonce_ttl=0.05)
    cas.apply_policy(POLICY, OWNER)
    attempt = AttestationAttempt("app/svc", cas.new_nonce())
    evidence = sim_evidence(platform_key, attempt)
    time.sleep(0.1)
    refuses(
        cas,
        "stale-nonce",
        lambda: cas.attest(
            "app/svc", attempt.nonce.hex(), attempt.public_key.hex(), evidence.to_json()
        ),
    )


def test_unknown_nonce_is_refused(cas, platform_key):
    attempt = AttestationAttempt("app/svc", bytes(32))
    refuses(
        cas,
        "nonce-reused",
        lambda: cas.attest(
            "app/svc",
            attempt.nonce.hex(),
            attempt.public_key.hex(),
            sim_evidence(platform_key, attempt).to_json(),
        ),
    )


def test_wrong_measurement_is_refused(cas, platform_key):
    refuses(cas, "wrong-measurement", lambda: attest(cas, platform_key, mrenclave="cc" * 32))


def test_quote_from_an_untrusted_platform_is_refused(cas):
    refuses(cas, "unknown-platform", lambda: attest(cas, generate_signing_key("ed25519")))


def test_tampered_quote_is_refused(cas, platform_key):
    attempt = AttestationAttempt("app/svc", cas.new_nonce())
    evidence = sim_evidence(platform_key, attempt).to_json()
    evidence["payload"]["body"]["debug"] = True  # flip a claim after signing
    refuses(
        cas,
        "tampered-quote",
        lambda: cas.attest("app/svc", attempt.nonce.hex(), attempt.public_key.hex(), evidence),
    )


def test_simulation_is_refused_unless_tolerated(make_cas, platform_key, tmp_path):
    cas = make_cas(tmp_path / "strict")
    cas.apply_policy(POLICY.replace("tolerate: [simulation]", "tolerate: []"), OWNER)
    refuses(cas, "simulation-not-tolerated", lambda: attest(cas, platform_key))


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"debug": True}, "debug-not-tolerated"),
        ({"tcb_status": "OutOfDate"}, "tcb-refused"),
        ({"tcb_status": "SWHardeningNeeded"}, "tcb-refused"),
        ({"advisories": ["INTEL-SA-00334"]}, "advisories"),
    ],
)
def test_platform_weaknesses_are_refused_unless_tolerated(cas, platform_key, claims, reason):
    refuses(cas, reason, lambda: attest(cas, platform_key, **claims))


def test_tolerances_and_ignored_advisories_admit(make_cas, platform_key, tmp_path):
    cas = make_cas(tmp_path / "lenient")
    lenient = POLICY.replace(
        "tolerate: [simulation]",
        "tolerate: [simulation, debug-mode, outdated-tcb]\n    ignore_advisories: [INTEL-SA-00334]",
    )
    cas.apply_policy(lenient, OWNER)
    attest(cas, platform_key, debug=True, tcb_status="OutOfDate", advisories=["INTEL-SA-00334"])


def test_signer_policy_admits_newer_code_and_refuses_older(cas, platform_key):
    signed = {"mrenclave": "99" * 32, "mrsigner": "5" * 64, "isv_prod_id": 7}
    attest(cas, platform_key, "app/signed", isv_svn=4, **signed)
    refuses(
        cas, "svn-too-low", lambda: attest(cas, platform_key, "app/signed", isv_svn=2, **signed)
    )
    refuses(
        cas,
        "wrong-measurement",
        lambda: attest(cas, platform_key, "app/signed", isv_svn=9, **{**signed, "isv_prod_id": 8}),
    )


def test_unknown_config_id_is_refused(cas, platform_key):
    error = refuses(cas, "unknown-config", lambda: attest(cas, platform_key, "app/nothing"))
    assert error.status == 404


def test_tsm_evidence_is_refused_until_vendor_chains_are_verified(cas):
    attempt = AttestationAttempt("app/svc", cas.new_nonce())
    blob = bytearray(1184)
    blob[0x50:0x90] = attempt.report_data()
    evidence = {
        "kind": "tsm",
        "payload": {"provider": "sev_guest", "outblob": base64.b64encode(bytes(blob)).decode()},
    }
    refuses(
        cas,
        "unverified-vendor-chain",
        lambda: cas.attest("app/svc", attempt.nonce.hex(), attempt.public_key.hex(), evidence),
    )


def test_imported_secret_needs_an_export(make_cas, platform_key):
    cas = make_cas()
    exporter = """
name: vault
secrets:
  - {name: shared, kind: hex, size: 8, export: [consumer]}
  - {name: private, kind: hex, size: 8}
"""
    consumer = f"""
name: consumer
services:
  - name: svc
    mrenclaves: ["{MRENCLAVE}"]
    environment: {{SHARED: "$$SC::shared$$", OTHER: "$$SC::private$$"}}
imports:
  - {{session: vault, secret: shared}}
  - {{session: vault, secret: private}}
security: {{attestation: {{tolerate: [simulation]}}}}
"""
    cas.apply_policy(exporter, OWNER)
    cas.apply_policy(consumer, OWNER)
    refuses(cas, "import-not-exported", lambda: attest(cas, platform_key, "consumer/svc"))
    cas.apply_policy(
        consumer.replace('OTHER: "$$SC::private$$"', "OTHER: x")
        .replace("  - {session: vault, secret: private}\n", "")
        .replace(
            "name: consumer\n", f"name: consumer\npredecessor: '{cas.sessions['consumer'].hash}'\n"
        ),
        OWNER,
    )
    attempt, response = attest(cas, platform_key, "consumer/svc")
    shared = cas.state["sessions"]["vault"]["secrets"]["shared"]["text"]
    assert attempt.open_response(response).environment["SHARED"] == shared


def test_config_is_encrypted_to_the_attested_key_only(cas, platform_key):
    attempt, response = attest(cas, platform_key)
    other = AttestationAttempt("app/svc", attempt.nonce)
    with pytest.raises(IntegrityError):
        decrypt_with(other.key, bytes.fromhex(response["config"]))
    secret = cas.state["sessions"]["app"]["secrets"]["token"]["text"].encode()
    assert secret not in bytes.fromhex(response["config"])


def test_refusal_is_an_attestation_refused_with_403(cas, platform_key):
    with pytest.raises(AttestationRefused) as caught:
        attest(cas, platform_key, mrenclave="00" * 32)
    assert caught.value.status == 403
