"""Starting the gateway as an attested service: its CAS policy, then the launch.

`securecloud kvs serve` writes the session `kvs` (service `gateway`) that
admits only the measured `kvs-gateway` code and gives it: a master key
(aes-256, kept across policy updates), the node token, a TLS certificate from
the session's own CA, and the API-key store. The admin key's secret is
generated here once and kept in <data dir>/kvs/credentials.json (0600) for the
CLI; in the policy it is a secret with a value, which `policy show` redacts.
The session CA's certificate (public) goes to <data dir>/kvs/ca.crt so clients
can verify the gateway.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from securecloud.runtime.durable import atomic_write
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure

SESSION = "kvs"
# API keys of platform services, each exported to the CAS session of that name
# (which imports it as `kvs_secret`): tenant -> bucket scopes.
TENANTS = {
    "metering": {"metering": ["read", "write", "admin"]},
    "billing": {"metering": ["read", "write"]},  # billing jobs read readings, write bills
    "fraud": {"metering": ["read", "write"]},  # fraud jobs read readings, write scores
    "portal": {"portal": ["read", "write"]},  # portal instances: consumers' databases
    "sql": {"sql": ["read", "write"]},  # CascaDB: its log, blocks and manifest
}


@dataclass(frozen=True)
class GatewayDeployment:
    data_dir: Path
    cas_url: str
    cas_ca: Path
    identity: Path
    host: str = "127.0.0.1"
    port: int = 8083
    nodes: tuple[str, ...] = ()
    node_token: str | None = None
    coder: str = "zfec"

    @property
    def directory(self) -> Path:
        return self.data_dir / "kvs"

    def credentials(self) -> dict:
        path = self.directory / "credentials.json"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(
                path, json.dumps({"id": "admin", "secret": secrets.token_urlsafe(32)}).encode()
            )
        return json.loads(path.read_text())

    def policy(self) -> dict:
        creds = self.credentials()
        command = [
            "--data-dir",
            str(self.data_dir.resolve()),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--coder",
            self.coder,
        ]
        for node in self.nodes:
            command += ["--node", node]
        key_store = {
            "keys": [
                {
                    "id": creds["id"],
                    "secret": "$$SC::admin_secret$$",
                    "tenant": "operator",
                    "scopes": {"*": ["read", "write", "admin"]},
                },
                *(
                    {
                        "id": tenant,
                        "secret": f"$$SC::{tenant}_secret$$",
                        "tenant": tenant,
                        "scopes": scopes,
                    }
                    for tenant, scopes in TENANTS.items()
                ),
            ]
        }
        policy = {
            "name": SESSION,
            "services": [
                {
                    "name": "gateway",
                    "mrenclaves": [measure(load_manifest("kvs-gateway"))],
                    "command": command,
                    "environment": {
                        "SECURECLOUD_KVS_MASTER_KEY": "$$SC::master_key$$",
                        "SECURECLOUD_KVS_NODE_TOKEN": "$$SC::node_token$$",
                    },
                    "injection_files": [
                        {"path": "tls/gateway.crt", "content": "$$SC::gateway_tls.crt$$"},
                        {"path": "tls/gateway.key", "content": "$$SC::gateway_tls.key$$"},
                        {"path": "api-keys.json", "content": json.dumps(key_store)},
                    ],
                    "heap_mb": 32,
                }
            ],
            "secrets": [
                {"name": "master_key", "kind": "aes-256"},
                {"name": "node_token", "kind": "ascii", "value": self.node_token or "-"},
                {"name": "admin_secret", "kind": "ascii", "value": creds["secret"]},
                *(
                    {"name": f"{tenant}_secret", "kind": "ascii", "export": [tenant]}
                    for tenant in TENANTS
                ),
                {"name": "kvs_ca", "kind": "x509-ca"},
                {
                    "name": "gateway_tls",
                    "kind": "x509",
                    "issuer": "kvs_ca",
                    "san": sorted({"localhost", "127.0.0.1", self.host}),
                    "valid_for": 365,
                },
            ],
            "security": {"attestation": {"tolerate": ["simulation"]}},
        }
        return policy

    def apply(self) -> str:
        """Write or update the session; save the CA certificate; return the config id."""
        from securecloud.infra.cas.client import apply_session, owner_client

        with owner_client(self.cas_url, self.cas_ca, self.identity) as client:
            apply_session(client, self.policy())
            shown = client.show(SESSION)
        atomic_write(
            self.directory / "ca.crt",
            shown["secrets"]["kvs_ca"]["certificate"].encode(),
            mode=0o644,
        )
        return f"{SESSION}/gateway"


def tenant_access(data_dir: Path, tenant: str, path: str, kvs_url: str | None = None) -> dict:
    """The CAS policy parts that give a service its KVS tenant key: an injected file
    `path` with the gateway's URL and CA and the key (imported from this session as
    `kvs_secret`), and the import itself. `kvs_url`: default the running gateway's."""
    if kvs_url is None:
        from securecloud.infra.supervisor import Supervisor

        gateway = next((r for r in Supervisor(data_dir).running() if r.name == "kvs"), None)
        if gateway is None:
            raise RuntimeError(f"{tenant}: no KVS gateway runs in {data_dir}; start it first")
        kvs_url = gateway.url
    doc = {
        "url": kvs_url,
        "ca": (data_dir / "kvs" / "ca.crt").read_text(),
        "key_id": tenant,
        "secret": "$$SC::kvs_secret$$",
    }
    return {
        "injection_files": [{"path": path, "content": json.dumps(doc)}],
        "imports": [{"session": SESSION, "secret": f"{tenant}_secret", "as": "kvs_secret"}],
    }


def injected_client(path: Path):
    """A KvsClient from a file `tenant_access` had CAS inject (inside the service)."""
    from securecloud.services.kvs.client import KvsClient

    doc = json.loads(path.read_text())
    ca = path.with_name(path.stem + "-ca.crt")
    ca.write_text(doc["ca"])
    return KvsClient(doc["url"], ca.resolve(), doc["key_id"], doc["secret"])
