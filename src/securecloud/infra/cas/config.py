"""CAS configuration: flags, then SECURECLOUD_CAS_* environment, then defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_PORT = 8081


@dataclass(frozen=True)
class CasConfig:
    data_dir: Path = Path(".securecloud")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    las_url: str = "http://127.0.0.1:8080"
    platform_keys: tuple[Path, ...] = ()
    recovery_key: Path | None = None
    nonce_ttl: float = 300.0
    tls_san: tuple[str, ...] = field(default=("localhost", "127.0.0.1", "::1"))
    log_level: str = "info"

    @property
    def directory(self) -> Path:
        return self.data_dir / "cas"

    def trusted_platform_files(self) -> tuple[Path, ...]:
        """Explicit keys, or the local LAS's public key when none are given."""
        if self.platform_keys:
            return self.platform_keys
        return (self.data_dir / "las" / "platform.pub",)

    def show(self) -> dict:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}
