"""The whole ingestion path with real processes: LAS, CAS, KVS gateway, the attested
authenticator, an aggregator, simulator processes; and kill -9 of the authenticator."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from securecloud.apps import collector
from securecloud.apps.metering import store
from securecloud.apps.metering.reading import Reading
from securecloud.apps.metering.simulator import lost as simulated_lost
from securecloud.cli.kvs import _client
from securecloud.infra.supervisor import IngestPorts, Supervisor, free_port

CLI = [sys.executable, "-m", "securecloud.cli.main"]


@pytest.fixture(scope="module")
def ingest_platform(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ingest")
    supervisor = Supervisor(data_dir)
    ports = IngestPorts(free_port(), free_port(), free_port(), free_port())
    supervisor.up(free_port(), free_port(), free_port(), free_port(), ports)  # with Asperathos
    yield data_dir, supervisor, ports
    supervisor.stop_all()


def cli(data_dir, *args, check=True):
    result = subprocess.run(
        [*CLI, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_meters_to_kvs_with_an_authenticator_killed_mid_stream(ingest_platform, tmp_path):
    data_dir, supervisor, ports = ingest_platform
    cli(data_dir, "meters", "provision", "--count", "300")
    auth_url = f"https://127.0.0.1:{ports.api}"
    summary_path = tmp_path / "sim.json"

    def kill_and_restart():
        time.sleep(2.5)
        record = next(r for r in supervisor.running() if r.name == "authenticator")
        os.killpg(record.pid, signal.SIGKILL)  # no flush, no checkpoint
        supervisor.stop("authenticator", grace=0)
        urls = {r.name: r.url for r in supervisor.running()}
        supervisor.start_authenticator(ports, urls["cas"], urls["las"], urls["kvs"])

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    cli(
        data_dir, "meters", "simulate", "--days", "3", "--speedup", "300000", "--timeout", "3",
        "--target", f"127.0.0.1:{ports.aggregator}", "--out", str(summary_path),
    )  # fmt: skip
    killer.join()
    summary = json.loads(summary_path.read_text())
    cli(data_dir, "ingest", "flush", "--url", auth_url)
    status = json.loads(cli(data_dir, "ingest", "status", "--json", "--url", auth_url).stdout)
    with _client(data_dir, None) as kvs:
        found = store.stored_counters(kvs)
    lost = simulated_lost(summary, found)
    assert lost == 0  # every acknowledged report is in the KVS
    acked = summary["acked"]
    assert (
        acked["stored"] + acked.get("duplicate", 0) >= 300 * 96 * 3 - summary["lost_by_fault"] - 300
    )
    assert status["accepted"] == sum(len(v) for v in found.values())
    assert status["missing"] >= 0 and status["rejected_by_reason"].get("replay", 0) == 0


def test_revoked_meter_is_refused_and_counted(ingest_platform, tmp_path):
    data_dir, _supervisor, ports = ingest_platform
    cli(data_dir, "meters", "revoke", "5")
    time.sleep(0.1)
    result = cli(
        data_dir, "meters", "simulate", "--count", "6", "--days", "1", "--timeout", "1",
        "--target", f"127.0.0.1:{ports.aggregator}", "--out", str(tmp_path / "s.json"),
        check=False,
    )  # fmt: skip
    del result
    status = json.loads(
        cli(
            data_dir, "ingest", "status", "--json", "--url", f"https://127.0.0.1:{ports.api}"
        ).stdout
    )
    assert status["rejected_by_reason"].get("revoked-meter", 0) >= 1


def test_disconnect_command_reaches_the_meter_and_its_next_day_reads_zero(
    ingest_platform, tmp_path
):
    data_dir, _supervisor, ports = ingest_platform
    url = f"https://127.0.0.1:{ports.api}"
    cli(data_dir, "ingest", "command", "3", "disconnect", "--url", url)
    bad = cli(data_dir, "ingest", "command", "3", "explode", "--url", url, check=False)
    assert bad.returncode != 0 and "command" in bad.stdout + bad.stderr
    cli(
        data_dir, "meters", "simulate", "--count", "4", "--days", "2", "--start", "2026-03-10",
        "--target", f"127.0.0.1:{ports.aggregator}", "--out", str(tmp_path / "s.json"),
    )  # fmt: skip
    assert json.loads((tmp_path / "s.json").read_text())["commands"] == {"disconnect": 1}
    cli(data_dir, "ingest", "flush", "--url", url)
    second_day: dict[int, list[Reading]] = {}
    with _client(data_dir, None) as kvs:
        for item in kvs.list(store.BUCKET, "readings/2026-03-11/", "", 1000):
            for record in store.decode_segment(kvs.get(store.BUCKET, item["key"])):
                second_day.setdefault(record.meter_id, []).append(Reading.decode(record.report))
    assert second_day[3] and all(r.total_active == 0 and not r.flags & 1 for r in second_day[3])
    assert (
        all(r.flags & 1 for r in second_day[2]) and sum(r.total_active for r in second_day[2]) > 0
    )


def test_bills_from_the_kvs_pass_the_regulators_check_and_a_changed_one_fails(
    ingest_platform, tmp_path
):
    """After the kill -9 run above: bill days 2 and 3 of the first meters from the KVS,
    export one bill with its evidence, and verify it as the regulator would."""
    data_dir, _supervisor, ports = ingest_platform
    cli(data_dir, "ingest", "flush", "--url", f"https://127.0.0.1:{ports.api}")
    made = json.loads(
        cli(
            data_dir,
            "billing",
            "run",
            "--start",
            "2026-03-03",
            "--days",
            "2",
            "--meters",
            "1-20",
            "--json",
        ).stdout
    )
    assert made["bills"] == 20 and made["readings"] > 20 * 2 * 96 * 0.9
    for hash_only in (False, True):
        out = tmp_path / ("hashes" if hash_only else "full")
        flags = ["--hash-only"] if hash_only else []
        cli(data_dir, "billing", "export", "4", "--start", "2026-03-03", "--days", "2",
            "--out", str(out), *flags)  # fmt: skip
        result = cli(data_dir, "billing", "verify", str(out / "bill.json"), "--evidence",
                     str(out / "evidence.json"), "--json")  # fmt: skip
        assert json.loads(result.stdout)["ok"], result.stdout
    bill = json.loads((tmp_path / "full" / "bill.json").read_text())
    bill["total"] = "0.01"
    (tmp_path / "full" / "bill.json").write_text(json.dumps(bill))
    refused = cli(data_dir, "billing", "verify", str(tmp_path / "full" / "bill.json"),
                  "--evidence", str(tmp_path / "full" / "evidence.json"), check=False)  # fmt: skip
    assert refused.returncode == 1 and "bill-signature" in refused.stdout
    bad = cli(data_dir, "billing", "run", "--start", "2026-13-01", check=False)
    assert bad.returncode != 0 and "start" in bad.stdout + bad.stderr


def test_billing_worker_processes_store_the_same_bills_as_one_process(ingest_platform):
    """Each worker process opens its own TLS connection to the gateway and stores the bills
    of its share; they match what one process makes from the same segments."""
    import datetime as dt

    from securecloud.apps.billing import tariff as tariffs
    from securecloud.apps.billing.bill import Period
    from securecloud.apps.billing.job import BillingContext, bill_key, bill_meters
    from securecloud.apps.metering.registry import Registry
    from securecloud.cli.billing import regulator_keys, utility_key
    from securecloud.crypto import canonical

    data_dir, _supervisor, _ports = ingest_platform
    period, meters = Period(dt.date(2026, 3, 3), 2), list(range(40, 0, -1))
    with _client(data_dir, None) as kvs:
        branca = tariffs.builtin("tarifa-branca")
        context = BillingContext(
            kvs,
            Registry.load(kvs),
            {"lv1": branca, "lv3": branca, "mv3": tariffs.builtin("green-a4")},
            utility_key(data_dir),
            regulator_keys(data_dir / "metering" / "regulator.json"),
        )
        alone = bill_meters(context, meters, period, 1_770_000_000, workers=1)
        shared = bill_meters(context, meters, period, 1_770_000_000, workers=3)
        stored = [canonical.decode(kvs.get(store.BUCKET, bill_key(period, m))) for m in meters]
    assert [b["meter"] for b in shared] == meters and stored == shared
    assert sum(b["readings"]["count"] for b in alone) > 40 * 2 * 96 * 0.9
    for a, b in zip(alone, shared, strict=True):  # ECDSA signatures are randomised
        assert {**a, "signature": None} == {**b, "signature": None}


def test_billing_runs_as_an_asperathos_job_on_attested_workers(ingest_platform, tmp_path):
    """The batch manager writes the `billing` CAS session from the task's policy fragment:
    the workers get the KVS key, the utility key and the regulator's keys after attestation."""
    data_dir, _supervisor, _ports = ingest_platform
    done = cli(
        data_dir, "billing", "submit", "--start", "2026-03-03", "--days", "2",
        "--meters", "21-60",
    )  # fmt: skip
    assert "finished" in done.stdout
    with _client(data_dir, None) as kvs:
        stored = [i["key"] for i in kvs.list(store.BUCKET, "bills/2026-03-03+2d/", "", 1000)]
    assert {f"bills/2026-03-03+2d/{m:010d}.json" for m in range(21, 61)} <= set(stored)
    out = tmp_path / "job"
    cli(data_dir, "billing", "export", "33", "--start", "2026-03-03", "--days", "2",
        "--out", str(out))  # fmt: skip
    bill = json.loads((out / "bill.json").read_text())
    public = (data_dir / "billing" / "utility.pub.pem").read_bytes()
    from securecloud.crypto import fingerprint, load_public_key_pem

    assert bill["issuer"] == fingerprint(load_public_key_pem(public))  # the key CAS holds
    verified = cli(data_dir, "billing", "verify", str(out / "bill.json"), "--evidence",
                   str(out / "evidence.json"), "--json")  # fmt: skip
    assert json.loads(verified.stdout)["ok"]


