"""The scale-out mode with real processes: one aggregator publishing to a real
nats-server's JetStream stream, two attested authenticators each consuming half the
partitions, one of them kill -9'd mid-stream and restarted."""

import json
import os
import signal
import threading
import time

from securecloud.apps.metering import store
from securecloud.apps.metering.simulator import lost as simulated_lost
from securecloud.cli.kvs import _client
from securecloud.infra.supervisor import IngestPorts, Supervisor, free_port
from tests.apps.test_ingest_e2e import cli

PARTITIONS = 4


def test_two_authenticators_share_the_stream_and_a_killed_one_loses_nothing(
    tmp_path_factory, nats_url
):
    data_dir = tmp_path_factory.mktemp("ingest-nats")
    supervisor = Supervisor(data_dir)
    try:
        las, cas, kvs = supervisor.up(free_port(), free_port(), None, free_port())
        ports = [IngestPorts(free_port(), free_port()) for _ in range(2)]

        def start(i: int):
            extra = ("--name", f"auth-{i}", "--shard", f"{i}/2", "--nats", nats_url)
            extra += ("--partitions", str(PARTITIONS))
            return supervisor.start_authenticator(
                ports[i], cas.url, las.url, kvs.url, f"authenticator-{i}", extra
            )

        start(0)
        start(1)
        meter_port, metrics_port = free_port(), free_port()
        supervisor.start(
            "aggregator",
            [
                "ingest", "aggregator", "serve", "--data-dir", str(data_dir),
                "--port", str(meter_port), "--metrics-port", str(metrics_port),
                "--nats", nats_url, "--partitions", str(PARTITIONS),
            ],
            f"http://127.0.0.1:{metrics_port}",
        )  # fmt: skip
        cli(data_dir, "meters", "provision", "--count", "200")

        def kill_and_restart():
            time.sleep(2.5)
            record = next(r for r in supervisor.running() if r.name == "authenticator-1")
            os.killpg(record.pid, signal.SIGKILL)  # no flush, no checkpoint, no acks
            supervisor.stop("authenticator-1", grace=0)
            start(1)

        killer = threading.Thread(target=kill_and_restart)
        killer.start()
        summary_path = tmp_path_factory.mktemp("sim") / "sim.json"
        cli(
            data_dir, "meters", "simulate", "--days", "2", "--speedup", "300000", "--timeout", "3",
            "--target", f"127.0.0.1:{meter_port}", "--out", str(summary_path),
        )  # fmt: skip
        killer.join()
        summary = json.loads(summary_path.read_text())
        statuses = []
        for i in range(2):
            url = f"https://127.0.0.1:{ports[i].api}"
            cli(data_dir, "ingest", "flush", "--url", url)
            statuses.append(
                json.loads(cli(data_dir, "ingest", "status", "--json", "--url", url).stdout)
            )
        with _client(data_dir, None) as client:
            found = store.stored_counters(client)
        lost = simulated_lost(summary, found)
        assert lost == 0  # every acknowledged report is in the KVS
        assert summary["acked"]["stored"] > 200 * 96 * 2 * 0.9
        for status in statuses:  # each served its half, and nothing was misrouted
            assert status["accepted"] > 200 * 96 * 2 * 0.4
            assert "not-owner" not in status["rejected_by_reason"]
            assert status["rejected_by_reason"].get("replay", 0) == 0
        assert sum(s["accepted"] for s in statuses) == sum(len(v) for v in found.values())
    finally:
        supervisor.stop_all()
