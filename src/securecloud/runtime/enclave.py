"""The first code a launched service runs: harden, reserve, attest, then hand over.

Run as `python -I -m securecloud.runtime.enclave` by the launcher, with a
clean environment that names only where CAS and the LAS are and which policy
entry to ask for (SECURECLOUD_CONFIG_ID=<session>/<service>). The service's
own code, arguments, environment and files come into play only after CAS has
verified the quote and released them; without that, the process exits 3.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import shutil
import ssl
import sys
import tempfile
from pathlib import Path

from securecloud.runtime.errors import EnclaveError
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.memory import MemoryBudget
from securecloud.runtime.provisioning import ServiceConfig, attest

PR_SET_DUMPABLE = 4
EXIT_REFUSED = 3
log = logging.getLogger("securecloud.enclave")


def harden() -> None:
    """No core dumps and not dumpable: ptrace and /proc/<pid>/mem are closed to
    other users' processes. (Root can still read our memory: no TEE here.)"""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise EnclaveError(f"prctl(PR_SET_DUMPABLE) failed: errno {ctypes.get_errno()}")


def _attester(kind: str, las: str, service: str, sigstruct: bytes | None):
    if kind == "sim":
        from securecloud.runtime.sim import SimAttester

        return SimAttester(las, service, sigstruct)
    if kind == "tsm":
        from securecloud.runtime.tsm import TsmAttester

        return TsmAttester()
    raise EnclaveError(f"SECURECLOUD_ATTESTER={kind!r}: expected sim or tsm")


def apply_config(config: ServiceConfig, workdir: Path) -> None:
    """Environment and files of the service, written only after attestation."""
    for injected in config.injection_files:
        target = Path(injected.path)
        if not target.is_absolute():
            target = workdir / target
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(injected.content)
    os.environ.update(config.environment)


def _log(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), file=sys.stderr, flush=True)


def main() -> int:
    harden()
    env = os.environ
    service = env["SECURECLOUD_SERVICE"]
    config_id = env["SECURECLOUD_CONFIG_ID"]
    workdir = Path(env.get("SECURECLOUD_WORKDIR", "."))
    manifest = load_manifest(service)
    budget = MemoryBudget(
        Path(env["SECURECLOUD_ENCLAVE_LEDGER"]), int(env.get("SECURECLOUD_ENCLAVE_BUDGET_MB", 93))
    )
    try:
        budget.reserve(
            manifest.name,
            os.getpid(),
            int(env.get("SECURECLOUD_HEAP_MB") or manifest.heap_mb),
            overcommit=env.get("SECURECLOUD_OVERCOMMIT") == "1",
        )
    except EnclaveError as exc:
        _log("refused", reason="enclave-memory", detail=str(exc))
        return EXIT_REFUSED
    try:
        sigstruct_path = env.get("SECURECLOUD_SIGSTRUCT")
        sigstruct = Path(sigstruct_path).read_bytes() if sigstruct_path else None
        attester = _attester(
            env.get("SECURECLOUD_ATTESTER", "sim"), env["SECURECLOUD_LAS_ADDR"], service, sigstruct
        )
        verify = ssl.create_default_context(cafile=env["SECURECLOUD_CAS_CA"])
        _log("attesting", service=manifest.name, config_id=config_id)
        config = attest(env["SECURECLOUD_CAS_ADDR"], config_id, attester, verify=verify)
    except EnclaveError as exc:
        _log("refused", reason=getattr(exc, "reason", "error"), detail=str(exc))
        budget.release(os.getpid())
        return EXIT_REFUSED
    _log("attested", session=config.session, session_hash=config.session_hash)
    # Injected files (keys, certificates) live in a private memory-backed folder that
    # is the service's working directory and is removed when it exits.
    shm = Path("/dev/shm")
    private = Path(tempfile.mkdtemp(prefix="securecloud-", dir=shm if shm.is_dir() else workdir))
    try:
        apply_config(config, private)
        os.chdir(private)
        result = manifest.load_entry_point()(list(config.command))
    finally:
        shutil.rmtree(private, ignore_errors=True)
        budget.release(os.getpid())
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
