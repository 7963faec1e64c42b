"""The CAS session `sql`: what an attested CascaDB server receives.

Service `server` admits only the measured `sql-server` code and gives it a
TLS certificate for its host (issued by the session's CA, whose certificate
goes to <data dir>/sql/ca.crt for clients), the access token (generated here
once, kept in <data dir>/sql/token for the operator, carried to the server
only through CAS), and the KVS tenant key `sql` (read/write on bucket `sql`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from securecloud.runtime.durable import atomic_write
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.services.kvs.deploy import tenant_access

SESSION = "sql"
SERVICE = "server"


def sql_dir(data_dir: Path) -> Path:
    return data_dir / "sql"


def token(data_dir: Path) -> str:
    path = sql_dir(data_dir) / "token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, secrets.token_urlsafe(32).encode(), mode=0o600)
    return path.read_text().strip()


def conninfo(data_dir: Path, port: int, host: str = "127.0.0.1", user: str = "securecloud") -> str:
    """A libpq connection string for the CascaDB that `sql serve` runs from `data_dir`:
    TLS verified against the session's CA, the access token as the password."""
    directory = sql_dir(data_dir)
    return (
        f"host={host} port={port} user={user} dbname=cascadb sslmode=verify-full "
        f"sslrootcert={directory / 'ca.crt'} password={(directory / 'token').read_text().strip()}"
    )


# microseconds a connection waits busy for its client's next message before sleeping:
# a client's next query usually comes within 0.1-0.15 ms (docs/sql.md, "Latency")
SPIN_US = 200


@dataclass(frozen=True)
class SqlDeployment:
    data_dir: Path
    cas_url: str
    cas_ca: Path
    identity: Path
    host: str = "127.0.0.1"
    port: int = 5433
    http_port: int = 8097
    cache_mb: int = 128
    kvs_url: str | None = None
    spin_us: int = SPIN_US

    def policy(self) -> dict:
        access = tenant_access(self.data_dir, SESSION, "kvs.json", self.kvs_url)
        command = ["--host", self.host, "--port", str(self.port)]
        command += ["--http-port", str(self.http_port), "--cache-mb", str(self.cache_mb)]
        command += ["--spin-us", str(self.spin_us)]
        return {
            "name": SESSION,
            "services": [
                {
                    "name": SERVICE,
                    "mrenclaves": [measure(load_manifest("sql-server"))],
                    "command": command,
                    "injection_files": [
                        {"path": "tls/server.key", "content": "$$SC::sql_tls.key$$"},
                        {"path": "tls/server.crt", "content": "$$SC::sql_tls.crt$$"},
                        {"path": "token", "content": "$$SC::sql_token$$"},
                        *access["injection_files"],
                    ],
                    "heap_mb": 256,
                }
            ],
            "secrets": [
                {"name": "sql_ca", "kind": "x509-ca", "common_name": "securecloud CascaDB"},
                {
                    "name": "sql_tls",
                    "kind": "x509",
                    "issuer": "sql_ca",
                    "san": sorted({"localhost", "127.0.0.1", self.host}),
                    "valid_for": 365,
                },
                {"name": "sql_token", "kind": "ascii", "value": token(self.data_dir)},
            ],
            "imports": access["imports"],
            "security": {"attestation": {"tolerate": ["simulation"]}},
        }

    def apply(self) -> str:
        from securecloud.infra.cas.client import apply_session, owner_client

        with owner_client(self.cas_url, self.cas_ca, self.identity) as client:
            apply_session(client, self.policy())
            shown = client.show(SESSION)
        atomic_write(
            sql_dir(self.data_dir) / "ca.crt",
            shown["secrets"]["sql_ca"]["certificate"].encode(),
            mode=0o644,
        )
        return f"{SESSION}/{SERVICE}"
