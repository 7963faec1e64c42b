"""`securecloud billing`: bills from signed readings, and the regulator's check of them."""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    console,
    fail,
    handle_errors,
    print_json,
    service_url,
)

app = typer.Typer(
    help="Billing validation: bills that commit to the signed readings they count, "
    "and the regulator's audit.",
    no_args_is_help=True,
)

Start = Annotated[str, typer.Option(help="First day of the period (YYYY-MM-DD, UTC).")]
Days = Annotated[int, typer.Option(help="Length of the period in days.", min=1, max=366)]
TariffOption = Annotated[
    str | None,
    typer.Option(help="Tariff: a YAML file or a shipped name (flat, tarifa-branca, green-a4)."),
]


MetersOption = Annotated[
    str | None, typer.Option(help="Meters to bill: N, N-M, comma separated (default all).")
]
LargeTariffOption = Annotated[
    str, typer.Option(help="Tariff of supplies above 1 kV (with a demand charge).")
]


def _period(start: str, days: int):
    from securecloud.apps.billing.bill import Period

    try:
        return Period(dt.date.fromisoformat(start), days)
    except ValueError:
        fail(f"start: {start!r} is not YYYY-MM-DD")


def _tariff(spec: str):
    from securecloud.apps.billing import tariff

    try:
        path = Path(spec)
        return tariff.load(path) if path.suffix in (".yaml", ".yml") else tariff.builtin(spec)
    except FileNotFoundError:
        fail(f"tariff: {spec!r} is neither a YAML file nor a shipped tariff")
    except tariff.TariffError as exc:
        fail(f"tariff {spec}: {exc}")


def utility_key(data_dir: Path):
    """The utility's bill-signing key (P-256), made on first use; its public half beside it.
    In simulation mode it is a 0600 file; with a TEE it would come from CAS."""
    from securecloud.crypto import (
        generate_signing_key,
        load_private_key_pem,
        private_key_pem,
        public_key_pem,
    )
    from securecloud.runtime.durable import atomic_write

    directory = data_dir / "billing"
    path = directory / "utility.pem"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        key = generate_signing_key("p256")
        atomic_write(path, private_key_pem(key), mode=0o600)
        atomic_write(directory / "utility.pub.pem", public_key_pem(key.public_key()), mode=0o644)
    return load_private_key_pem(path.read_bytes())


def regulator_keys(path: Path) -> list:
    from securecloud.crypto import load_public_key_pem

    if not path.exists():
        fail(f"regulator: {path} does not exist (the authenticator writes it when it starts)")
    return [load_public_key_pem(p.encode()) for p in json.loads(path.read_text())["signing_keys"]]


def _chosen(spec: str | None, registry) -> list[int]:
    """The meters `spec` names, all of them registered (else a clear error)."""
    chosen = _meters(spec, registry)
    if unknown := [m for m in chosen if registry.get(m) is None]:
        fail(f"meters: {unknown[:5]} not in the registry")
    return chosen


def _meters(spec: str | None, registry) -> list[int]:
    if spec is None:
        return sorted(m for m, r in registry.records.items() if not r.revoked)
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            fail(f"meters: {part!r} is not N or N-M")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


@app.command()
@handle_errors
def run(
    start: Start,
    days: Days = 30,
    meters: MetersOption = None,
    tariff: TariffOption = "tarifa-branca",
    large_tariff: LargeTariffOption = "green-a4",
    as_json: Annotated[bool, typer.Option("--json", help="Print the bills' summary as JSON.")] = (
        False
    ),
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes that read, verify and bill (default: one per core; 1 = this one).",
            min=1,
            max=64,
        ),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Bill meters for a period from their signed readings in the KVS.

    Every reading is checked against its batch's signed root; the signed bills are
    stored in the KVS (bills/<start>+<days>d/<meter>.json). The work of each group
    of meters is shared by --workers processes, each with its own KVS connection."""
    from rich.progress import Progress

    from securecloud.apps.billing.job import BillingContext, bill_meters
    from securecloud.apps.metering.registry import Registry
    from securecloud.apps.metering.store import items
    from securecloud.cli.kvs import _client

    period = _period(start, days)
    with _client(data_dir, None) as kvs:
        registry = Registry.load(kvs)
        chosen = _chosen(meters, registry)
        small = _tariff(tariff)
        context = BillingContext(
            kvs,
            registry,
            {"lv1": small, "lv3": small, "mv3": _tariff(large_tariff)},
            utility_key(data_dir),
            regulator_keys(data_dir / "metering" / "regulator.json"),
        )
        made: list[dict] = []
        started = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("billing", total=len(chosen))
            for item in items(chosen):
                made += bill_meters(context, item, period, int(time.time()), workers)
                progress.update(task, completed=len(made))
    elapsed = time.perf_counter() - started
    summary = {
        "period": period.to_json(),
        "bills": len(made),
        "total": str(sum(Decimal(b["total"]) for b in made)),
        "readings": sum(b["readings"]["count"] for b in made),
        "missing": sum(b["readings"]["missing_count"] for b in made),
        "with_gaps": sum(1 for b in made if b["readings"]["missing_count"]),
        "consumers_per_s": round(len(made) / elapsed, 1) if elapsed else None,
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"{summary['bills']} bills for {start} + {days} days: {summary['readings']:,} "
            f"signed readings, {summary['missing']:,} intervals missing "
            f"({summary['with_gaps']} bills list gaps); total {summary['total']} "
            f"({summary['consumers_per_s']} consumers/s)"
        )


@app.command()
@handle_errors
def submit(
    start: Start,
    days: Days = 30,
    meters: MetersOption = None,
    tariff: TariffOption = "tarifa-branca",
    large_tariff: LargeTariffOption = "green-a4",
    workers: Annotated[int, typer.Option(help="Attested workers at start.", min=1)] = 1,
    deadline: Annotated[float, typer.Option(help="Seconds the job should take at most.")] = 600,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Bill meters as an Asperathos job, and wait for it.

    Attested batch workers get the KVS key, the utility's signing key and the regulator's
    keys from CAS (the `billing` session); the signing key's public half is written to
    <data dir>/billing/utility.pub.pem. Exit 1 unless the job finished."""
    from securecloud.apps.billing.batch import SESSION, item
    from securecloud.apps.metering.registry import Registry
    from securecloud.apps.metering.store import items
    from securecloud.cli.batch import run_job
    from securecloud.cli.kvs import _client

    period = _period(start, days)
    for spec in (tariff, large_tariff):
        _tariff(spec)  # refuse a bad tariff before anything runs
    with _client(data_dir, None) as kvs:
        chosen = _chosen(meters, Registry.load(kvs))
    work = [item(group, period.start, period.days, tariff, large_tariff) for group in items(chosen)]
    run = run_job(data_dir, "billing", work, workers, deadline)
    _save_utility_key(data_dir, SESSION)
    prefix = f"bills/{period.start.isoformat()}+{period.days}d/"
    with _client(data_dir, None) as kvs:
        stored = len(kvs.list("metering", prefix, "", 1000))
    sample = run.get("last_sample") or {}
    console.print(
        f"{run['id']} {run['status']}: {sample.get('done', 0)}/{sample.get('total', 0)} items; "
        f"{stored} bills under {prefix} (first 1,000 counted)"
    )
    if run["status"] != "finished":
        raise typer.Exit(1)


