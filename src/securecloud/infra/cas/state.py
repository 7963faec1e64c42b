"""CAS state at rest: a shielded file under a key sealed to CAS's own measurement.

Files in the CAS directory:

- `state`, `state.meta`: the shielded file holding the canonical JSON state
  (policies, generated secrets, CAS's own keys);
- `state-key.sealed`: {"dek", "file_id", "version"} sealed to CAS's code on
  this platform; `version` is the last committed state version, checked as
  the shielded file's `min_version` so an older `state` is refused;
- `state-key.recovery` (optional): the same key encrypted (HPKE) to an
  operator's recovery public key, so the state can be re-sealed after a move
  to another platform or a CAS upgrade (`securecloud cas recover`).

Simulation caveat: the sealed key file and the state can be rolled back
together by whoever owns the disk; a TEE deployment keeps the version in a
hardware monotonic counter instead (docs/threat-model.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from securecloud.crypto import CryptoError, canonical, decrypt_with, encrypt_to
from securecloud.infra.cas.errors import CasError
from securecloud.runtime.durable import atomic_write
from securecloud.runtime.errors import SealingError
from securecloud.runtime.sealing import Sealer
from securecloud.runtime.shielded import ShieldedFile

_RECOVERY_AAD = b"securecloud/cas-recovery/v1"


class StateStore:
    def __init__(self, directory: Path, sealer: Sealer, recovery_public_key=None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sealer = sealer
        self.key_path = self.directory / "state-key.sealed"
        self.recovery_path = self.directory / "state-key.recovery"
        self.state_path = self.directory / "state"
        if self.key_path.exists():
            self._key = self._unseal_key()
        else:
            self._key = {"dek": os.urandom(32).hex(), "file_id": os.urandom(16).hex(), "version": 0}
            self._save_key()
        if recovery_public_key is not None:
            blob = encrypt_to(recovery_public_key, canonical.encode(self._key), _RECOVERY_AAD)
            atomic_write(self.recovery_path, blob)

    def _unseal_key(self) -> dict:
        try:
            return canonical.decode(
                self.sealer.unseal(self.key_path.read_bytes(), b"cas-state-key")
            )
        except SealingError as exc:
            raise CasError(
                "the CAS state key is sealed to other code or another platform; "
                "restore it with `securecloud cas recover --recovery-key FILE`",
                reason="state-sealed-elsewhere",
                status=500,
            ) from exc

    def _save_key(self) -> None:
        atomic_write(self.key_path, self.sealer.seal(canonical.encode(self._key), b"cas-state-key"))

    def _open(self) -> ShieldedFile:
        return ShieldedFile(
            self.state_path,
            bytes.fromhex(self._key["dek"]),
            bytes.fromhex(self._key["file_id"]),
            min_version=self._key["version"],
        )

    def load(self) -> dict | None:
        if not (self.state_path.with_name("state.meta")).exists():
            if self._key["version"] > 0:
                raise CasError("CAS state is missing but was committed before", status=500)
            return None
        with self._open() as shielded:
            return canonical.decode(shielded.read_all())

    def commit(self, state: dict) -> int:
        data = canonical.encode(state)
        with self._open() as shielded:
            shielded.truncate(0)
            shielded.write(0, data)
            version = shielded.flush()
        self._key["version"] = version
        self._save_key()
        return version


def recover(directory: Path, recovery_private_key, sealer: Sealer) -> None:
    """Re-seal the state key found in `state-key.recovery` for this code and platform."""
    directory = Path(directory)
    try:
        key = canonical.decode(
            decrypt_with(
                recovery_private_key, (directory / "state-key.recovery").read_bytes(), _RECOVERY_AAD
            )
        )
    except (OSError, CryptoError) as exc:
        raise CasError(f"recovery failed: {exc}", reason="recovery-failed") from exc
    atomic_write(
        directory / "state-key.sealed", sealer.seal(canonical.encode(key), b"cas-state-key")
    )
