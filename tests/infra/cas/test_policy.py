"""Policy parsing and the rules of creating and updating sessions."""

import re

import pytest

from securecloud.crypto import canonical, fingerprint, generate_signing_key, sign
from securecloud.infra.cas import ca
from securecloud.infra.cas.errors import CasError, PolicyError
from securecloud.infra.cas.policy import parse_policy
from securecloud.infra.cas.service import APPROVAL_CONTEXT, Approval
from tests.helpers import MRENCLAVE

ALICE, BOB, CAROL = "a1" * 32, "b2" * 32, "c3" * 32

BASE = f"""
name: meters
services:
  - name: ingest
    mrenclaves: ["{MRENCLAVE}"]
    environment: {{DB: "$$SC::db$$", SIGN: "$$SC::signing$$"}}
secrets:
  - {{name: db, kind: aes-256}}
  - {{name: signing, kind: private-key, algorithm: ed25519, migrate: true}}
  - {{name: session_key, kind: private-key, algorithm: p256}}
  - {{name: label, kind: ascii, value: fixed-label}}
security: {{attestation: {{tolerate: [simulation]}}}}
access_policy:
  read: [CREATOR]
  update: {{signers: [CREATOR, "{BOB}"], require_at_least: 1}}
"""


def update_of(cas, text, name="meters"):
    current = cas.sessions[name].hash
    text = "\n".join(line for line in text.split("\n") if not line.startswith("predecessor:"))
    return text.replace(f"name: {name}\n", f'name: {name}\npredecessor: "{current}"\n', 1)


def unchanged(cas, action, reason, status):
    before = canonical.encode(cas.state)
    with pytest.raises(CasError) as caught:
        action()
    assert (caught.value.reason, caught.value.status) == (reason, status), caught.value
    assert canonical.encode(cas.state) == before
    return caught.value


def test_create_then_update_with_predecessor(make_cas):
    cas = make_cas()
    created = cas.apply_policy(BASE, ALICE)
    assert created["created"] and created["version"] == 1
    updated = cas.apply_policy(update_of(cas, BASE + "\n"), ALICE)
    assert not updated["created"] and updated["version"] == 2
    assert cas.sessions["meters"].read.fingerprints == (ALICE,)


def test_creating_with_a_predecessor_is_refused(make_cas):
    cas = make_cas()
    zero = "0" * 64
    named = BASE.replace("name: meters\n", f'name: meters\npredecessor: "{zero}"\n')
    unchanged(cas, lambda: cas.apply_policy(named, ALICE), "no-such-session", 404)


def test_update_without_or_with_a_stale_predecessor_is_refused(make_cas):
    cas = make_cas()
    cas.apply_policy(BASE, ALICE)
    unchanged(cas, lambda: cas.apply_policy(BASE, ALICE), "session-exists", 409)
    stale = update_of(cas, BASE)
    cas.apply_policy(stale, ALICE)
    unchanged(cas, lambda: cas.apply_policy(stale + "\n", ALICE), "predecessor-mismatch", 409)


def test_update_by_someone_not_in_the_update_policy_is_refused(make_cas):
    cas = make_cas()
    cas.apply_policy(BASE, ALICE)
    unchanged(cas, lambda: cas.apply_policy(update_of(cas, BASE), CAROL), "not-authorized", 403)
    cas.apply_policy(update_of(cas, BASE), BOB)  # a listed signer may


def _owner(cas):
    key = generate_signing_key("p256")
    cert = ca.issue(cas.ca_key, cas.ca_cert, key.public_key(), common_name="owner", server=False)
    return key, ca.cert_pem(cert).decode(), fingerprint(key.public_key())


def test_require_at_least_needs_valid_approvals(make_cas):
    cas = make_cas()
    key_b, cert_b, fp_b = _owner(cas)
    key_c, _cert_c, fp_c = _owner(cas)
    quorum = BASE.replace(
        f'update: {{signers: [CREATOR, "{BOB}"], require_at_least: 1}}',
        f'update: {{signers: [CREATOR, "{fp_b}", "{fp_c}"], require_at_least: 2}}',
    )
    cas.apply_policy(quorum, ALICE)
    new = update_of(cas, quorum, "meters") + "\n"
    digest = bytes.fromhex(parse_policy(new, creator=ALICE).hash)
    unchanged(cas, lambda: cas.apply_policy(new, ALICE), "not-authorized", 403)
    forged = Approval(cert_b, sign(key_c, APPROVAL_CONTEXT + digest).hex())
    unchanged(cas, lambda: cas.apply_policy(new, ALICE, [forged]), "bad-approval", 403)
    other_doc = Approval(cert_b, sign(key_b, APPROVAL_CONTEXT + bytes(32)).hex())
    unchanged(cas, lambda: cas.apply_policy(new, ALICE, [other_doc]), "bad-approval", 403)
    good = Approval(cert_b, sign(key_b, APPROVAL_CONTEXT + digest).hex())
    assert cas.apply_policy(new, ALICE, [good])["version"] == 2


