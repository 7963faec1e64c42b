"""The Application Wrapper: starts instances and tells the Routing Manager about them.

Each instance has a sidecar thread that reads the instance's events from its
standard output (`instance.py` lists them) and reports the state change:
LISTENING gives the address, WAITING_LOGIN means Ready, `LOGIN <uid>` Active,
LOGOUT (or the process ending) Stopped. A thread sends a full report of every
instance every `interval` seconds, from which a restarted Routing Manager
rebuilds its state. In standalone mode the wrapper keeps `standalone` instances
running (an instance that exits after its LOGOUT is replaced); in dynamic mode
an autoscaler (or the Routing Manager) starts and stops them through its API.
The wrapper is untrusted: it never sees a key, a certificate or consumer data.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from securecloud.infra.api_client import ServiceError
from securecloud.infra.web import make_app

log = logging.getLogger("securecloud.portal.wrapper")
EVENTS = Counter("securecloud_portal_instance_events_total", "Instance events", ["event"])
START_SECONDS = Histogram(
    "securecloud_portal_instance_start_seconds",
    "Launch to Ready (attestation, imports, warm-up): what the standby buffer must cover",
    buckets=(0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 20),
)


@dataclass
class Managed:
    id: str
    process: subprocess.Popen
    address: str | None = None
    state: str = "starting"
    uid: str | None = None
    launched: float = 0.0  # time.monotonic() at launch

    def report(self) -> dict:
        return {"id": self.id, "address": self.address, "state": self.state, "uid": self.uid}


def memory_kb(pid: int) -> dict[str, int]:
    """Proportional (Pss) and resident (Rss) memory of a process, from smaps_rollup:
    Pss shares the interpreter's pages fairly among the instances that map them."""
    found = {"pss_kb": 0, "rss_kb": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss", "Rss"):
                found[f"{name.lower()}_kb"] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return found


class Wrapper:
    def __init__(
        self,
        name: str,
        launch: Callable[[], subprocess.Popen],
        manager_url: str,
        url: str | None = None,
        standalone: int = 0,
        interval: float = 5.0,
        startup_nice: int = 0,
    ):
        self.name, self.launch, self.url = name, launch, url
        self.startup_nice = startup_nice
        self.standalone, self.interval = standalone, interval
        self.http = httpx.Client(base_url=manager_url, timeout=10.0)
        self.instances: dict[str, Managed] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._serial = itertools.count(1)
        self._nice_warned = False
        self._reporter = threading.Thread(target=self._report_loop, daemon=True)

    def run(self) -> None:
        self.start(self.standalone)
        self._reporter.start()

    def start(self, count: int) -> list[str]:
        started = []
        for _ in range(count):
            if self.stopping.is_set():
                break
            launched = time.monotonic()
            managed = Managed(f"{self.name}-{next(self._serial)}", self.launch(), launched=launched)
            self._priority(managed, self.startup_nice)
            with self.lock:
                self.instances[managed.id] = managed
            self._send([managed.report()])
            threading.Thread(target=self._sidecar, args=(managed,), daemon=True).start()
            started.append(managed.id)
        return started

    def stop(self, instance_id: str) -> bool:
        with self.lock:
            managed = self.instances.get(instance_id)
        if managed is None:
            return False
        managed.process.send_signal(signal.SIGTERM)
        return True

    def stop_all(self, timeout: float = 20.0) -> None:
        self.stopping.set()
        with self.lock:
            running = list(self.instances.values())
        for managed in running:
            managed.process.send_signal(signal.SIGTERM)
        for managed in running:
            try:
                managed.process.wait(timeout)
            except subprocess.TimeoutExpired:
                managed.process.kill()
                managed.process.wait()
        self.http.close()

    def _sidecar(self, managed: Managed) -> None:
        """Follow one instance's events until it exits."""
        for raw in managed.process.stdout:
            line = raw.decode(errors="replace").strip()
            word, _, rest = line.partition(" ")
            if word == "LISTENING":
                managed.address = rest
                continue
            if word == "WAITING_LOGIN":
                if managed.state == "starting":
                    START_SECONDS.observe(time.monotonic() - managed.launched)
                    self._priority(managed, 0)
                managed.state, managed.uid = "ready", None
            elif word == "LOGIN":
                managed.state, managed.uid = "active", rest
            elif word == "LOGOUT":
                managed.state = "stopped"
            else:
                continue
            EVENTS.labels(word.lower()).inc()
            self._send([managed.report()])
        code = managed.process.wait()
        if code:
            log.warning("instance %s exited with %s", managed.id, code)
        managed.state = "stopped"
        with self.lock:
            self.instances.pop(managed.id, None)
        self._send([managed.report()])
        if self.standalone and not self.stopping.is_set():
            self.start(1)  # standalone: keep the count

    def _priority(self, managed: Managed, nice: int) -> None:
        """Starting instances run at a lower CPU priority, so that starting replacements
        never slows the instances serving consumers; Ready ones get the normal one back
        (that needs CAP_SYS_NICE; without it they keep the lower one, logged once)."""
        if not self.startup_nice:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, managed.process.pid, nice)
        except OSError as exc:
            if not self._nice_warned:
                self._nice_warned = True
                log.warning("cannot set instance CPU priority to %s: %s", nice, exc)

    def _send(self, instances: list[dict], full: bool = False) -> None:
        if self.stopping.is_set():
            return  # shutting down: the manager learns from the next wrapper's reports
        body = {"wrapper": self.name, "url": self.url, "full": full, "instances": instances}
        try:
            self.http.post("/v1/reports", json=body).raise_for_status()
        except httpx.HTTPError as exc:  # the next full report repairs the manager's view
            log.warning("report to the routing manager failed: %s", exc)

    def full_report(self) -> None:
        with self.lock:
            instances = [m.report() for m in self.instances.values()]
        self._send(instances, full=True)

    def _report_loop(self) -> None:
        while not self.stopping.wait(self.interval):
            self.full_report()

    def memory(self) -> dict[str, dict]:
        with self.lock:
            running = list(self.instances.values())
        return {m.id: {"state": m.state, **memory_kb(m.process.pid)} for m in running}


class StartRequest(BaseModel):
    count: int = Field(ge=1, le=1000, description="instances to start")


def make_wrapper_app(wrapper: Wrapper):
    """Dynamic mode: start and stop instances from outside (autoscaler, Routing Manager)."""
    app = make_app(
        "securecloud portal application wrapper",
        "1",
        health=lambda: {"wrapper": wrapper.name, "instances": len(wrapper.instances)},
    )

    @app.post("/v1/instances", tags=["dynamic mode"])
    def start(body: StartRequest) -> dict:
        return {"started": wrapper.start(body.count)}

    @app.delete("/v1/instances/{instance_id}", tags=["dynamic mode"])
    def stop(instance_id: str) -> dict:
        if not wrapper.stop(instance_id):
            raise ServiceError(f"no instance {instance_id}", reason="no-such-instance", status=404)
        return {"stopping": instance_id}

    @app.get("/v1/instances", tags=["operations"])
    def instances() -> dict:
        return {"wrapper": wrapper.name, "instances": wrapper.memory()}

    return app
