"""Starting authenticators as attested services: the CAS session `metering`.

The session admits only the measured `meter-authenticator` code and gives it
the authenticator key (P-256; the public half is what meters are provisioned
with), the regulator-registered signing key (its public half is written to
<data dir>/metering/regulator.json: the registration the regulator verifies
batch roots and bills with), a TLS certificate from the session's CA, the KVS
API key exported by the `kvs` session, and the operator API token (kept in
<data dir>/metering/credentials.json, 0600). Several authenticators (names,
ports, shards) are services of the one session: each keeps the others' entries.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from securecloud.crypto import load_public_key_pem
from securecloud.crypto.agreement import public_bytes
from securecloud.runtime.durable import atomic_write
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.services.kvs.deploy import tenant_access

SESSION = "metering"


@dataclass(frozen=True)
class AuthenticatorDeployment:
    data_dir: Path
    cas_url: str
    cas_ca: Path
    identity: Path
    kvs_url: str
    name: str = "auth-1"
    host: str = "127.0.0.1"
    port: int = 4810
    api_port: int = 8084
    flush_mb: int = 16
    nats: str | None = None
    partitions: int = 1
    shard: str = "0/1"

    @property
    def directory(self) -> Path:
        return self.data_dir / "metering"

    def credentials(self) -> dict:
        path = self.directory / "credentials.json"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps({"token": secrets.token_urlsafe(32)}).encode())
        return json.loads(path.read_text())

    def policy(self, others: list[dict] = ()) -> dict:
        """The session with this authenticator; `others`: the other authenticators'
        service entries, kept as they are."""
        access = tenant_access(self.data_dir, SESSION, "kvs.json", self.kvs_url)
        command = [
            "--name", self.name,
            "--host", self.host,
            "--port", str(self.port),
            "--api-port", str(self.api_port),
            "--flush-mb", str(self.flush_mb),
            "--partitions", str(self.partitions),
            "--shard", self.shard,
        ]  # fmt: skip
        if self.nats:
            command += ["--nats", self.nats]
        return {
            "name": SESSION,
            "services": [
                *others,
                {
                    "name": self.name,
                    "mrenclaves": [measure(load_manifest("meter-authenticator"))],
                    "command": command,
                    "environment": {"SECURECLOUD_METERING_API_TOKEN": "$$SC::api_token$$"},
                    "injection_files": [
                        {"path": "keys/authenticator.pem", "content": "$$SC::authenticator_key$$"},
                        {"path": "keys/signing.pem", "content": "$$SC::signing_key$$"},
                        {"path": "tls/auth.crt", "content": "$$SC::auth_tls.crt$$"},
                        {"path": "tls/auth.key", "content": "$$SC::auth_tls.key$$"},
                        *access["injection_files"],
                    ],
                    "heap_mb": 24,
                },
            ],
            "secrets": [
                # migrate: the keys survive policy updates (meters and the regulator hold
                # their public halves), as SCONE keeps a private key only when both the old
                # and the new policy say so
                {
                    "name": "authenticator_key",
                    "kind": "private-key",
                    "algorithm": "p256",
                    "migrate": True,
                },
                {
                    "name": "signing_key",
                    "kind": "private-key",
                    "algorithm": "p256",
                    "migrate": True,
                },
                {"name": "api_token", "kind": "ascii", "value": self.credentials()["token"]},
                {"name": "metering_ca", "kind": "x509-ca"},
                {
                    "name": "auth_tls",
                    "kind": "x509",
                    "issuer": "metering_ca",
                    "san": sorted({"localhost", "127.0.0.1", self.host}),
                    "valid_for": 365,
                },
            ],
            "imports": access["imports"],
            "security": {"attestation": {"tolerate": ["simulation"]}},
        }

    def apply(self) -> str:
        """Write or update the session; save the public parts; return the config id."""
        from securecloud.infra.cas.client import apply_session, owner_client
        from securecloud.infra.cas.errors import CasError

        with owner_client(self.cas_url, self.cas_ca, self.identity) as client:
            try:
                current = client.show(SESSION)["policy"]["services"]
            except CasError as exc:
                if exc.reason != "no-such-session":
                    raise
                current = []
            others = [s for s in current if s["name"] != self.name]
            apply_session(client, self.policy(others))
            shown = client.show(SESSION)["secrets"]
        authenticator_pem = shown["authenticator_key"]["public_key"]
        point = public_bytes(load_public_key_pem(authenticator_pem.encode()))
        atomic_write(
            self.directory / "ca.crt", shown["metering_ca"]["certificate"].encode(), mode=0o644
        )
        atomic_write(
            self.directory / "authenticator.json",
            json.dumps({"public_key": point.hex(), "pem": authenticator_pem}).encode(),
            mode=0o644,
        )
        atomic_write(
            self.directory / "regulator.json",
            json.dumps({"signing_keys": [shown["signing_key"]["public_key"]]}).encode(),
            mode=0o644,
        )
        return f"{SESSION}/{self.name}"