def test_generated_secrets_survive_updates_by_the_rules(make_cas):
    cas = make_cas()
    cas.apply_policy(BASE, ALICE)
    before = dict(cas.state["sessions"]["meters"]["secrets"])
    cas.apply_policy(update_of(cas, BASE), ALICE)
    after = cas.state["sessions"]["meters"]["secrets"]
    assert after["db"] == before["db"]  # same kind: kept
    assert after["signing"] == before["signing"]  # private key with migrate in both: kept
    assert after["session_key"] != before["session_key"]  # private key without migrate: new
    changed = update_of(cas, BASE).replace(
        "{name: db, kind: aes-256}", "{name: db, kind: hex, size: 32}"
    )
    cas.apply_policy(changed, ALICE)
    assert cas.state["sessions"]["meters"]["secrets"]["db"]["kind"] == "hex"
    no_migrate = update_of(cas, changed).replace("migrate: true", "migrate: false")
    cas.apply_policy(no_migrate, ALICE)
    assert cas.state["sessions"]["meters"]["secrets"]["signing"] != before["signing"]


def test_lowering_isv_svn_min_is_refused(make_cas):
    cas = make_cas()
    signed = BASE.replace(
        f'mrenclaves: ["{MRENCLAVE}"]',
        f'signer: {{mrsigner: "{"5" * 64}", isv_prod_id: 1, isv_svn_min: 4}}',
    )
    cas.apply_policy(signed, ALICE)
    lowered = update_of(cas, signed).replace("isv_svn_min: 4", "isv_svn_min: 3")
    unchanged(cas, lambda: cas.apply_policy(lowered, ALICE), "svn-lowered", 400)
    cas.apply_policy(update_of(cas, signed).replace("isv_svn_min: 4", "isv_svn_min: 5"), ALICE)


def test_show_redacts_values_and_checks_read_access(make_cas):
    cas = make_cas()
    cas.apply_policy(BASE, ALICE)
    shown = cas.show_policy("meters", ALICE)
    assert "fixed-label" not in str(shown)
    assert shown["secrets"]["db"] == {"kind": "aes-256", "value": "<redacted>"}
    secret = cas.state["sessions"]["meters"]["secrets"]["db"]["text"]
    assert secret not in str(shown)
    unchanged(cas, lambda: cas.show_policy("meters", CAROL), "not-authorized", 403)
    unchanged(cas, lambda: cas.show_policy("meters", None), "client-certificate-required", 401)
    unchanged(cas, lambda: cas.show_policy("nothing", ALICE), "no-such-session", 404)


def test_state_survives_a_restart_and_refuses_other_code(make_cas, tmp_path, sealer):
    from securecloud.runtime.sealing import Sealer

    cas = make_cas(tmp_path / "persist")
    cas.apply_policy(BASE, ALICE)
    digest = cas.sessions["meters"].hash
    cas.close()
    again = make_cas(tmp_path / "persist")
    assert again.sessions["meters"].hash == digest
    again.close()
    other_code = Sealer(sealer.key[::-1], "99" * 32, sealer.platform_id)
    with pytest.raises(CasError) as caught:
        make_cas(tmp_path / "persist", sealer=other_code)
    assert caught.value.reason == "state-sealed-elsewhere"


def test_recovery_key_reseals_the_state_for_new_code(make_cas, tmp_path, sealer):
    from securecloud.crypto import generate_agreement_key
    from securecloud.infra.cas.state import recover
    from securecloud.runtime.sealing import Sealer

    recovery = generate_agreement_key("x25519")
    cas = make_cas(tmp_path / "moved", recovery_public_key=recovery.public_key())
    cas.apply_policy(BASE, ALICE)
    cas.close()
    new_code = Sealer(bytes(32), "98" * 32, sealer.platform_id)
    recover(tmp_path / "moved", recovery, new_code)
    assert "meters" in make_cas(tmp_path / "moved", sealer=new_code).sessions


def test_rolled_back_state_file_is_refused(make_cas, tmp_path):
    directory = tmp_path / "rollback"
    cas = make_cas(directory)
    cas.apply_policy(BASE, ALICE)
    old = {p: (directory / p).read_bytes() for p in ("state", "state.meta")}
    cas.apply_policy(update_of(cas, BASE), ALICE)
    cas.close()
    for name, data in old.items():
        (directory / name).write_bytes(data)
    with pytest.raises(Exception, match="older than committed"):
        make_cas(directory)


