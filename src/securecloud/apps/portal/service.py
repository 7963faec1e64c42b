"""`securecloud portal serve`: the Routing Manager, one Application Wrapper and the
embedded SNI router on one event loop, with attested instances as child processes.

    trivial    the wrapper runs standalone with one instance per consumer
    on-demand  the wrapper runs dynamic with none; each miss starts one
    standby    the wrapper runs dynamic; the manager keeps `buffer` Ready

The wrapper and the manager talk over their HTTP APIs, as they would on separate
machines; the router, beside the manager, calls it on a miss and keeps the route
map its hooks maintain. With `haproxy_socket` the manager also keeps HAProxy's
map current (HAProxy is the router that runs elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from securecloud.apps.portal.deploy import PortalDeployment, portal_dir
from securecloud.apps.portal.names import DOMAIN, server_name
from securecloud.apps.portal.router import SniRouter
from securecloud.apps.portal.routing import (
    NoInstance,
    RoutingManager,
    RoutingTable,
    make_routing_app,
)
from securecloud.apps.portal.wrapper import Wrapper, make_wrapper_app
from securecloud.infra.web import EmbeddedServer
from securecloud.runtime.launcher import LaunchSpec, launch

log = logging.getLogger("securecloud.portal")


@dataclass(frozen=True)
class PortalConfig:
    data_dir: Path
    cas_url: str
    las_url: str
    mode: str = "standby"
    consumers: int = 0  # trivial: instances to keep (one per consumer)
    buffer: int = 2  # standby: Ready instances to keep
    host: str = "127.0.0.1"
    router_port: int = 8443
    manager_port: int = 8095
    wrapper_port: int = 8096
    domain: str = DOMAIN
    session_ttl: float = 900.0
    reuse: bool = False
    report_interval: float = 5.0
    claim_timeout: float = 30.0  # an allocation nobody logs into is given back after this
    ready_wait: float = 5.0  # a LOGIN that finds none Ready waits this long for a start
    haproxy_socket: Path | None = None
    haproxy_map: Path | None = None
    kvs_url: str | None = None

    @property
    def manager_url(self) -> str:
        return f"http://{self.host}:{self.manager_port}"


class Portal:
    def __init__(self, config: PortalConfig):
        self.config = config
        c = config
        if c.mode == "trivial" and c.consumers < 1:
            raise ValueError("consumers: trivial mode runs one instance per consumer (>= 1)")
        if c.buffer < 0:
            raise ValueError("buffer: must be >= 0")
        if c.ready_wait < 0:
            raise ValueError("ready_wait: must be >= 0 seconds")
        self.table = RoutingTable(
            c.mode, c.buffer if c.mode == "standby" else 0, claim_timeout=c.claim_timeout
        )
        if c.haproxy_socket is not None:
            from securecloud.apps.portal.haproxy import RouteMap

            routes = RouteMap(c.haproxy_socket, c.haproxy_map)
            self.table.route_hooks.append(
                lambda uid, addr: routes.set(server_name(uid, c.domain), addr)
            )
            self.table.release_hooks.append(lambda uid: routes.remove(server_name(uid, c.domain)))
        self.manager = RoutingManager(self.table, ready_wait=c.ready_wait)
        self.config_id: str | None = None
        dynamic = c.mode != "trivial"
        self.wrapper = Wrapper(
            "wrapper-1",
            self._launch,
            c.manager_url,
            url=f"http://{c.host}:{c.wrapper_port}" if dynamic else None,
            standalone=c.consumers if c.mode == "trivial" else 0,
            interval=c.report_interval,
            # replacements start in the background (trivial, standby); on demand a LOGIN
            # waits for the start, so it runs at the normal priority
            startup_nice=0 if c.mode == "on-demand" else 10,
        )
        # the router runs beside the manager: it asks it directly, and keeps its map
        self.router = SniRouter(self._resolve, c.domain)
        self.table.route_hooks.append(self.router.set_route)
        self.table.release_hooks.append(self.router.remove_route)
        self.stopped = asyncio.Event()

    async def _resolve(self, uid: str) -> str | None:
        try:
            return (await self.manager.route(uid)).address
        except NoInstance:
            return None

    def deploy(self) -> str:
        c = self.config
        self.config_id = PortalDeployment(
            c.data_dir,
            c.cas_url,
            c.data_dir / "cas" / "ca.crt",
            c.data_dir / "identity",
            c.kvs_url,
            c.host,
            c.domain,
            c.session_ttl,
            c.reuse,
        ).apply()
        return self.config_id

    def _launch(self) -> subprocess.Popen:
        c = self.config
        directory = portal_dir(c.data_dir)
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        spec = LaunchSpec(
            service="portal-instance",
            config_id=self.config_id,
            cas_addr=c.cas_url,
            cas_ca=(c.data_dir / "cas" / "ca.crt").resolve(),
            las_addr=c.las_url,
            ledger_dir=(c.data_dir / "runtime").resolve(),
            workdir=(directory / "work").resolve(),
            overcommit=True,  # many small instances; docs/portal.md says what this means
        )
        with (directory / "logs" / "instances.log").open("ab") as errors:
            return launch(spec, stdout=subprocess.PIPE, stderr=errors)

    async def run(self, started: asyncio.Event | None = None) -> None:
        c = self.config
        if self.config_id is None:
            await asyncio.to_thread(self.deploy)
        servers = [
            EmbeddedServer(make_routing_app(self.manager), c.host, c.manager_port),
            EmbeddedServer(make_wrapper_app(self.wrapper), c.host, c.wrapper_port),
        ]
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                raise RuntimeError(f"portal: a port of {c.manager_port}/{c.wrapper_port} is taken")
            await asyncio.sleep(0.02)
        await self.router.start(c.host, c.router_port)
        await asyncio.to_thread(self.wrapper.full_report)  # registers the wrapper
        await asyncio.to_thread(self.wrapper.run)
        log.info("portal %s: router on %s:%s", c.mode, c.host, c.router_port)
        if started is not None:
            started.set()
        try:
            await self.stopped.wait()
        finally:
            await self.router.close()
            await asyncio.to_thread(self.wrapper.stop_all)
            await self.manager.http.aclose()
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)


class BackgroundPortal:
    """A Portal on its own event loop in a thread, as `portal serve` runs it: for the
    tests, the benchmark and embedding. Use as a context manager."""

    def __init__(self, config: PortalConfig):
        self.config = config
        self.portal = Portal(config)
        self.address = f"{config.host}:{config.router_port}"
        self.loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> BackgroundPortal:
        started, failed = threading.Event(), []

        async def main():
            self.loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            task = asyncio.create_task(self.portal.run(ready))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            if not ready.is_set():
                failed.append(task.exception())
            started.set()
            await task

        self.thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self.thread.start()
        if not started.wait(120) or failed:
            raise RuntimeError(f"the portal did not start: {failed}")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.portal.stopped.set)
        self.thread.join(120)

    def call(self, function, *args):
        """Run `function(*args)` on the portal's loop (its state lives there)."""

        async def wrapped():
            return function(*args)

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(30)

    def instances(self) -> list[dict]:
        url = f"{self.config.manager_url}/v1/instances"
        return httpx.get(url, timeout=10).json()["instances"]

    def wait(self, predicate, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            instances = self.instances()
            if predicate(instances):
                return instances
            time.sleep(0.1)
        raise TimeoutError(f"portal: condition not met in {timeout} s; {self.instances()}")

    def ready(self, count: int, timeout: float = 60.0) -> list[dict]:
        return self.wait(lambda xs: sum(x["state"] == "ready" for x in xs) >= count, timeout)
