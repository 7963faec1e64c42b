"""Measurement: any changed byte of code or launch manifest changes it, nothing else does."""

import shutil

import pytest

from securecloud.crypto import generate_signing_key
from securecloud.runtime.errors import AttestationError, ManifestError
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.runtime.sigstruct import SigStruct, sign_service

MANIFEST = """\
name: probe
entry_point: probe_pkg.main:run
heap_mb: 32
debug: false
code: [probe_pkg]
"""


@pytest.fixture
def service(tmp_path):
    package = tmp_path / "probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text("def run(argv):\n    return 0\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"cache")
    manifest = tmp_path / "probe.yaml"
    manifest.write_text(MANIFEST)
    return manifest


def test_one_changed_byte_of_code_changes_the_measurement(service):
    before = measure(load_manifest(str(service)))
    main = service.parent / "probe_pkg" / "main.py"
    main.write_text(main.read_text().replace("return 0", "return 1"))
    assert measure(load_manifest(str(service))) != before


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("heap_mb: 32", "heap_mb: 33"),
        ("debug: false", "debug: true"),
        ("probe_pkg.main:run", "probe_pkg.main:other"),
    ],
)
def test_launch_manifest_fields_change_the_measurement(service, old, new):
    before = measure(load_manifest(str(service)))
    service.write_text(service.read_text().replace(old, new))
    assert measure(load_manifest(str(service))) != before


def test_added_file_changes_it_but_byte_code_caches_and_location_do_not(service, tmp_path):
    before = measure(load_manifest(str(service)))
    (service.parent / "probe_pkg" / "__pycache__" / "other.pyc").write_bytes(b"x")
    assert measure(load_manifest(str(service))) == before
    moved = tmp_path / "elsewhere"
    shutil.copytree(service.parent / "probe_pkg", moved / "probe_pkg")
    (moved / "probe.yaml").write_text(MANIFEST)
    assert measure(load_manifest(str(moved / "probe.yaml"))) == before
    (service.parent / "probe_pkg" / "extra.py").write_text("")
    assert measure(load_manifest(str(service))) != before


def test_registered_services_are_measured_from_the_installed_package():
    value = measure(load_manifest("demo-echo"))
    assert len(value) == 64 and value != measure(load_manifest("cas"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: p\ncode: [probe_pkg]\n", "entry_point is required"),
        ("name: p\nentry_point: nocolon\ncode: [probe_pkg]\n", "entry_point"),
        ("name: p\nentry_point: a:b\nheap_mb: 0\ncode: [probe_pkg]\n", "heap_mb"),
        ("name: p\nentry_point: a:b\ncode: [missing]\n", "does not exist"),
        ("name: p\nentry_point: a:b\nextra: 1\ncode: [probe_pkg]\n", "unknown field"),
    ],
)
def test_bad_manifests_name_the_field(service, text, message):
    service.write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_manifest(str(service))


def test_unknown_service_lists_the_registered_ones():
    with pytest.raises(ManifestError, match="demo-echo"):
        load_manifest("no-such-service")


def test_sigstruct_binds_signer_product_and_version_to_the_measurement(service):
    key = generate_signing_key("ed25519")
    mrenclave = measure(load_manifest(str(service)))
    signed = SigStruct.from_bytes(sign_service(mrenclave, 7, 3, key).to_bytes())
    assert len(signed.verified_mrsigner(mrenclave)) == 64
    with pytest.raises(AttestationError, match="other code"):
        signed.verified_mrsigner("0" * 64)
    forged = SigStruct(mrenclave, 7, 9, signed.signer_pem, signed.signature)  # raised svn
    with pytest.raises(AttestationError, match="does not verify"):
        forged.verified_mrsigner(mrenclave)