def test_truncated_audit_log_is_refused_at_start(make_cas, tmp_path):
    directory = tmp_path / "audit"
    cas = make_cas(directory)
    cas.apply_policy(BASE, ALICE)
    cas.close()
    log = directory / "audit.log"
    log.write_bytes(b"")
    with pytest.raises(CasError) as caught:
        make_cas(directory)
    assert caught.value.reason == "audit-rollback"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\nbogus: 1\n", "unknown field(s) bogus"),
        ("services: []\n", "policy.name: is required"),
        ("name: 'a b'\n", "policy.name"),
        ("name: x\nversion: '0.2'\n", "policy.version"),
        ("name: x\nservices: [{name: s}]\n", "services[0]: needs mrenclaves or a signer"),
        ("name: x\nservices: [{name: s, mrenclaves: [zz]}]\n", "services[0].mrenclaves[0]"),
        (
            "name: x\nservices: [{name: s, mrenclaves: ['" + "a" * 64 + "'], heap_mb: 0}]\n",
            "services[0].heap_mb",
        ),
        ("name: x\nsecrets: [{name: k, kind: rsa}]\n", "secrets[0].kind"),
        ("name: x\nsecrets: [{name: k, kind: private-key}]\n", "secrets[0].algorithm"),
        ("name: x\nsecrets: [{name: k, kind: x509}]\n", "secrets[0].issuer"),
        ("name: x\nsecrets: [{name: k, kind: x509, issuer: nope}]\n", "secrets.k.issuer"),
        ("name: x\nsecrets: [{name: k, kind: aes-256, value: abc}]\n", "secrets[0].value"),
        ("name: x\nsecrets: [{name: k, kind: ascii, ca: true}]\n", "secrets[0].ca"),
        (
            "name: x\nsecrets: [{name: r, kind: x509-ca},"
            " {name: k, kind: x509, issuer: r, ca: true}]\n",
            "secrets[1].san",
        ),
        ("name: x\nsecrets: [{name: k, kind: ascii, migrate: true}]\n", "secrets[0].migrate"),
        (
            "name: x\nservices: [{name: s, mrenclaves: ['"
            + "a" * 64
            + "'], environment: {A: '$$SC::missing$$'}}]\n",
            "names no secret",
        ),
        ("name: x\nsecurity: {attestation: {tolerate: [everything]}}\n", "tolerate"),
        ("name: x\naccess_policy: {update: {signers: [abc]}}\n", "access_policy.update.signers[0]"),
        (
            "name: x\naccess_policy: {update: {signers: ['"
            + "a" * 64
            + "'], require_at_least: 2}}\n",
            "require_at_least",
        ),
        ("name: x\nsecrets: [{name: k, kind: ascii, size: 1.5}]\n", "quote numbers"),
        ("name: [unclosed\n", "not valid YAML"),
        ("- a list\n", "policy: expected a mapping"),
        ("name: x\nname: y\n", "duplicate key 'name' at line 2"),
    ],
)
def test_invalid_policies_are_refused_naming_the_field(make_cas, text, field):
    with pytest.raises(PolicyError, match=re.escape(field)):
        parse_policy(text, creator=ALICE)
    cas = make_cas()
    unchanged(cas, lambda: cas.apply_policy(text, ALICE), "invalid-policy", 400)


def test_policy_hash_ignores_formatting_but_not_content():
    a = parse_policy("name: x\nsecrets: [{name: k, kind: hex, size: 4}]\n")
    b = parse_policy("secrets:\n  - kind: hex\n    name: k\n    size: 4\nname: x\n")
    c = parse_policy("name: x\nsecrets: [{name: k, kind: hex, size: 5}]\n")
    assert a.hash == b.hash != c.hash


def test_an_issuing_ca_secret_signs_only_names_under_its_san(tmp_path):
    """`ca: true`: an intermediate whose leaves verify under the session CA inside its
    DNS subtree and are refused by any verifier outside it (name constraints)."""
    import subprocess

    from securecloud.crypto import generate_signing_key, load_private_key_pem
    from securecloud.infra.cas import secrets
    from securecloud.infra.cas.policy import SecretSpec

    root = secrets.generate(SecretSpec("root", "x509-ca"), {})
    spec = SecretSpec("issuer", "x509", issuer="root", san=("consumers.example",), ca=True)
    issuer = secrets.generate(spec, {"root": root})
    issuer_key = load_private_key_pem(issuer["key"].encode())
    issuer_cert = ca.load_cert(issuer["crt"].encode())
    (tmp_path / "root.pem").write_text(root["crt"])
    (tmp_path / "chain.pem").write_text(issuer["crt"])
    for domain, ok in (("consumers.example", True), ("elsewhere.example", False)):
        key = generate_signing_key("p256")
        cert = ca.issue(
            issuer_key, issuer_cert, key.public_key(), common_name="c1", san=[f"c1.{domain}"]
        )
        (tmp_path / "leaf.pem").write_bytes(ca.cert_pem(cert))
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", tmp_path / "root.pem", "-untrusted",
             tmp_path / "chain.pem", tmp_path / "leaf.pem"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert (result.returncode == 0) == ok, result.stdout + result.stderr
        if not ok:
            assert "permitted subtree violation" in result.stdout + result.stderr
