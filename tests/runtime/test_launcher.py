"""The launcher with a real LAS and CAS: hardening, clean environment, and nothing of the
service runs or is written before CAS has verified it."""

import json
import os
import subprocess

import pytest

from securecloud.infra.cas.client import CasClient
from securecloud.runtime.errors import BudgetError
from securecloud.runtime.launcher import LaunchSpec, launch
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure

PROBE = """
import ctypes, json, os, resource, sys
from pathlib import Path

def run(argv):
    libc = ctypes.CDLL(None)
    print(json.dumps({
        "argv": argv,
        "dumpable": libc.prctl(3, 0, 0, 0, 0),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "env": sorted(os.environ),
        "secret": os.environ.get("SECRET"),
        "file": Path("conf/app.ini").read_text(),
        "cwd": os.getcwd(),
    }))
    return 0
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    (root / "probe_svc").mkdir()
    (root / "probe_svc" / "__init__.py").write_text("")
    (root / "probe_svc" / "main.py").write_text(PROBE)
    manifest = root / "probe.yaml"
    manifest.write_text(
        "name: probe\nentry_point: probe_svc.main:run\nheap_mb: 20\ncode: [probe_svc]\n"
    )
    return manifest


@pytest.fixture(scope="module")
def session(platform_processes, probe, tmp_path_factory):
    data_dir, las, cas = platform_processes
    ca_file = data_dir / "cas" / "ca.crt"
    with CasClient(cas.url, ca_file) as anonymous:
        owner = anonymous.enroll(tmp_path_factory.mktemp("owner"))
    policy = f"""
name: probe
services:
  - name: ok
    mrenclaves: ["{measure(load_manifest(str(probe)))}"]
    command: [alpha, "$$SC::secret$$"]
    environment: {{SECRET: "$$SC::secret$$"}}
    injection_files: [{{path: conf/app.ini, content: "key=$$SC::secret$$"}}]
  - name: other
    mrenclaves: ["{"0" * 64}"]
    injection_files: [{{path: conf/app.ini, content: "must not appear"}}]
secrets: [{{name: secret, kind: ascii, size: 20}}]
security: {{attestation: {{tolerate: [simulation]}}}}
"""
    with CasClient(cas.url, ca_file, owner) as client:
        client.apply(policy)
    return data_dir, las, cas, ca_file


def spec(session, probe, tmp_path, config_id, **kw):
    _, las, cas, ca_file = session
    return LaunchSpec(
        service=str(probe),
        config_id=config_id,
        cas_addr=cas.url,
        cas_ca=ca_file,
        las_addr=las.url,
        ledger_dir=tmp_path / "ledger",
        workdir=tmp_path / "work",
        **kw,
    )


def run(launch_spec):
    process = launch(launch_spec, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_attested_service_is_hardened_and_gets_only_its_configuration(
    session, probe, tmp_path, monkeypatch
):
    monkeypatch.setenv("LEAKY_PARENT_VARIABLE", "do-not-inherit")
    code, out, err = run(spec(session, probe, tmp_path, "probe/ok"))
    assert code == 0, err
    report = json.loads(out)
    secret = report["secret"]
    assert len(secret) == 20 and report["argv"] == ["alpha", secret]
    assert report["file"] == f"key={secret}"
    assert report["dumpable"] == 0 and report["core"] == [0, 0]
    assert "LEAKY_PARENT_VARIABLE" not in report["env"]
    assert not os.path.exists(report["cwd"]), "injected files must be removed at exit"
    assert '"attested"' in err


def test_refused_service_runs_none_of_its_code_and_receives_nothing(session, probe, tmp_path):
    code, out, err = run(spec(session, probe, tmp_path, "probe/other"))
    assert code == 3
    assert out == ""  # the probe's entry point never ran
    assert "wrong-measurement" in err
    assert not any(p.name == "app.ini" for p in tmp_path.rglob("*"))


def test_launch_beyond_the_enclave_budget_is_refused_unless_overcommitted(session, probe, tmp_path):
    with pytest.raises(BudgetError, match="needs 20 MB"):
        launch(spec(session, probe, tmp_path, "probe/ok", budget_mb=10))
    code, _, err = run(spec(session, probe, tmp_path, "probe/ok", budget_mb=10, overcommit=True))
    assert code == 0, err
