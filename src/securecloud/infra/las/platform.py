"""The simulated platform: its quoting key and sealing root, kept under the data directory.

In SGX these live in the CPU (fuse keys) and the quoting enclave; here they are
two files readable only by their owner. Whoever reads them can forge quotes
for this platform: that is what "simulation" means (docs/threat-model.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from securecloud.crypto import (
    fingerprint,
    generate_signing_key,
    load_private_key_pem,
    private_key_pem,
    public_key_pem,
)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@dataclass(frozen=True)
class Platform:
    signing_key: object
    seal_root: bytes
    tcb_status: str = "UpToDate"
    advisories: tuple[str, ...] = ()

    @property
    def platform_id(self) -> str:
        return fingerprint(self.signing_key.public_key())

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self.signing_key.public_key())

    @classmethod
    def load_or_create(cls, directory: Path, **kw) -> Platform:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path, root_path = directory / "platform.key", directory / "seal-root.key"
        if not key_path.exists():
            _write_private(key_path, private_key_pem(generate_signing_key("ed25519")))
        if not root_path.exists():
            _write_private(root_path, os.urandom(32))
        platform = cls(load_private_key_pem(key_path.read_bytes()), root_path.read_bytes(), **kw)
        (directory / "platform.pub").write_bytes(platform.public_key_pem)
        return platform
