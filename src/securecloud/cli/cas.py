"""`securecloud cas`: serve CAS, manage identities and policies, verify the audit log."""

import json
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    LogLevel,
    ShowConfig,
    console,
    fail,
    handle_errors,
    print_json,
    service_url,
)

app = typer.Typer(help="Configuration and Attestation Service.", no_args_is_help=True)
policy_app = typer.Typer(help="Apply, approve and show policies (sessions).", no_args_is_help=True)
identity_app = typer.Typer(
    help="Policy-owner identities (client certificates).", no_args_is_help=True
)
audit_app = typer.Typer(help="The signed, hash-chained audit log.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(identity_app, name="identity")
app.add_typer(audit_app, name="audit")

Url = Annotated[
    str | None,
    typer.Option(
        "--url", help="CAS URL (default: the one `up` started, else https://127.0.0.1:8081)."
    ),
]
CaFile = Annotated[
    Path | None, typer.Option("--ca", help="CAS CA certificate (default: <data dir>/cas/ca.crt).")
]
IdentityDir = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        help="Folder with identity.key and identity.crt (default: <data dir>/identity).",
    ),
]


def _client(data_dir: Path, url: str | None, ca: Path | None, identity: Path | None):
    from securecloud.infra.cas.client import CasClient, Identity
    from securecloud.infra.supervisor import CAS_PORT

    ca_file = ca or data_dir / "cas" / "ca.crt"
    if not ca_file.exists():
        fail(f"--ca: {ca_file} does not exist (is CAS running? pass its CA certificate)")
    ident = Identity(identity or data_dir / "identity")
    return CasClient(
        url or service_url(data_dir, "cas", f"https://127.0.0.1:{CAS_PORT}"), ca_file, ident
    )


@app.command()
@handle_errors
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (HTTPS).")] = 8081,
    las: Annotated[str, typer.Option(help="LAS URL: where CAS gets its sealing key.")] = (
        "http://127.0.0.1:8080"
    ),
    platform_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Public key (PEM) of a platform whose quotes CAS trusts; repeatable. "
            "Default: the local LAS's <data dir>/las/platform.pub."
        ),
    ] = None,
    recovery_key: Annotated[
        Path | None,
        typer.Option(
            help="Recovery public key (X25519 or P-256 PEM): the state key is also encrypted to "
            "it, for `cas recover` after a move or upgrade."
        ),
    ] = None,
    nonce_ttl: Annotated[
        float, typer.Option(help="Validity of an attestation challenge, seconds.")
    ] = 300.0,
    tls_san: Annotated[
        list[str] | None,
        typer.Option(
            help="Name or IP address in CAS's TLS certificate (repeatable; first start only)."
        ),
    ] = None,
    log_level: LogLevel = "info",
    show_config: ShowConfig = False,
) -> None:
    """Serve the CAS HTTPS API. Needs a running LAS for its sealing key."""
    from securecloud.infra.cas.config import CasConfig
    from securecloud.infra.cas.server import run

    config = CasConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        las_url=las,
        platform_keys=tuple(platform_key or ()),
        recovery_key=recovery_key,
        nonce_ttl=nonce_ttl,
        tls_san=tuple(tls_san or CasConfig.tls_san),
        log_level=log_level,
    )
    if show_config:
        print_json(config.show())
        return
    run(config)


