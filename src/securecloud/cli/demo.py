"""`securecloud demo`: the platform end to end, on this machine, then cleaned up.

Steps: start a LAS and a CAS (supervised processes, free ports, a temporary
data directory), enroll a policy owner, measure the demo service, apply a
policy with generated secrets, a CAS-issued TLS certificate and an injected
file, launch the service in enclave mode (it attests and receives them), show
a refused launch of code the policy does not list, verify the audit log; then
the metering ingestion: the secure KVS, an attested authenticator and an
aggregator, `--meters` simulated meters for `--days` days (`--thieves` of
them tamper with their last day), the counts, and one stored reading checked
against its signed batch as a regulator would; then the applications
(demo_apps.py): bills for every meter, each verified as the regulator would,
the fraud ranking of the last day, and report.html + report.json in `--out`;
stop everything.
"""

import datetime as dt
import itertools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import console, handle_errors

POLICY = """\
name: demo
version: "0.3"
services:
  - name: echo
    mrenclaves: [{mrenclave}]
    command: ["hello", "from", "CAS"]
    environment:
      GREETING: "configuration released by CAS after attestation"
      API_TOKEN: "$$SC::api_token$$"
    injection_files:
      - path: token.txt
        content: "$$SC::api_token$$"
      - path: tls/service.crt
        content: "$$SC::service_tls.crt$$"
      - path: tls/service.key
        content: "$$SC::service_tls.key$$"
    heap_mb: 16
  - name: impostor
    mrenclaves: ["{wrong}"]
secrets:
  - name: api_token
    kind: ascii
    size: 32
  - name: service_ca
    kind: x509-ca
  - name: service_tls
    kind: x509
    issuer: service_ca
    san: [echo.demo.local, 127.0.0.1]
    valid_for: 30
security:
  attestation:
    tolerate: [simulation]
access_policy:
  read: [CREATOR]
  update: [CREATOR]
"""


START = dt.date(2026, 3, 2)


_steps = itertools.count(1)


def _step(text: str) -> None:
    """Print the next numbered step (numbered as they run: optional steps may be skipped)."""
    console.print(f"\n[bold cyan]{next(_steps)}.[/] [bold]{text}[/]")


