"""`securecloud kvs`: the secure key-value / object store."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    LogLevel,
    console,
    fail,
    handle_errors,
    print_json,
    run_attested,
    service_url,
)

app = typer.Typer(
    help="Secure KVS: encrypted, erasure-coded objects on untrusted nodes.", no_args_is_help=True
)
node_app = typer.Typer(help="Untrusted storage nodes.", no_args_is_help=True)
policy_app = typer.Typer(help="Storage policies of objects.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(policy_app, name="policy")

Url = Annotated[
    str | None,
    typer.Option(
        "--url", help="Gateway URL (default: the one `up` started, else https://127.0.0.1:8083)."
    ),
]
Target = Annotated[str, typer.Argument(help="BUCKET/KEY")]


def _client(data_dir: Path, url: str | None):
    from securecloud.services.kvs.client import KvsClient

    directory = data_dir / "kvs"
    credentials, ca = directory / "credentials.json", directory / "ca.crt"
    if not credentials.exists() or not ca.exists():
        fail(f"no gateway credentials in {directory}: start one with `securecloud kvs serve`")
    creds = json.loads(credentials.read_text())
    return KvsClient(
        url or service_url(data_dir, "kvs", "https://127.0.0.1:8083"),
        ca,
        creds["id"],
        creds["secret"],
    )


def _split(target: str) -> tuple[str, str]:
    bucket, _, key = target.partition("/")
    if not bucket or not key:
        fail(f"{target!r}: expected BUCKET/KEY")
    return bucket, key


@app.command()
@handle_errors
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Address the gateway listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTPS port of the gateway.")] = 8083,
    node: Annotated[
        list[str] | None,
        typer.Option(
            help="Storage node URL (repeatable). Default: 9 node directories under the data "
            "directory, served in-process, no other process needed."
        ),
    ] = None,
    node_token_file: Annotated[
        Path | None, typer.Option(help="File holding the token the storage nodes expect.")
    ] = None,
    coder: Annotated[str, typer.Option(help="Erasure coder: zfec or pyeclib.")] = "zfec",
    cas: Annotated[str, typer.Option(help="CAS URL.")] = "https://127.0.0.1:8081",
    las: Annotated[str, typer.Option(help="LAS URL of this node.")] = "http://127.0.0.1:8080",
    cas_ca: Annotated[Path | None, typer.Option(help="CAS CA certificate.")] = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            help="Policy-owner identity folder (default <data dir>/identity; enrolled if missing)."
        ),
    ] = None,
) -> None:
    """Write the gateway's CAS policy, then run the gateway as an attested service; it gets
    its master key, TLS certificate and API keys from CAS, or does not start."""
    from securecloud.services.kvs.deploy import GatewayDeployment

    cas_ca = cas_ca or data_dir / "cas" / "ca.crt"
    token = node_token_file.read_text().strip() if node_token_file else None
    deployment = GatewayDeployment(
        data_dir,
        cas,
        cas_ca,
        identity or data_dir / "identity",
        host,
        port,
        tuple(node or ()),
        token,
        coder,
    )
    config_id = deployment.apply()
    run_attested("kvs-gateway", config_id, data_dir, data_dir / "kvs" / "work", cas, cas_ca, las)


@node_app.command("serve")
@handle_errors
def node_serve(
    directory: Annotated[Path, typer.Option(help="Where this node keeps its pack files.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8090,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the token the gateway must present (none: no check)."),
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Serve an untrusted storage node: opaque fragments, packed on local disk."""
    from securecloud.infra.web import configure_logging
    from securecloud.infra.web import serve as serve_app
    from securecloud.services.kvs.node import create_node_app
    from securecloud.services.kvs.packstore import PackStore

    configure_logging(log_level)
    store = PackStore(directory)
    token = token_file.read_text().strip() if token_file else None
    try:
        serve_app(create_node_app(store, token), host, port)
    finally:
        store.close()


