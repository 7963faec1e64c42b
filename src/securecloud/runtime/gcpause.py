"""How long each run of Python's cyclic garbage collector held the process.

A process that keeps a large heap of long-lived objects pays for it on every
full collection, and a sampling profiler blames that time on whatever line
happened to allocate; these timings are how a metric or a bench sees it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def watch_pauses(observe: Callable[[int, float], None]) -> Callable[[], None]:
    """Call observe(generation, seconds) after every collection; returns `stop`."""
    started = 0.0

    def callback(phase: str, info: dict) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            observe(info["generation"], time.perf_counter() - started)

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)
