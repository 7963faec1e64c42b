"""CAS as a real HTTPS process with mutual TLS: owners, policies, attestation."""

import ssl

import httpx
import pytest

from securecloud.infra.cas.client import CasClient, Identity
from securecloud.infra.cas.errors import CasError
from securecloud.runtime.errors import AttestationError
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.runtime.provisioning import attest
from securecloud.runtime.sim import SimAttester


@pytest.fixture(scope="module")
def cas(platform_processes, tmp_path_factory):
    data_dir, las, cas = platform_processes
    ca_file = data_dir / "cas" / "ca.crt"
    with CasClient(cas.url, ca_file) as anonymous:
        owner = anonymous.enroll(tmp_path_factory.mktemp("owner"))
        intruder = anonymous.enroll(tmp_path_factory.mktemp("intruder"))
    policy = f"""
name: web
services:
  - name: echo
    mrenclaves: ["{measure(load_manifest("demo-echo"))}"]
    environment: {{TOKEN: "$$SC::token$$"}}
secrets:
  - {{name: token, kind: hex, size: 16}}
security: {{attestation: {{tolerate: [simulation]}}}}
"""
    with CasClient(cas.url, ca_file, owner) as client:
        client.apply(policy)
    return cas.url, ca_file, las.url, owner, intruder


def test_owner_reads_redacted_policy_and_intruder_is_refused(cas):
    url, ca_file, _, owner, intruder = cas
    with CasClient(url, ca_file, owner) as client:
        shown = client.show("web")
    assert shown["secrets"]["token"]["value"] == "<redacted>"
    with CasClient(url, ca_file, intruder) as client, pytest.raises(CasError) as caught:
        client.show("web")
    assert caught.value.status == 403


def test_policy_calls_without_a_client_certificate_get_401(cas):
    url, ca_file, *_ = cas
    with CasClient(url, ca_file) as client, pytest.raises(CasError) as caught:
        client.apply("name: x\n")
    assert (caught.value.status, caught.value.reason) == (401, "client-certificate-required")


def test_invalid_policy_gets_400_naming_the_field(cas):
    url, ca_file, _, owner, _ = cas
    with CasClient(url, ca_file, owner) as client, pytest.raises(CasError) as caught:
        client.apply("name: x\nsecrets: [{name: k, kind: rsa}]\n")
    assert caught.value.status == 400 and "secrets[0].kind" in str(caught.value)


def test_client_certificate_from_another_ca_is_refused_at_the_handshake(cas, tmp_path):
    url, ca_file, *_ = cas
    from securecloud.crypto import generate_signing_key, private_key_pem
    from securecloud.infra.cas import ca as cas_ca

    key, cert = cas_ca.make_ca("rogue")
    leaf_key = generate_signing_key("p256")
    leaf = cas_ca.issue(key, cert, leaf_key.public_key(), common_name="rogue", server=False)
    (tmp_path / "identity.key").write_bytes(private_key_pem(leaf_key))
    (tmp_path / "identity.crt").write_bytes(cas_ca.cert_pem(leaf))
    with CasClient(url, ca_file, Identity(tmp_path)) as client, pytest.raises(CasError):
        client.show("web")


def test_service_attests_over_tls_and_receives_its_secret(cas):
    url, ca_file, las_url, *_ = cas
    context = ssl.create_default_context(cafile=str(ca_file))
    config = attest(url, "web/echo", SimAttester(las_url, "demo-echo"), verify=context)
    assert len(config.environment["TOKEN"]) == 32


def test_other_code_is_refused_over_tls(cas):
    url, ca_file, las_url, *_ = cas
    context = ssl.create_default_context(cafile=str(ca_file))
    with pytest.raises(AttestationError) as caught:
        attest(url, "web/echo", SimAttester(las_url, "cas"), verify=context)
    assert caught.value.reason == "wrong-measurement"


def test_cas_is_not_trusted_without_its_ca(cas):
    url, *_ = cas
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v1/attestation/nonce")


def test_openapi_document_lists_the_api(cas):
    url, ca_file, *_ = cas
    doc = httpx.get(
        f"{url}/openapi.json", verify=ssl.create_default_context(cafile=str(ca_file))
    ).json()
    assert {"/v1/sessions", "/v1/attestation", "/v1/attestation/nonce", "/v1/identities"} <= set(
        doc["paths"]
    )
