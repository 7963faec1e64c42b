"""`securecloud cas serve`: obtain CAS's sealing key, open its state, serve HTTPS."""

from __future__ import annotations

import logging
from pathlib import Path

from securecloud.crypto import fingerprint, load_public_key_pem
from securecloud.infra.cas.api import create_app
from securecloud.infra.cas.config import CasConfig
from securecloud.infra.cas.errors import CasError
from securecloud.infra.cas.service import MANIFEST, Cas
from securecloud.infra.web import TlsFiles, configure_logging, serve
from securecloud.runtime.sealing import Sealer

log = logging.getLogger("securecloud.cas")


def load_platform_keys(config: CasConfig) -> dict[str, object]:
    keys = {}
    for path in config.trusted_platform_files():
        try:
            key = load_public_key_pem(path.read_bytes())
        except OSError as exc:
            raise CasError(
                f"platform key {path}: {exc} (start the LAS first or pass --platform-key)",
                reason="config",
            ) from exc
        keys[fingerprint(key)] = key
    return keys


def open_cas(config: CasConfig) -> Cas:
    recovery = None
    if config.recovery_key is not None:
        recovery = load_public_key_pem(config.recovery_key.read_bytes())
    sealer = Sealer.from_las(config.las_url, MANIFEST.name)
    return Cas(
        config.directory,
        sealer,
        load_platform_keys(config),
        nonce_ttl=config.nonce_ttl,
        recovery_public_key=recovery,
        tls_san=config.tls_san,
    )


def run(config: CasConfig) -> None:
    configure_logging(config.log_level)
    cas = open_cas(config)
    cert, key = cas.server_tls
    log.info(
        "CAS listening",
        extra={
            "fields": {"url": f"https://{config.host}:{config.port}", "sessions": len(cas.sessions)}
        },
    )
    try:
        serve(
            create_app(cas),
            config.host,
            config.port,
            TlsFiles(cert, key, client_ca_pem=cas.ca_pem, require_client_cert=False),
        )
    finally:
        cas.close()
        log.info("CAS stopped")


def main(argv: list[str]) -> int:
    """Entry point when CAS itself runs under the launcher (manifest `cas`):
    argv is [data_dir, port, las_url], as a policy's `command` gives them."""
    data_dir, port, las_url = [*argv, ".securecloud", str(CasConfig.port), CasConfig.las_url][:3]
    run(CasConfig(data_dir=Path(data_dir), port=int(port), las_url=las_url))
    return 0
