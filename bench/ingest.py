"""Ingestion throughput: N simulated meters for one day through the embedded platform.

Starts LAS, CAS, the KVS gateway (9 local nodes), the attested authenticator
and one aggregator per 16,000 meters (a process may hold 20,000 sockets here),
provisions the meters, runs them as fast as acknowledgements come back
(speedup 0, 8 frames in flight per meter, the default faults), flushes, then
reads every segment back and counts acknowledged reports missing from the KVS
(`lost`, must be 0).

Baseline in the same run: `crypto_limit_readings_per_s`, the authenticator's
cryptographic work per report measured alone on one core (GCM decryption,
the Merkle leaf and its share of interior nodes, the HMAC acknowledgement, and
the batch signature divided by the batch size): the ceiling of one
authenticator process on this machine.

    python bench/ingest.py --out bench/results/ingest.json            # 65,000 meters
    python bench/ingest.py --quick --out /tmp/ingest-quick.json       # 4,000 meters
    python bench/ingest.py --transport nats --out bench/results/ingest-nats.json

`--transport nats` is the scale-out mode: the bench starts its own nats-server
with JetStream, the aggregators publish to the partitioned stream and
`--authenticators` attested authenticators (default 2) each consume their shard.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results
from securecloud.apps.metering import frames, store
from securecloud.apps.metering.model import consumer_for, day_readings
from securecloud.apps.metering.simulator import lost as simulated_lost
from securecloud.cli.kvs import _client
from securecloud.cli.meters import METERS_PER_PROCESS, run_fleet
from securecloud.crypto import MerkleTree, generate_signing_key, sign, suite1
from securecloud.infra.supervisor import IngestPorts, Supervisor, free_port

CLI = [sys.executable, "-m", "securecloud.cli.main"]


def crypto_limit(batch_size: int = 2000, rounds: int = 5) -> float:
    """Reports per second one core can authenticate (crypto only)."""
    import numpy as np

    meter, auth = suite1.generate_meter_key(), suite1.generate_meter_key()
    keys = suite1.session_keys(suite1.static_secret(auth, meter.public_key()), bytes(8), 7)
    reports, _ = day_readings(
        consumer_for(1, 7), dt.date(2026, 3, 2), 1, 0.0, np.random.default_rng(0)
    )
    title = frames.system_title(7)
    header = bytes(17)
    sealed = [
        suite1.encrypt_frame(keys, title, i, header, reports[i % 96].encode())
        for i in range(batch_size)
    ]
    signing = generate_signing_key("p256")
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        leaves = []
        for i, blob in enumerate(sealed):
            plain = suite1.decrypt_frame(keys, title, i, header, blob)
            leaves.append(b"\x00\x00\x00\x07" + plain)
            suite1.ack_tag(keys, blob[:32])
        tree = MerkleTree.from_leaves(leaves)
        sign(signing, tree.root())
        best = max(best, batch_size / (time.perf_counter() - started))
    return best


def gc_pause_s(url: str, ca: Path) -> float:
    """Seconds a service's cyclic garbage collector held it so far (its /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", verify=str(ca), timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "securecloud_gc_pause_seconds"
        for sample in family.samples
        if sample.name.endswith("_sum")
    )


