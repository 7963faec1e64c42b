"""The batch worker: an attested service that drains a work queue.

It receives everything from CAS after attestation, as environment variables:
SECURECLOUD_BATCH_QUEUE (queue URL, possibly with credentials),
SECURECLOUD_BATCH_TASK (a registered task) or SECURECLOUD_BATCH_CMD (a JSON
command list run per item, with the item on stdin and in $BATCH_ITEM),
SECURECLOUD_BATCH_LEASE (seconds) and SECURECLOUD_BATCH_MAX_RETRIES.

SIGTERM (scale-down, shutdown) lets the current item finish, then exits. A
worker killed outright loses nothing: its lease expires and the item returns
to the queue. It exits by itself when no item is pending or leased.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from securecloud.runtime.manifest import builtin_service
from securecloud.services.batch.queue import open_queue
from securecloud.services.batch.tasks import load_task

MANIFEST = builtin_service("batch-worker", "securecloud.services.batch.worker:main", heap_mb=32)


def _command_task(cmd: list[str]) -> Callable[[str], None]:
    def run(item: str) -> None:
        result = subprocess.run(
            cmd, input=item, text=True, capture_output=True, env={**os.environ, "BATCH_ITEM": item}
        )
        if result.returncode != 0:
            raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-500:]}")

    return run


def _log(event: str, **fields) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **fields}), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    env = os.environ
    queue = open_queue(env["SECURECLOUD_BATCH_QUEUE"])
    if env.get("SECURECLOUD_BATCH_CMD"):
        task = _command_task(json.loads(env["SECURECLOUD_BATCH_CMD"]))
    else:
        task = load_task(env["SECURECLOUD_BATCH_TASK"])
    lease = float(env.get("SECURECLOUD_BATCH_LEASE", "60"))
    retries = int(env.get("SECURECLOUD_BATCH_MAX_RETRIES", "3"))
    name = f"{socket.gethostname()}-{os.getpid()}"
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    done = failed = 0
    _log("worker-started", worker=name)
    while not stopping:
        items = queue.lease(name, 1, lease)
        if not items:
            queue.requeue_expired(retries)
            stats = queue.stats()
            if stats.pending == 0 and stats.processing == 0:
                break
            time.sleep(0.2)  # items are leased by others; one may come back
            continue
        item = items[0]
        try:
            task(item.payload)
        except Exception as exc:  # the item failed, not the worker
            queue.fail(item, f"{type(exc).__name__}: {exc}", retries)
            failed += 1
            continue
        queue.complete([item])
        done += 1
    _log("worker-stopped", worker=name, done=done, failed=failed, signalled=bool(stopping))
    queue.close()
    return 0
