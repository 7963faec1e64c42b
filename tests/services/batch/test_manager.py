"""The batch manager with real processes: LAS, CAS, the manager, attested workers."""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from securecloud.infra.supervisor import Supervisor, free_port
from securecloud.services.batch.client import BatchClient
from securecloud.services.batch.errors import BatchError


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("batch")
    supervisor = Supervisor(data_dir)
    services = supervisor.up(free_port(), free_port(), free_port())
    batch = services[-1]
    token = (data_dir / "batch" / "api-token").read_text().strip()
    yield data_dir, supervisor, batch.url, token
    supervisor.stop_all()


@pytest.fixture
def client(platform):
    _, _, url, token = platform
    with BatchClient(url, token) as c:
        yield c


def job(items, task="sleep", expected=5.0, **control):
    parameters = {
        "schedule_strategy": "default",
        "min_rep": 1,
        "max_rep": 4,
        "trigger_up": 0.05,
        "trigger_down": 0.05,
        "check_interval": 0.3,
        **control,
    }
    return {
        "plugin": "local",
        "plugin_info": {
            "entry_point": task,
            "init_size": 1,
            "redis_workload": items,
            "control_parameters": parameters,
            "monitor_info": {"expected_time": expected},
            "max_retries": 1,
            "lease_seconds": 2,
        },
    }


def wait_for(client, run_id, states=("finished", "failed", "stopped"), timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status(run_id)
        if status["status"] in states:
            return status
        time.sleep(0.2)
    raise AssertionError(f"{run_id} still {status['status']} after {timeout} s")


def worker_pids(run_id):
    """Worker processes of a submission, found by the config id in their environment."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"SECURECLOUD_CONFIG_ID=batch-{run_id}/worker".encode() in environ:
                pids.append(int(entry.name))
    return pids


def test_job_runs_on_attested_workers_and_reports(platform, client):
    data_dir = platform[0]
    run_id = client.submit(job(["0.1"] * 16, max_rep=4))["id"]
    assert wait_for(client, run_id)["status"] == "finished"
    report = client.report(run_id)
    assert (report["items_done"], report["items_failed"], report["items_total"]) == (16, 0, 16)
    assert report["worker_seconds"] > 0 and report["execution_time_s"] > 0
    # 93 MB of enclave memory hold two workers of 32 MB, whatever max_rep says
    assert 1 <= report["replicas_max"] <= 2
    assert client.report_png(run_id)[:8] == b"\x89PNG\r\n\x1a\n"
    log = "\n".join(client.log(run_id))
    assert "queued 16 items" in log and f"CAS policy batch-{run_id}" in log
    audit = (data_dir / "cas" / "audit.log").read_text()
    assert f'"config_id":"batch-{run_id}/worker"' in audit and "attest.released" in audit


def test_failing_items_end_in_the_dead_letter_list(client):
    run_id = client.submit(job(["ok-1", "fail-1", "ok-2"], task="check"))["id"]
    wait_for(client, run_id)
    report = client.report(run_id)
    assert (report["items_done"], report["items_failed"]) == (2, 1)


def test_a_worker_killed_mid_item_loses_nothing(client):
    run_id = client.submit(job(["1.5"] * 4, expected=20, max_rep=1))["id"]
    deadline = time.monotonic() + 20
    while not (pids := worker_pids(run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.8)  # it is now inside its first item
    os.kill(pids[0], signal.SIGKILL)
    status = wait_for(client, run_id, timeout=60)
    report = client.report(run_id)
    assert status["status"] == "finished"
    assert (report["items_done"], report["items_failed"]) == (4, 0)


def test_stop_keeps_the_remaining_items(client):
    run_id = client.submit(job(["1"] * 20, expected=60))["id"]
    time.sleep(1.5)
    assert client.stop(run_id)["status"] == "stopped"
    sample = client.status(run_id)["last_sample"]
    assert sample["done"] < 20
    assert not worker_pids(run_id)


def test_manager_restart_resumes_the_job(platform, client):
    data_dir, supervisor, url, token = platform
    run_id = client.submit(job(["0.4"] * 12, expected=30, max_rep=1))["id"]
    time.sleep(1.5)
    assert supervisor.stop("batch")  # SIGTERM: workers finish their item, the run is saved
    record = (data_dir / "batch" / "submissions" / f"{run_id}.json").read_text()
    assert '"status": "interrupted"' in record
    port = int(url.rsplit(":", 1)[1])
    supervisor.start(
        "batch",
        [
            "batch",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--cas",
            supervisor.running()[1].url,
            "--las",
            supervisor.running()[0].url,
        ],
        url,
    )
    with BatchClient(url, token) as again:
        assert wait_for(again, run_id)["status"] == "finished"
        report = again.report(run_id)
    assert report["items_done"] == 12


def test_api_refuses_bad_tokens_bad_submissions_and_unknown_ids(platform, client):
    url = platform[2]
    assert httpx.get(f"{url}/submissions").status_code == 401
    wrong = httpx.get(f"{url}/submissions", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["reason"] == "bad-token"
    with pytest.raises(BatchError) as caught:
        client.submit(
            {
                "plugin": "local",
                "plugin_info": {
                    "entry_point": "nope",
                    "redis_workload": ["a"],
                    "monitor_info": {"expected_time": 5},
                },
            }
        )
    assert caught.value.status == 400 and "no task named 'nope'" in str(caught.value)
    with pytest.raises(BatchError) as caught:
        client.status("0123456789ab")
    assert caught.value.status == 404
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
