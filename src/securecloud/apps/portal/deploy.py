"""The CAS session `portal`: what an attested portal instance receives.

Service `instance` admits only the measured `portal-instance` code and gives it
the portal's issuing CA (an x509 secret with `ca: true`, confined by name
constraints to the consumers' domain; its key is released so the instance can
name the consumer it serves during the handshake), the consumer CA's
certificate (public; it verifies clients), and the KVS tenant key `portal`
(read/write on bucket `portal`, where the consumers' SQLCipher files live).
The session CA's certificate goes to <data dir>/portal/ca.crt: clients trust
instances through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securecloud.apps.portal.names import DOMAIN
from securecloud.runtime.durable import atomic_write
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.services.kvs.deploy import tenant_access

SESSION = "portal"
SERVICE = "instance"


def portal_dir(data_dir: Path) -> Path:
    return data_dir / "portal"


@dataclass(frozen=True)
class PortalDeployment:
    data_dir: Path
    cas_url: str
    cas_ca: Path
    identity: Path
    kvs_url: str | None = None
    host: str = "127.0.0.1"
    domain: str = DOMAIN
    session_ttl: float = 900.0
    reuse: bool = False

    def policy(self) -> dict:
        consumers_ca = portal_dir(self.data_dir) / "consumers-ca.crt"
        if not consumers_ca.exists():
            raise FileNotFoundError(
                f"{consumers_ca}: no consumers yet; run `securecloud portal provision` first"
            )
        access = tenant_access(self.data_dir, SESSION, "kvs.json", self.kvs_url)
        command = ["--host", self.host, "--domain", self.domain]
        command += ["--session-ttl", str(self.session_ttl)] + (["--reuse"] if self.reuse else [])
        return {
            "name": SESSION,
            "services": [
                {
                    "name": SERVICE,
                    "mrenclaves": [measure(load_manifest("portal-instance"))],
                    "command": command,
                    "injection_files": [
                        {"path": "tls/issuer.key", "content": "$$SC::portal_issuer.key$$"},
                        {"path": "tls/issuer.crt", "content": "$$SC::portal_issuer.crt$$"},
                        {"path": "tls/consumers-ca.crt", "content": consumers_ca.read_text()},
                        *access["injection_files"],
                    ],
                    "heap_mb": 16,
                }
            ],
            "secrets": [
                {"name": "portal_ca", "kind": "x509-ca", "common_name": "securecloud portal"},
                {
                    "name": "portal_issuer",
                    "kind": "x509",
                    "issuer": "portal_ca",
                    "ca": True,
                    "common_name": "securecloud portal instances",
                    "san": [self.domain],
                    "valid_for": 365,
                },
            ],
            "imports": access["imports"],
            "security": {"attestation": {"tolerate": ["simulation"]}},
        }

    def apply(self) -> str:
        """Write or update the session; save the CA clients trust; return the config id."""
        from securecloud.infra.cas.client import apply_session, owner_client

        with owner_client(self.cas_url, self.cas_ca, self.identity) as client:
            apply_session(client, self.policy())
            shown = client.show(SESSION)["secrets"]
        atomic_write(
            portal_dir(self.data_dir) / "ca.crt",
            shown["portal_ca"]["certificate"].encode(),
            mode=0o644,
        )
        return f"{SESSION}/{SERVICE}"
