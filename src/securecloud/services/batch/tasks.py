"""Built-in tasks a submission can name as `entry_point` (group `securecloud.batch.tasks`).

A task is a callable taking one item (a string); raising marks the item
failed. Applications register their own tasks under the same group; no code is
ever uploaded through the API.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from collections.abc import Callable

TASK_GROUP = "securecloud.batch.tasks"
# A task that needs secrets (keys, KVS credentials) registers, under the same name in
# this group, a callable(data_dir) -> policy fragment that the manager merges into the
# worker's CAS session: {"session": fixed session name (optional), "environment": {},
# "injection_files": [], "secrets": [], "imports": []}.
POLICY_GROUP = "securecloud.batch.policies"


def sleep(item: str) -> None:
    """Wait `item` seconds: an I/O-bound item of known cost, for tests and benchmarks."""
    seconds = float(item)
    if not 0 <= seconds <= 3600:
        raise ValueError(f"item {item!r}: seconds must be in 0..3600")
    time.sleep(seconds)


def spin(item: str) -> None:
    """Burn `item` seconds of this process's CPU time: a CPU-bound item whose wall time
    grows when workers outnumber cores, as billing and fraud analytics do."""
    seconds = float(item)
    if not 0 <= seconds <= 3600:
        raise ValueError(f"item {item!r}: seconds must be in 0..3600")
    block = bytes(4096)
    end = time.process_time() + seconds
    while time.process_time() < end:
        for _ in range(50):
            block = hashlib.sha256(block).digest() * 128


def check(item: str) -> None:
    """Succeed unless the item says `fail`: for exercising retries and dead letters."""
    if item.startswith("fail"):
        raise RuntimeError(f"item {item!r} asked to fail")


def load_task(name: str) -> Callable[[str], None]:
    for ep in importlib.metadata.entry_points(group=TASK_GROUP):
        if ep.name == name:
            return ep.load()
    known = ", ".join(sorted(ep.name for ep in importlib.metadata.entry_points(group=TASK_GROUP)))
    raise LookupError(f"no task named {name!r} (registered: {known})")


def task_policy(name: str, data_dir) -> dict:
    """The policy fragment task `name` asks for (empty when it needs nothing)."""
    for ep in importlib.metadata.entry_points(group=POLICY_GROUP):
        if ep.name == name:
            return ep.load()(data_dir)
    return {}


def task_names() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.entry_points(group=TASK_GROUP))