@app.command()
@handle_errors
def recover(
    recovery_key: Annotated[Path, typer.Option(help="Recovery private key (PEM).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    las: Annotated[str, typer.Option(help="LAS URL of this platform.")] = "http://127.0.0.1:8080",
) -> None:
    """Re-seal CAS's state key for this code on this platform, using the recovery key."""
    from securecloud.crypto import load_private_key_pem
    from securecloud.infra.cas.service import MANIFEST
    from securecloud.infra.cas.state import recover as recover_state
    from securecloud.runtime.sealing import Sealer

    key = load_private_key_pem(recovery_key.read_bytes())
    recover_state(data_dir / "cas", key, Sealer.from_las(las, MANIFEST.name))
    console.print("state key re-sealed; CAS can start on this platform")


@identity_app.command("create")
@handle_errors
def identity_create(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
    ca: CaFile = None,
    identity: IdentityDir = None,
) -> None:
    """Create a key and have CAS certify it; prints the fingerprint to list in policies."""
    directory = identity or data_dir / "identity"
    if (directory / "identity.key").exists():
        fail(f"--identity: {directory} already holds an identity")
    with _client(data_dir, url, ca, None) as client:
        created = client.enroll(directory)
    console.print(created.fingerprint())


@policy_app.command("apply")
@handle_errors
def policy_apply(
    file: Annotated[Path, typer.Argument(help="Policy YAML file.", exists=True, dir_okay=False)],
    approval: Annotated[
        list[Path] | None,
        typer.Option(
            help="Approval file from `cas policy approve` (repeatable), for require_at_least > 1."
        ),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
    ca: CaFile = None,
    identity: IdentityDir = None,
) -> None:
    """Create a session, or update it (the file must name the current hash as predecessor)."""
    approvals = [json.loads(p.read_text()) for p in approval or []]
    with _client(data_dir, url, ca, identity) as client:
        result = client.apply(file.read_text(), approvals)
    verb = "created" if result["created"] else "updated"
    console.print(
        f"{verb} session {result['name']} version {result['version']}\nhash {result['hash']}"
    )


@policy_app.command("approve")
@handle_errors
def policy_approve(
    file: Annotated[Path, typer.Argument(help="Policy YAML file to approve.", exists=True)],
    out: Annotated[Path, typer.Option(help="Where to write the approval (JSON).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    identity: IdentityDir = None,
) -> None:
    """Sign this exact policy text with your identity, for a multi-owner update."""
    from securecloud.infra.cas.client import Identity, approve

    out.write_text(
        json.dumps(approve(file.read_text(), Identity(identity or data_dir / "identity")))
    )
    console.print(f"approval written to {out}")


@policy_app.command("show")
@handle_errors
def policy_show(
    name: Annotated[str, typer.Argument(help="Session name.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
    ca: CaFile = None,
    identity: IdentityDir = None,
) -> None:
    """Print a session's policy, hash and version; secret values are redacted."""
    with _client(data_dir, url, ca, identity) as client:
        print_json(client.show(name))


@audit_app.command("verify")
@handle_errors
def audit_verify(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    log: Annotated[
        Path | None, typer.Option(help="Audit log (default <data dir>/cas/audit.log).")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="CAS audit public key (default <data dir>/cas/audit.pub).")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Your record of the last verified head (default "
            "<data dir>/auditor/checkpoint.json); truncation and rollback below it are detected."
        ),
    ] = None,
    update_checkpoint: Annotated[
        bool, typer.Option(help="Record the verified head as the new checkpoint.")
    ] = True,
) -> None:
    """Verify numbering, hash chain and signatures of the audit log."""
    from securecloud.crypto import load_public_key_pem
    from securecloud.infra.cas.audit import AuditError, Head, verify_log

    log = log or data_dir / "cas" / "audit.log"
    key = load_public_key_pem((public_key or data_dir / "cas" / "audit.pub").read_bytes())
    checkpoint = checkpoint or data_dir / "auditor" / "checkpoint.json"
    seen = Head(**json.loads(checkpoint.read_text())) if checkpoint.exists() else None
    try:
        head = verify_log(log, key, seen)
    except AuditError as exc:
        fail(f"audit log does not verify: {exc}", code=2)
    if update_checkpoint:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(json.dumps(head.to_json()))
    since = f" (checkpoint {seen.seq} confirmed)" if seen else ""
    console.print(f"audit log OK: {head.seq} entries, head {head.hash[:16]}…{since}")