@app.command()
@handle_errors
def mb(
    bucket: Annotated[str, typer.Argument(help="Bucket name.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
) -> None:
    """Make a bucket."""
    with _client(data_dir, url) as client:
        created = client.create_bucket(bucket)["created"]
    console.print(f"bucket {bucket} {'created' if created else 'exists already'}")


@app.command()
@handle_errors
def put(
    target: Target,
    file: Annotated[Path, typer.Argument(help="File to store ('-' for standard input).")],
    policy: Annotated[
        str | None, typer.Option(help="replicate:N, ec:K+M or hybrid:R+K+M (default by size).")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
) -> None:
    """Store a file as BUCKET/KEY."""
    bucket, key = _split(target)
    data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    with _client(data_dir, url) as client:
        result = client.put(bucket, key, data, policy)
    console.print(
        f"{bucket}/{key} version {result['version']} ({result['size']} bytes, {result['policy']})"
    )


@app.command()
@handle_errors
def get(
    target: Target,
    file: Annotated[Path | None, typer.Argument(help="Output file (default: stdout).")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
) -> None:
    """Fetch BUCKET/KEY."""
    bucket, key = _split(target)
    with _client(data_dir, url) as client:
        data = client.get(bucket, key)
    if file is None:
        sys.stdout.buffer.write(data)
    else:
        file.write_bytes(data)


@app.command()
@handle_errors
def ls(
    target: Annotated[str, typer.Argument(help="BUCKET or BUCKET/PREFIX.")],
    limit: Annotated[int, typer.Option(help="At most this many objects.")] = 1000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
) -> None:
    """List objects in key order."""
    bucket, _, prefix = target.partition("/")
    with _client(data_dir, url) as client:
        for obj in client.list(bucket, prefix=prefix, limit=limit):
            console.print(
                f"{obj['size']:>12}  v{obj['version']:<4} {obj['policy']:<14} {obj['key']}",
                markup=False,
            )


@app.command()
@handle_errors
def rm(target: Target, data_dir: DataDir = DEFAULT_DATA_DIR, url: Url = None) -> None:
    """Delete BUCKET/KEY."""
    bucket, key = _split(target)
    with _client(data_dir, url) as client:
        client.delete(bucket, key)
    console.print(f"deleted {bucket}/{key}")


@app.command()
@handle_errors
def stat(target: Target, data_dir: DataDir = DEFAULT_DATA_DIR, url: Url = None) -> None:
    """Policy, version and the health of every fragment, per node."""
    bucket, key = _split(target)
    with _client(data_dir, url) as client:
        print_json(client.stat(bucket, key))


@policy_app.command("set")
@handle_errors
def policy_set(
    target: Target,
    policy: Annotated[str, typer.Argument(help="replicate:N, ec:K+M or hybrid:R+K+M")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
) -> None:
    """Re-encode BUCKET/KEY under another policy (its ciphertext is not decrypted)."""
    bucket, key = _split(target)
    with _client(data_dir, url) as client:
        result = client.set_policy(bucket, key, policy)
    console.print(f"{bucket}/{key} now {result['policy']} (version {result['version']})")


@app.command()
@handle_errors
def scrub(
    sample: Annotated[
        float, typer.Option(help="Fraction of objects to check, 0 < P ≤ 1 (1: all).")
    ] = 1.0,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    url: Url = None,
) -> None:
    """Verify every fragment; rewrite missing or corrupt ones (refills a replaced node)."""
    if not 0 < sample <= 1:
        fail("--sample: must be in (0, 1]")
    with _client(data_dir, url) as client:
        print_json(client.scrub(sample))


@app.command("rebuild-index")
@handle_errors
def rebuild_index(data_dir: DataDir = DEFAULT_DATA_DIR, url: Url = None) -> None:
    """Rebuild the gateway's index from the sealed metadata on the storage nodes."""
    with _client(data_dir, url) as client:
        print_json(client.rebuild_index())
