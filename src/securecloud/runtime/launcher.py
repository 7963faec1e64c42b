"""Start a service as a separate process in enclave mode.

The child gets a clean environment (a fixed PATH and the SECURECLOUD_*
variables below, nothing inherited), runs `python -I` (no user site, no
PYTHON* variables), has core dumps disabled before exec and makes itself
non-dumpable first thing after it (`runtime.enclave`). It receives its
arguments, environment and files from CAS after attestation, never from us.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from securecloud.runtime.errors import BudgetError, LaunchError
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.memory import MemoryBudget

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class LaunchSpec:
    service: str
    config_id: str
    cas_addr: str
    cas_ca: Path
    las_addr: str
    ledger_dir: Path
    workdir: Path
    budget_mb: int = 93
    overcommit: bool = False
    sigstruct: Path | None = None
    attester: str = "sim"
    heap_mb: int | None = None  # reservation, when a job declares more than the manifest

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": SAFE_PATH,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "SECURECLOUD_SERVICE": self.service,
            "SECURECLOUD_CONFIG_ID": self.config_id,
            "SECURECLOUD_CAS_ADDR": self.cas_addr,
            "SECURECLOUD_CAS_CA": str(self.cas_ca),
            "SECURECLOUD_LAS_ADDR": self.las_addr,
            "SECURECLOUD_ATTESTER": self.attester,
            "SECURECLOUD_WORKDIR": str(self.workdir),
            "SECURECLOUD_ENCLAVE_LEDGER": str(self.ledger_dir),
            "SECURECLOUD_ENCLAVE_BUDGET_MB": str(self.budget_mb),
            "SECURECLOUD_OVERCOMMIT": "1" if self.overcommit else "0",
        }
        if self.sigstruct is not None:
            env["SECURECLOUD_SIGSTRUCT"] = str(self.sigstruct)
        if self.heap_mb is not None:
            env["SECURECLOUD_HEAP_MB"] = str(self.heap_mb)
        return env


def _no_core_dumps() -> None:
    """No core dumps (soft and hard limit 0) of the launcher, hence of what it starts:
    children inherit the limit. Set here rather than in a preexec_fn: a preexec_fn
    makes Popen fork the whole launcher (20-30 ms of page tables for a large process,
    with its event loop stalled) instead of spawning with vfork (1-3 ms)."""
    if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def launch(spec: LaunchSpec, **popen_kwargs) -> subprocess.Popen:
    """Check the budget, then start the service; it attests before running any of its code."""
    manifest = load_manifest(spec.service)
    budget = MemoryBudget(spec.ledger_dir, spec.budget_mb)
    free = budget.free_mb()
    heap = spec.heap_mb or manifest.heap_mb
    if heap > free and not spec.overcommit:
        raise BudgetError(
            f"{manifest.name} needs {heap} MB of enclave memory but only {free} of "
            f"{spec.budget_mb} MB are free on this node (pass --overcommit to start it anyway)"
        )
    _no_core_dumps()
    spec.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(spec.workdir, 0o700)
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-m", "securecloud.runtime.enclave"],
            env=spec.environment(),
            cwd=spec.workdir,
            close_fds=True,
            **popen_kwargs,
        )
    except OSError as exc:
        raise LaunchError(f"cannot start {spec.service}: {exc}") from exc
