"""The commands against a real platform started with `securecloud up`."""

import json
import os
import subprocess
import sys
import time

import pytest

from securecloud.infra.supervisor import free_port


def sc(data_dir, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "securecloud.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SECURECLOUD_DATA_DIR": str(data_dir), "COLUMNS": "200"},
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cli")
    sc(
        data_dir,
        "up",
        "--las-port",
        str(free_port()),
        "--cas-port",
        str(free_port()),
        "--batch-port",
        str(free_port()),
    )
    yield data_dir
    sc(data_dir, "down")


def test_status_reports_healthy_services(platform):
    out = sc(platform, "status").stdout
    assert out.count("healthy") == 6
    assert all(
        name in out for name in ("las", "cas", "batch", "kvs", "authenticator", "aggregator")
    )


def test_up_twice_is_refused_clearly(platform):
    result = sc(platform, "up", check=False)
    assert result.returncode == 1 and "already runs" in result.stderr


def test_owner_applies_and_shows_a_policy_and_a_service_launches(platform, tmp_path):
    from securecloud.infra.cas.client import Identity

    identity = Identity(platform / "identity")  # `up` enrolled it for the KVS gateway's policy
    if not identity.exists():
        sc(platform, "cas", "identity", "create")
    fingerprint = identity.fingerprint()
    assert len(fingerprint) == 64
    mrenclave = sc(platform, "runtime", "measure", "demo-echo").stdout.strip()
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
name: cli
services:
  - name: echo
    mrenclaves: ["{mrenclave}"]
    environment: {{API_TOKEN: "$$SC::token$$"}}
    injection_files: [{{path: token.txt, content: "$$SC::token$$"}}]
secrets: [{{name: token, kind: ascii, size: 16}}]
security: {{attestation: {{tolerate: [simulation]}}}}
""")
    applied = sc(platform, "cas", "policy", "apply", str(policy)).stdout
    assert "created session cli version 1" in applied
    shown = json.loads(sc(platform, "cas", "policy", "show", "cli").stdout)
    assert shown["creator"] == fingerprint and shown["secrets"]["token"]["value"] == "<redacted>"
    launched = sc(platform, "runtime", "launch", "demo-echo", "--config-id", "cli/echo")
    assert "API_TOKEN received: 16 characters" in launched.stdout
    refused = sc(
        platform, "runtime", "launch", "demo-echo", "--config-id", "cli/nothing", check=False
    )
    assert refused.returncode == 3 and "unknown-config" in refused.stderr


def test_bad_policy_file_fails_with_the_field_and_changes_nothing(platform, tmp_path):
    if not (platform / "identity" / "identity.key").exists():
        sc(platform, "cas", "identity", "create")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\nsecrets: [{name: k, kind: rsa}]\n")
    result = sc(platform, "cas", "policy", "apply", str(bad), check=False)
    assert result.returncode == 1 and "secrets[0].kind" in result.stderr
    missing = sc(platform, "cas", "policy", "show", "broken", check=False)
    assert missing.returncode == 1 and "no-such-session" in missing.stderr


def test_audit_verify_accepts_the_log_then_detects_truncation(platform, tmp_path):
    checkpoint = tmp_path / "checkpoint.json"
    ok = sc(platform, "cas", "audit", "verify", "--checkpoint", str(checkpoint))
    assert "audit log OK" in ok.stdout
    log = platform / "cas" / "audit.log"
    copy = tmp_path / "audit.log"
    lines = log.read_bytes().split(b"\n")
    copy.write_bytes(b"\n".join(lines[:2]) + b"\n")
    truncated = sc(
        platform,
        "cas",
        "audit",
        "verify",
        "--log",
        str(copy),
        "--checkpoint",
        str(checkpoint),
        check=False,
    )
    assert truncated.returncode == 2 and "truncated or rolled back" in truncated.stderr


def test_show_config_prints_settings_without_starting(tmp_path):
    out = json.loads(sc(tmp_path, "cas", "serve", "--show-config", "--port", "9999").stdout)
    assert out["port"] == "9999"


def test_batch_job_through_the_cli(platform, tmp_path):
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "plugin": "local",
                "plugin_info": {
                    "entry_point": "sleep",
                    "init_size": 1,
                    "redis_workload": ["0.05"] * 6,
                    "control_parameters": {"check_interval": 0.3, "max_rep": 2},
                    "monitor_info": {"expected_time": 10},
                },
            }
        )
    )
    run_id = sc(platform, "batch", "submit", str(job)).stdout.strip()
    assert len(run_id) == 12
    for _ in range(100):
        status = json.loads(sc(platform, "batch", "status", run_id, "--no-watch").stdout)
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert status["status"] == "finished", status
    png = tmp_path / "plot.png"
    report = json.loads(
        sc(platform, "batch", "report", run_id, "--png", str(png)).stdout.split("\nplot")[0]
    )
    assert report["items_done"] == 6 and png.read_bytes()[:4] == b"\x89PNG"
    assert "queued 6 items" in sc(platform, "batch", "log", run_id).stdout
    assert run_id in sc(platform, "batch", "list").stdout


def test_batch_submit_of_a_bad_file_names_the_field(platform, tmp_path):
    job = tmp_path / "bad.json"
    job.write_text(json.dumps({"plugin": "local", "plugin_info": {"redis_workload": []}}))
    result = sc(platform, "batch", "submit", str(job), check=False)
    assert result.returncode == 1 and "plugin_info.redis_workload" in result.stderr


def test_kvs_objects_through_the_cli(platform, tmp_path):
    source = tmp_path / "reading.bin"
    source.write_bytes(os.urandom(200_000))
    sc(platform, "kvs", "mb", "cli-bucket")
    put = sc(platform, "kvs", "put", "cli-bucket/day/1", str(source), "--policy", "ec:4+2")
    assert "version 1" in put.stdout and "ec:4+2" in put.stdout
    out = tmp_path / "back.bin"
    sc(platform, "kvs", "get", "cli-bucket/day/1", str(out))
    assert out.read_bytes() == source.read_bytes()
    assert "day/1" in sc(platform, "kvs", "ls", "cli-bucket/day").stdout
    stat = json.loads(sc(platform, "kvs", "stat", "cli-bucket/day/1").stdout)
    assert [f["state"] for f in stat["fragments"]] == ["ok"] * 6
    assert (
        "now replicate:2"
        in sc(platform, "kvs", "policy", "set", "cli-bucket/day/1", "replicate:2").stdout
    )
    sc(platform, "kvs", "rm", "cli-bucket/day/1")
    missing = sc(platform, "kvs", "get", "cli-bucket/day/1", check=False)
    assert missing.returncode == 1 and "no-such-key" in missing.stderr
    bad = sc(platform, "kvs", "put", "cli-bucket/x", str(source), "--policy", "ec:2+9", check=False)
    assert bad.returncode == 1 and "11 fragments" in bad.stderr