def _save_utility_key(data_dir: Path, session: str) -> None:
    """The public half of the job's signing key, for regulators (from CAS, as owner)."""
    from securecloud.infra.cas.client import owner_client
    from securecloud.runtime.durable import atomic_write

    with owner_client(
        service_url(data_dir, "cas", "https://127.0.0.1:8081"),
        data_dir / "cas" / "ca.crt",
        data_dir / "identity",
    ) as cas:
        public = cas.show(session)["secrets"]["utility_key"]["public_key"]
    (data_dir / "billing").mkdir(parents=True, exist_ok=True)
    atomic_write(data_dir / "billing" / "utility.pub.pem", public.encode(), mode=0o644)


@app.command()
@handle_errors
def export(
    meter: Annotated[int, typer.Argument(help="Meter id.")],
    start: Start,
    days: Days = 30,
    out: Annotated[Path, typer.Option(help="Directory for bill.json and evidence.json.")] = Path(
        "."
    ),
    hash_only: Annotated[
        bool, typer.Option(help="Evidence with reading hashes only (no consumption values).")
    ] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Write a stored bill and its evidence for the regulator.

    The evidence holds the period's readings (or only their hashes), each reading's audit
    path and the signed roots of their batches."""
    from securecloud.apps.billing.job import evidence_for
    from securecloud.cli.kvs import _client

    period = _period(start, days)
    with _client(data_dir, None) as kvs:
        bill, evidence = evidence_for(
            kvs, meter, period, regulator_keys(data_dir / "metering" / "regulator.json"), hash_only
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "bill.json").write_text(json.dumps(bill, indent=1, sort_keys=True))
    (out / "evidence.json").write_text(json.dumps(evidence, sort_keys=True))
    console.print(
        f"wrote {out / 'bill.json'} and {out / 'evidence.json'} "
        f"({len(evidence['readings'])} readings{', hashes only' if hash_only else ''})"
    )


@app.command()
@handle_errors
def verify(
    bill: Annotated[Path, typer.Argument(help="The bill (JSON).")],
    evidence: Annotated[Path, typer.Option(help="The evidence file (JSON).")],
    tariff: TariffOption = None,
    utility_key_file: Annotated[
        Path | None,
        typer.Option("--utility-key", help="Utility's public key PEM (default the data dir's)."),
    ] = None,
    regulator: Annotated[
        Path | None,
        typer.Option(
            help="regulator.json with the registered signing keys (default the data dir's)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """The regulator's check of a bill, with verification keys only.

    Checks that the bill counted every signed reading of the period exactly once and that
    its total follows from them and the tariff; with hash-only evidence, completeness and
    integrity without the values. Exit 1 on any problem."""
    from securecloud.apps.billing.audit import audit
    from securecloud.crypto import load_public_key_pem

    try:
        bill_doc = json.loads(bill.read_text())
        evidence_doc = json.loads(evidence.read_text())
    except json.JSONDecodeError as exc:
        fail(f"bill or evidence: not JSON ({exc})")
    tariff_obj = _tariff(tariff or bill_doc.get("tariff", {}).get("name", "tarifa-branca"))
    utility_path = utility_key_file or data_dir / "billing" / "utility.pub.pem"
    if not utility_path.exists():
        fail(f"utility-key: {utility_path} does not exist")
    result = audit(
        bill_doc,
        evidence_doc,
        tariff_obj,
        [load_public_key_pem(utility_path.read_bytes())],
        regulator_keys(regulator or data_dir / "metering" / "regulator.json"),
    )
    if as_json:
        print_json(result.to_json())
    elif result.ok:
        console.print(
            f"[green]bill of meter {result.meter} verified[/] ({result.mode}): "
            f"{result.readings} signed readings, each counted once"
            + ("" if result.mode == "hash-only" else "; the total follows from them and the tariff")
        )
    else:
        for problem in result.problems:
            console.print(f"[red]{problem['check']}[/]: {problem['detail']}")
    if not result.ok:
        raise typer.Exit(1)