@contextlib.contextmanager
def nats_server(directory: Path):
    """Our own nats-server with JetStream on a free port, stopped afterwards."""
    import socket

    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    directory.mkdir(parents=True)
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def merged(statuses: list[dict]) -> dict:
    """The authenticators' counts added up."""
    total: dict = {}
    for status in statuses:
        for key, value in status.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict):
                into = total.setdefault(key, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="4,000 meters (under two minutes)")
    p.add_argument("--meters", type=int, default=65000)
    p.add_argument("--keep", type=Path, help="use and keep this data directory (logs, KVS)")
    p.add_argument(
        "--window",
        type=int,
        help="frames in flight per meter (default: 520,000 / meters, between 4 and 16)",
    )
    p.add_argument("--transport", choices=["tcp", "nats"], default="tcp")
    p.add_argument("--authenticators", type=int, help="default 1 (tcp), 2 (nats)")
    p.add_argument("--partitions", type=int, default=8, help="nats: meter partitions")
    args = p.parse_args()
    nats_mode = args.transport == "nats"
    authenticators = args.authenticators or (2 if nats_mode else 1)
    if not nats_mode and authenticators != 1:
        p.error("authenticators: the tcp transport here runs one authenticator")
    meters = 4000 if args.quick else args.meters
    aggregators = -(-meters // METERS_PER_PROCESS)
    # In-flight frames wait in queues; too many and they outwait the meters' 120 s
    # timeout and come again (65,000 meters: 8 in flight 20.6 k/s, 16 19.2 k/s with
    # 267,000 resends, 4 18.9 k/s: each burst of window/2 frames is one write).
    window = args.window or max(4, min(16, 520_000 // meters))
    limit = crypto_limit()
    print(f"crypto ceiling (one core): {limit:,.0f} reports/s", flush=True)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-"))
        data_dir = args.keep or Path(tmp)
        supervisor = Supervisor(data_dir)
        ports = [IngestPorts(free_port(), free_port()) for _ in range(authenticators)]
        try:
            if nats_mode:
                nats_url = stack.enter_context(nats_server(Path(tmp) / "nats"))
                las, cas, kvs = supervisor.up(free_port(), free_port(), None, free_port())
                for i, own in enumerate(ports):
                    extra = ("--name", f"auth-{i}", "--shard", f"{i}/{authenticators}")
                    extra += ("--nats", nats_url, "--partitions", str(args.partitions))
                    supervisor.start_authenticator(
                        own, cas.url, las.url, kvs.url, f"authenticator-{i}", extra
                    )
                route = ["--nats", nats_url, "--partitions", str(args.partitions)]
            else:
                supervisor.up(free_port(), free_port(), None, free_port())
                urls = {r.name: r.url for r in supervisor.running()}
                supervisor.start_authenticator(ports[0], urls["cas"], urls["las"], urls["kvs"])
                route = ["--authenticator", f"127.0.0.1:{ports[0].link}"]
            targets = []
            for i in range(aggregators):
                port, metrics = free_port(), free_port()
                supervisor.start(
                    f"aggregator-{i}",
                    ["ingest", "aggregator", "serve", "--data-dir", str(data_dir), "--port",
                     str(port), "--metrics-port", str(metrics), *route],
                    f"http://127.0.0.1:{metrics}",
                )  # fmt: skip
                targets.append(f"127.0.0.1:{port}")
            started = time.perf_counter()
            subprocess.run(
                [*CLI, "meters", "provision", "--count", str(meters), "--data-dir", str(data_dir)],
                check=True,
            )
            provision_s = time.perf_counter() - started
            config = {
                "targets": targets,
                "start": "2026-03-02",
                "days": 1,
                "speedup": 0.0,
                "window": window,
                "timeout": 120.0,
            }
            print(f"running {meters:,} meters through {aggregators} aggregator(s)", flush=True)
            summary = run_fleet(data_dir / "meters", meters, config)
            statuses, gc_pauses = [], []
            for own in ports:
                auth_url = f"https://127.0.0.1:{own.api}"
                subprocess.run(
                    [*CLI, "ingest", "flush", "--url", auth_url, "--data-dir", str(data_dir)],
                    check=True,
                )
                gc_pauses.append(gc_pause_s(auth_url, data_dir / "metering" / "ca.crt"))
                status_args = ["ingest", "status", "--json", "--url", auth_url]
                statuses.append(
                    json.loads(
                        subprocess.run(
                            [*CLI, *status_args, "--data-dir", str(data_dir)],
                            check=True,
                            capture_output=True,
                            text=True,
                        ).stdout
                    )
                )
            started = time.perf_counter()
            with _client(data_dir, None) as kvs:
                found = store.stored_counters(kvs)
            verify_s = time.perf_counter() - started
        finally:
            supervisor.stop_all()
    status_doc = merged(statuses)
    lost = simulated_lost(summary, found)
    # Readings ingested: every distinct (meter, counter) found in the KVS, plus quarantined
    # ones. Counting "acknowledged as stored" instead would miss readings stored whose
    # first acknowledgement came too late: the meter sent them again and was told
    # "duplicate". Both are reported.
    stored_unique = sum(len(v) for v in found.values())
    readings = stored_unique + status_doc["quarantined"]
    acked_first = summary["acked"].get("stored", 0) + summary["acked"].get("quarantined", 0)
    results = {
        "transport": args.transport,
        "authenticators": authenticators,
        "meters": meters,
        "days": 1,
        "aggregators": aggregators,
        "window": window,
        "simulator_processes": summary["processes"],
        "simulator_gc_pause_s": summary["gc_pause_s"],  # summed over the simulator processes
        "authenticator_gc_pause_s": round(sum(gc_pauses), 2),
        "readings": readings,
        "readings_acknowledged_first_time": acked_first,
        "frames_sent": summary["sent"],
        "acknowledged": summary["acked"],
        "nacks": summary["nacks"],
        "elapsed_s": round(summary["elapsed_s"], 1),
        "readings_per_s": round(readings / summary["elapsed_s"], 1),
        "crypto_limit_readings_per_s": round(limit, 1),
        "ratio_to_crypto_limit": round(readings / summary["elapsed_s"] / limit, 3),
        "lost": lost,
        "lost_by_meter_faults": summary["lost_by_fault"],
        "missing_recorded": status_doc["missing"],
        "duplicates_recorded": status_doc["duplicates"],
        "quarantined": status_doc["quarantined"],
        "quarantined_by_reason": status_doc["quarantined_by_reason"],
        "rejected_by_reason": status_doc["rejected_by_reason"],
        "provision_s": round(provision_s, 1),
        "verify_read_back_s": round(verify_s, 1),
        "stored_readings_read_back": stored_unique,
    }
    rows = [
        (
            "meters",
            meters,
            f"{aggregators} aggregator(s), {summary['processes']} simulator process(es), "
            f"{authenticators} authenticator(s) over {args.transport}",
        ),
        ("readings", readings, "distinct readings in the KVS + quarantined, one simulated day"),
        ("readings_per_s", results["readings_per_s"], "target >= 20,000"),
        (
            "crypto_limit_readings_per_s",
            results["crypto_limit_readings_per_s"],
            "one core, crypto only",
        ),
        ("ratio_to_crypto_limit", results["ratio_to_crypto_limit"], ""),
        ("lost", lost, "acknowledged but not in the KVS; must be 0"),
    ]
    write_results(args.out, "ingest", results, rows)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
