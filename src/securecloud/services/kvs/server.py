"""The gateway as an attested service (`kvs-gateway`): it starts only with what CAS releases.

CAS gives it, after attestation: the master key (SECURECLOUD_KVS_MASTER_KEY),
the node token (SECURECLOUD_KVS_NODE_TOKEN, may be empty for embedded nodes),
its TLS certificate and key and the API-key store (injected files), and its
arguments. Without them it refuses to start.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from securecloud.infra.web import TlsFiles, configure_logging, serve
from securecloud.runtime.manifest import builtin_service
from securecloud.services.kvs.api import create_app
from securecloud.services.kvs.apikeys import KeyStore
from securecloud.services.kvs.codec import KvsKeys
from securecloud.services.kvs.coder import CODERS
from securecloud.services.kvs.gateway import Gateway
from securecloud.services.kvs.index import Index
from securecloud.services.kvs.node import HttpFragmentStore
from securecloud.services.kvs.packstore import PackStore
from securecloud.services.kvs.s3store import S3FragmentStore

MANIFEST = builtin_service("kvs-gateway", "securecloud.services.kvs.server:main", heap_mb=32)
DEFAULT_PORT = 8083
log = logging.getLogger("securecloud.kvs")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvs-gateway")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--node", action="append", default=[], help="storage node URL (repeatable)")
    p.add_argument("--embedded-nodes", type=int, default=9)
    p.add_argument("--coder", choices=sorted(CODERS), default="zfec")
    p.add_argument("--tls-cert", type=Path, default=Path("tls/gateway.crt"))
    p.add_argument("--tls-key", type=Path, default=Path("tls/gateway.key"))
    p.add_argument("--api-keys", type=Path, default=Path("api-keys.json"))
    p.add_argument("--log-level", default="info")
    return p


def open_gateway(args, master: bytes, node_token: str | None) -> Gateway:
    directory = args.data_dir / "kvs"
    directory.mkdir(parents=True, exist_ok=True)
    keys = KvsKeys.from_master(master)
    if args.node:
        stores = [
            S3FragmentStore(url) if url.startswith("s3+") else HttpFragmentStore(url, node_token)
            for url in args.node
        ]
    else:
        stores = [
            PackStore(directory / "nodes" / f"node-{i}", name=f"local-{i}")
            for i in range(args.embedded_nodes)
        ]
    return Gateway(
        keys, stores, Index(directory / "index.log", keys.index_key), CODERS[args.coder]()
    )


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    master_hex = os.environ.get("SECURECLOUD_KVS_MASTER_KEY", "")
    if len(master_hex) != 64:
        print("kvs-gateway: no master key from CAS; refusing to start", file=sys.stderr)
        return 3
    node_token = os.environ.get("SECURECLOUD_KVS_NODE_TOKEN", "")
    gateway = open_gateway(
        args, bytes.fromhex(master_hex), None if node_token in ("", "-") else node_token
    )  # "-": no token
    keys = KeyStore.from_json(args.api_keys.read_text())
    tls = TlsFiles(args.tls_cert.read_bytes(), args.tls_key.read_bytes())
    log.info(
        "KVS gateway listening",
        extra={"fields": {"url": f"https://{args.host}:{args.port}", "nodes": len(gateway.nodes)}},
    )
    try:
        serve(create_app(gateway, keys), args.host, args.port, tls)
    finally:
        gateway.close()
    return 0
