"""`securecloud runtime`: measure, sign and launch trusted services."""

import json
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    console,
    handle_errors,
    print_json,
    service_url,
)

app = typer.Typer(
    help="Trusted-execution runtime: measurement, signing, launch.", no_args_is_help=True
)

Service = Annotated[str, typer.Argument(help="A registered service name or a manifest YAML path.")]


@app.command()
@handle_errors
def services() -> None:
    """List the registered services and their heap sizes."""
    from securecloud.runtime.manifest import load_manifest, registered_services

    for name in registered_services():
        manifest = load_manifest(name)
        console.print(f"{name:<16} heap {manifest.heap_mb:>4} MB  {manifest.entry_point}")


@app.command()
@handle_errors
def measure(
    service: Service,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print manifest and file list too.")
    ] = False,
) -> None:
    """Print the measurement (MRENCLAVE analogue) of SERVICE as it is on disk now."""
    from securecloud.runtime.manifest import load_manifest
    from securecloud.runtime.measurement import code_listing
    from securecloud.runtime.measurement import measure as measure_service

    manifest = load_manifest(service)
    value = measure_service(manifest)
    if as_json:
        print_json(
            {
                "service": manifest.name,
                "mrenclave": value,
                "manifest": manifest.launch_fields(),
                "files": code_listing(manifest),
            }
        )
    else:
        typer.echo(value)


@app.command()
@handle_errors
def sign(
    service: Service,
    key: Annotated[Path, typer.Option(help="Signer's private key (PEM); created if missing.")],
    out: Annotated[Path, typer.Option(help="Where to write the sigstruct.")],
    isv_prod_id: Annotated[int, typer.Option(help="Product id (0..65535).")] = 0,
    isv_svn: Annotated[
        int, typer.Option(help="Security version (0..65535); raise it on every security fix.")
    ] = 0,
) -> None:
    """Sign SERVICE's measurement, so policies can trust its signer (MRSIGNER)."""
    from securecloud.crypto import generate_signing_key, load_private_key_pem, private_key_pem
    from securecloud.runtime.manifest import load_manifest
    from securecloud.runtime.measurement import measure as measure_service
    from securecloud.runtime.sigstruct import sign_service

    if not key.exists():
        key.write_bytes(private_key_pem(generate_signing_key("ed25519")))
        key.chmod(0o600)
    signer = load_private_key_pem(key.read_bytes())
    signed = sign_service(measure_service(load_manifest(service)), isv_prod_id, isv_svn, signer)
    out.write_bytes(signed.to_bytes())
    from securecloud.crypto import fingerprint

    console.print(f"mrenclave {signed.mrenclave}\nmrsigner  {fingerprint(signer.public_key())}")


@app.command()
@handle_errors
def launch(
    service: Service,
    config_id: Annotated[str, typer.Option(help="Policy entry to ask CAS for: SESSION/SERVICE.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    cas: Annotated[
        str | None, typer.Option(help="CAS URL (default: the one `up` started).")
    ] = None,
    cas_ca: Annotated[Path | None, typer.Option(help="CA certificate of CAS (PEM).")] = None,
    las: Annotated[
        str | None, typer.Option(help="LAS URL (default: the one `up` started).")
    ] = None,
    sigstruct: Annotated[Path | None, typer.Option(help="Sigstruct from `runtime sign`.")] = None,
    budget_mb: Annotated[int, typer.Option(help="Enclave memory budget of this node, MB.")] = 93,
    overcommit: Annotated[
        bool, typer.Option(help="Start even beyond the memory budget (logged and counted).")
    ] = False,
    attester: Annotated[str, typer.Option(help="sim or tsm.")] = "sim",
) -> None:
    """Start SERVICE in enclave mode: it attests to CAS and runs only if CAS releases its
    configuration. Exits with the service's exit code (3: attestation refused)."""
    from securecloud.infra.supervisor import CAS_PORT, LAS_PORT
    from securecloud.runtime.launcher import LaunchSpec
    from securecloud.runtime.launcher import launch as launch_service

    spec = LaunchSpec(
        service=service,
        config_id=config_id,
        cas_addr=cas or service_url(data_dir, "cas", f"https://127.0.0.1:{CAS_PORT}"),
        cas_ca=(cas_ca or data_dir / "cas" / "ca.crt").resolve(),
        las_addr=las or service_url(data_dir, "las", f"http://127.0.0.1:{LAS_PORT}"),
        ledger_dir=(data_dir / "runtime").resolve(),
        workdir=(data_dir / "runtime" / "work" / config_id.replace("/", "_")).resolve(),
        budget_mb=budget_mb,
        overcommit=overcommit,
        sigstruct=sigstruct.resolve() if sigstruct else None,
        attester=attester,
    )
    process = launch_service(spec)
    raise typer.Exit(process.wait())


@app.command()
@handle_errors
def budget(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    budget_mb: Annotated[int, typer.Option(help="Enclave memory budget of this node, MB.")] = 93,
) -> None:
    """Show the enclave memory reserved on this node, per running service."""
    from securecloud.runtime.memory import MemoryBudget

    ledger = MemoryBudget(data_dir / "runtime", budget_mb)
    entries = ledger.reservations()
    for entry in entries:
        flag = "  (overcommit)" if entry.overcommit else ""
        console.print(f"{entry.service:<16} pid {entry.pid:<8} {entry.heap_mb:>4} MB{flag}")
    used = sum(e.heap_mb for e in entries)
    console.print(
        json.dumps({"budget_mb": budget_mb, "reserved_mb": used, "free_mb": budget_mb - used})
    )