def test_fraud_scoring_runs_as_an_asperathos_job_and_ranks_every_meter(ingest_platform):
    data_dir, _supervisor, _ports = ingest_platform
    done = cli(
        data_dir, "fraud", "submit", "--day", "2026-03-04", "--history", "2",
        "--meters", "1-60",
    )  # fmt: skip
    assert "finished" in done.stdout
    rows = json.loads(cli(data_dir, "fraud", "ranking", "--day", "2026-03-04", "--json").stdout)
    assert sorted(r["meter"] for r in rows) == list(range(1, 61))
    assert [r["rank"] for r in rows] == list(range(1, 61))
    assert all(a["risk"] >= b["risk"] for a, b in itertools.pairwise(rows))
    missing = cli(data_dir, "fraud", "ranking", "--day", "2026-04-01", check=False)
    assert missing.returncode != 0 and "no scores" in missing.stdout + missing.stderr


def test_export_writes_every_verified_reading_of_the_day_for_the_collector(
    ingest_platform, tmp_path
):
    data_dir, _supervisor, ports = ingest_platform
    cli(data_dir, "ingest", "flush", "--url", f"https://127.0.0.1:{ports.api}")
    out = tmp_path / "day.csv"
    cli(data_dir, "ingest", "export", "--start", "2026-03-03", "--out", str(out))
    with _client(data_dir, None) as kvs:
        stored = store.stored_counters(kvs, "readings/2026-03-03/")
    with open(out, newline="") as lines:
        rows = list(collector.rows(lines))  # the collector accepts the file as it is
    assert len(rows) == sum(len(c) for c in stored.values()) > 0
    assert {r[0] for r in rows} == set(stored)
    assert [(r[1], r[0]) for r in rows] == sorted((r[1], r[0]) for r in rows)  # time-major
    for meter in list(stored)[:20]:
        energy = [r[-1] for r in rows if r[0] == meter]
        assert energy == sorted(energy)  # the register never runs backwards
    bad = cli(data_dir, "ingest", "export", "--start", "2026-02-30", check=False)
    assert bad.returncode != 0 and "start" in bad.stdout + bad.stderr