@handle_errors
def demo(
    keep: Annotated[
        bool, typer.Option(help="Keep the demo's data directory for inspection.")
    ] = False,
    meters: Annotated[int, typer.Option(help="Simulated meters.", min=1, max=64000)] = 2000,
    days: Annotated[int, typer.Option(help="Simulated days of 15-minute reports.", min=2)] = 7,
    thieves: Annotated[
        float,
        typer.Option(
            help="Share of meters that tamper with their last day's readings.", min=0, max=0.5
        ),
    ] = 0.05,
    out: Annotated[
        Path, typer.Option(help="Directory for report.html, report.json and the images.")
    ] = Path("demo-report"),
    collector: Annotated[
        bool,
        typer.Option(
            help="Also run the utility's unmodified SQL collector on the readings, through "
            "CascaDB (SQL over the secure KVS)."
        ),
    ] = False,
) -> None:
    """Run the whole pipeline on this machine and write a report.

    LAS and CAS, a policy and an attested service that receives a generated secret, a TLS
    certificate and injected files; meters (some of them thieves) through the aggregator
    and the attested authenticator into the secure KVS; bills for every meter, each
    verified as the regulator would; a fraud ranking; report.html and report.json in
    --out; then clean up."""
    from securecloud.crypto import load_public_key_pem
    from securecloud.infra.cas.audit import verify_log
    from securecloud.infra.cas.client import CasClient
    from securecloud.infra.supervisor import Supervisor, free_port
    from securecloud.runtime.launcher import LaunchSpec, launch
    from securecloud.runtime.manifest import load_manifest
    from securecloud.runtime.measurement import measure

    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="securecloud-demo-"))
    supervisor = Supervisor(data_dir)
    console.print(
        "[bold]securecloud demo[/] — simulation mode: the full attestation protocol, "
        "[yellow]no hardware isolation[/] (see docs/threat-model.md)"
    )
    try:
        _step("Start the local attestation service (LAS) and CAS")
        las, cas = supervisor.up(free_port(), free_port())
        platform = supervisor.health(las)["platform_id"]
        console.print(f"   LAS {las.url}  platform id {platform[:32]}…")
        console.print(f"   CAS {cas.url}  state sealed to CAS's measurement, audit log signed")

        _step("Enroll a policy owner (client certificate issued by CAS)")
        ca_file = data_dir / "cas" / "ca.crt"
        with CasClient(cas.url, ca_file) as anonymous:
            owner = anonymous.enroll(data_dir / "identity")
        console.print(f"   owner key fingerprint {owner.fingerprint()[:32]}…")

        _step("Measure the service to be trusted")
        mrenclave = measure(load_manifest("demo-echo"))
        console.print(f"   demo-echo mrenclave {mrenclave}")

        _step("Apply the policy: who may run, what it receives")
        policy = POLICY.format(mrenclave=mrenclave, wrong="0" * 64)
        with CasClient(cas.url, ca_file, owner) as client:
            applied = client.apply(policy)
            shown = client.show("demo")
        console.print(f"   session demo created, hash {applied['hash'][:32]}…")
        kinds = ", ".join(f"{n} ({s['kind']})" for n, s in shown["secrets"].items())
        console.print(f"   generated secrets: {kinds} — values never leave CAS unencrypted")

        def run(config_id: str):
            spec = LaunchSpec(
                service="demo-echo",
                config_id=config_id,
                cas_addr=cas.url,
                cas_ca=ca_file,
                las_addr=las.url,
                ledger_dir=data_dir / "runtime",
                workdir=data_dir / "runtime" / "work" / config_id.replace("/", "_"),
            )
            process = launch(spec, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = process.communicate(timeout=60)
            return process.returncode, out, err

        _step("Launch demo-echo in enclave mode as demo/echo")
        console.print(
            "   launcher: clean environment, no core dumps, not dumpable; the service "
            "gets its arguments, environment and files only after attestation"
        )
        code, printed, err = run("demo/echo")
        console.print(printed.rstrip(), markup=False)
        if code != 0:
            raise RuntimeError(f"demo-echo failed ({code}): {err}")
        console.print(
            "   [green]attested: CAS verified the quote, nonce, key binding and "
            "measurement, then released the configuration[/]"
        )

        _step("Launch the same code as demo/impostor, whose policy lists other code")
        code, printed, err = run("demo/impostor")
        reason = next((line for line in err.splitlines() if '"refused"' in line), err.strip())
        console.print(f"   exit {code}: {reason}", markup=False)
        if code != 3:
            raise RuntimeError("the impostor was not refused")
        console.print("   [green]refused: no secret, no argument, no file reached it[/]")

        _step("Verify CAS's audit log (numbered, signed, hash-chained)")
        key = load_public_key_pem((data_dir / "cas" / "audit.pub").read_bytes())
        head = verify_log(data_dir / "cas" / "audit.log", key)
        console.print(f"   {head.seq} entries verify; head {head.hash[:32]}…")

        kvs_url = _ingest(supervisor, data_dir, las.url, cas.url, meters, days, thieves)
        if collector:
            _collector(supervisor, data_dir, las.url, cas.url, kvs_url, days)
        from securecloud.apps.metering.fleet import Fleet
        from securecloud.apps.metering.model import consumer_for
        from securecloud.apps.metering.theft import kind_for
        from securecloud.cli import demo_apps

        fleet = Fleet.load(data_dir / "meters")
        truth = {}
        for meter in range(1, meters + 1):
            large = consumer_for(fleet.seed, meter, fleet.large_share).kind == "large"
            kind = kind_for(fleet.seed, meter, thieves, large)
            if kind is not None:
                truth[meter] = kind
        demo_apps.run(_step, data_dir, kvs_url, meters, days, START, truth, out.resolve())
    finally:
        _step("Stop the platform and clean up")
        stopped = supervisor.stop_all()
        console.print(f"   stopped {', '.join(stopped) or 'nothing'}")
        if keep:
            console.print(f"   data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    console.print(f"\n[bold green]demo finished in {time.monotonic() - started:.1f} s[/]")


def _ingest(
    supervisor, data_dir: Path, las_url: str, cas_url: str, meters: int, days: int, thieves: float
) -> str:
    """Steps 8-11: the metering pipeline from meters to signed readings in the KVS;
    returns the KVS gateway's URL."""
    import json

    from securecloud.apps.metering import store
    from securecloud.apps.metering.fleet import provision
    from securecloud.apps.metering.registry import BUCKET, KEY, Registry
    from securecloud.cli.ingest import api
    from securecloud.cli.kvs import _client
    from securecloud.cli.meters import run_fleet
    from securecloud.crypto import load_public_key_pem
    from securecloud.infra.supervisor import IngestPorts, free_port

    _step("Start the secure KVS and the ingestion: an attested authenticator, an aggregator")
    kvs = supervisor.start_kvs(free_port(), cas_url, las_url)
    ports = IngestPorts(free_port(), free_port(), free_port(), free_port())
    auth, _aggregator = supervisor.start_ingest(ports, cas_url, las_url, kvs.url)
    console.print(f"   KVS gateway {kvs.url}: 9 storage nodes that see only ciphertext")
    console.print(
        f"   authenticator {auth.url}: attested; its P-256 key, the regulator-registered "
        "signing key and a KVS API key came from CAS"
    )
    console.print(f"   aggregator 127.0.0.1:{ports.aggregator}: untrusted, never decrypts")

    _step(f"Provision {meters:,} meters: P-256 keys, registered with the platform")
    point = bytes.fromhex(
        json.loads((data_dir / "metering" / "authenticator.json").read_text())["public_key"]
    )
    _fleet, records = provision(data_dir / "meters", meters, point)
    with _client(data_dir, kvs.url) as client:
        client.put(BUCKET, KEY, Registry({r.meter_id: r for r in records}).to_json())
    kinds = ", ".join(sorted({r.meter_class for r in records}))
    console.print(f"   registry in the KVS: {len(records):,} meters (supply classes {kinds})")

    _step(f"Run them for {days} simulated days (BDEW profiles, faults, 15-minute reports)")
    config = {
        "targets": [f"127.0.0.1:{ports.aggregator}"],
        "start": START.isoformat(),
        "days": days,
        "speedup": 0.0,
        "window": 16,
        "timeout": 60.0,
        "thieves": thieves,
    }
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("   reports acknowledged", total=meters * 96 * days)
        summary = run_fleet(
            data_dir / "meters", meters, config, None, lambda n: bar.update(task, completed=n)
        )
    acked = summary["acked"]
    console.print(
        f"   {summary['sent']:,} encrypted frames sent, {acked.get('stored', 0):,} stored, "
        f"{acked.get('duplicate', 0):,} duplicates acknowledged, "
        f"{acked.get('quarantined', 0):,} quarantined; "
        f"{summary['readings_per_s']:,.0f} reports/s"
    )

    _step("The authenticator's counts, and one reading checked as the regulator would")
    with api(data_dir, auth.url) as client:
        client.flush()
        status = client.status()
    console.print(
        f"   accepted {status['accepted']:,}  duplicates {status['duplicates']:,}  "
        f"missing {status['missing']:,}  quarantined {status['quarantined']:,} "
        f"{status['quarantined_by_reason'] or ''}  refused {status['rejected_by_reason'] or 0}"
    )
    console.print(
        f"   {status['batches']:,} signed batches and {status['segments']:,} segments in the KVS; "
        f"{summary['lost_by_fault']:,} reports lost by meters (offline with a lost buffer)"
    )
    regulator = json.loads((data_dir / "metering" / "regulator.json").read_text())
    key = load_public_key_pem(regulator["signing_keys"][0].encode())
    with _client(data_dir, kvs.url) as client:
        segment = client.get(store.BUCKET, client.list(store.BUCKET, "readings/", "", 1)[0]["key"])
    record = store.verify_segment(segment, [key], proofs=True)[0]
    store.verify_stored(record, store.segment_roots(segment)[record.batch_seq], key)
    console.print(
        f"   meter {record.meter_id}, report {int.from_bytes(record.report[:4], 'big')}: "
        f"inclusion proof ({len(record.proof)} hashes) to batch {record.batch_seq}'s root, "
        "[green]signature valid under the regulator-registered key[/]"
    )
    return kvs.url


def _collector(supervisor, data_dir: Path, las_url: str, cas_url: str, kvs_url: str, days: int):
    """The legacy path: the stored readings exported as the head-end CSV, then the
    utility's collector (psycopg, plain INSERTs) writing them into CascaDB."""
    import sys

    import psycopg
    from rich.progress import Progress

    from securecloud.apps.metering.export import export_csv
    from securecloud.cli.billing import regulator_keys
    from securecloud.cli.kvs import _client
    from securecloud.infra.supervisor import free_port
    from securecloud.services.sql.deploy import conninfo

    _step("Run the utility's unmodified SQL collector through CascaDB")
    port = free_port()
    sql = supervisor.start_sql(port, free_port(), cas_url, las_url, kvs_url)
    console.print(
        f"   CascaDB {sql.url} and PostgreSQL protocol on 127.0.0.1:{port}: attested; its TLS "
        "key, access token and KVS key came from CAS; rows stored encrypted, erasure-coded"
    )
    keys = regulator_keys(data_dir / "metering" / "regulator.json")
    csv_path = data_dir / "head-end.csv"
    with _client(data_dir, kvs_url) as kvs, open(csv_path, "w", newline="") as stream:
        total = export_csv(kvs, START, days, keys, stream)
    console.print(f"   {total:,} verified readings exported as the head-end CSV")
    connection_string = conninfo(data_dir, port, user="collector")
    command = [sys.executable, "-m", "securecloud.apps.collector", connection_string]
    command += ["--input", str(csv_path), "--progress"]
    began = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("   rows INSERTed", total=total)
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        complaints = []
        for line in process.stderr:
            if line.startswith("stored "):
                bar.update(task, completed=int(line.split()[1]))
            else:
                complaints.append(line)
        printed = process.stdout.read()
        if process.wait() != 0:
            raise RuntimeError(
                f"the collector failed ({process.returncode}): {''.join(complaints)}"
            )
    seconds = time.perf_counter() - began
    console.print(f"   {printed.strip()} ({total / seconds:,.0f} rows/s)", markup=False)
    with psycopg.connect(connection_string) as connection:
        count, meters = connection.execute(
            "SELECT count(*), count(DISTINCT client_id) FROM reading"
        ).fetchone()
        top = connection.execute(
            "SELECT client_id, (max(energy) - min(energy)) / 1000.0 AS kwh FROM reading "
            "GROUP BY client_id ORDER BY kwh DESC LIMIT 3"
        ).fetchall()
    console.print(
        f"   SELECT over CascaDB: {count:,} readings of {meters:,} meters; largest "
        + ", ".join(f"meter {m} {kwh:,.1f} kWh" for m, kwh in top)
    )
