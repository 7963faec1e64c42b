"""The Routing Manager: which instance serves which consumer.

Wrappers report their instances (Report API); routers ask where a consumer's
connection goes (Query API). Allocation works as Agones allocates game servers:
a query for a UID that already has an instance gets that instance (it keeps it
while its session lives); otherwise one Ready instance is moved to Allocated
for that UID in one step (the manager runs on one event loop, so two queries
never take the same instance) and its address is returned. If none is Ready the
answer says so (503, `no-instance`), unless the mode starts one on a miss.

Modes (one client cannot tell them apart):
  trivial    wrappers keep one instance per consumer running (standalone count)
  on-demand  no idle instances; a miss asks a wrapper to start one and waits
  standby    a buffer of anonymous Ready instances is kept at `buffer`

The manager keeps no state on disk: after a restart it learns every instance
(and which consumer an Active one serves) from the wrappers' periodic full
reports. An Allocated instance whose consumer never logs in returns to Ready
after `claim_timeout` seconds (in on-demand mode, or beyond the standby buffer,
such an idle instance is stopped). Each allocation and release also goes to the
routers' maps (`route_hooks`, `release_hooks`: the embedded router's, HAProxy's
through its runtime API), their fast path; they ask the Query API on a miss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field

import httpx
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, Field

from securecloud.apps.portal.names import BadName, check_uid
from securecloud.infra.api_client import ServiceError
from securecloud.infra.web import make_app

log = logging.getLogger("securecloud.portal.routing")
STATES = ("starting", "ready", "allocated", "active", "stopped")
MODES = ("trivial", "on-demand", "standby")
ALLOCATIONS = Counter("securecloud_portal_allocations_total", "Route queries", ["outcome"])
INSTANCES = Gauge("securecloud_portal_instances", "Instances known, by state", ["state"])
QUERY_SECONDS = Histogram("securecloud_portal_route_seconds", "Time to answer a route query")


class NoInstance(ServiceError):
    status = 503
    reason = "no-instance"


@dataclass
class InstanceRecord:
    id: str
    wrapper: str
    address: str | None
    state: str
    uid: str | None = None
    since: float = field(default_factory=time.monotonic)


class InstanceReport(BaseModel):
    id: str = Field(min_length=1, max_length=100)
    address: str | None = Field(default=None, max_length=100)
    state: str = Field(pattern="^(starting|ready|active|stopped)$")
    uid: str | None = Field(default=None, max_length=63)


class Report(BaseModel):
    wrapper: str = Field(min_length=1, max_length=100)
    url: str | None = Field(default=None, max_length=200, description="wrapper API (dynamic)")
    full: bool = Field(default=False, description="every instance of the wrapper is listed")
    instances: list[InstanceReport] = Field(max_length=10_000)


class RoutingTable:
    """The allocation state; every method runs on the manager's event loop."""

    def __init__(self, mode: str = "standby", buffer: int = 0, claim_timeout: float = 30.0):
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        self.mode, self.buffer, self.claim_timeout = mode, buffer, claim_timeout
        self.instances: dict[str, InstanceRecord] = {}
        self.wrappers: dict[str, str | None] = {}  # name -> API url (dynamic mode)
        self.requested: dict[str, float] = {}  # wrapper -> instances asked for, not yet seen
        self.changed = asyncio.Condition()
        # who else keeps routes: the embedded router's map, HAProxy's map
        self.route_hooks: list = []  # f(uid, address)
        self.release_hooks: list = []  # f(uid)

    # -- reports ---------------------------------------------------------------
    def report(self, report: Report) -> None:
        self.wrappers[report.wrapper] = report.url
        seen = set()
        for item in report.instances:
            seen.add(item.id)
            self._apply(report.wrapper, item)
        if report.full:
            for gone in [
                r.id
                for r in self.instances.values()
                if r.wrapper == report.wrapper and r.id not in seen
            ]:
                self._drop(self.instances[gone])
        self._expire_claims()
        self._count()

    def _apply(self, wrapper: str, item: InstanceReport) -> None:
        record = self.instances.get(item.id)
        if item.state == "stopped":
            if record is not None:
                self._drop(record)
            return
        if record is None:
            record = self.instances[item.id] = InstanceRecord(
                item.id, wrapper, item.address, item.state
            )
            if item.state in ("starting", "ready") and self.requested.get(wrapper, 0) > 0:
                self.requested[wrapper] -= 1
        record.address = item.address or record.address
        before = record.state
        if item.state == "active":
            if record.uid and item.uid != record.uid:
                log.warning(
                    "instance %s reports %s, allocated to %s", item.id, item.uid, record.uid
                )
            record.state, record.uid = "active", item.uid
            if item.uid:
                self._routed(item.uid, record.address)
        elif item.state == "ready" and record.state != "allocated":
            record.state, record.uid = "ready", None  # an Allocated one has not seen LOGIN yet
        if record.state != before:
            record.since = time.monotonic()

    def _drop(self, record: InstanceRecord) -> None:
        del self.instances[record.id]
        if record.uid:
            self._released(record.uid)

    def _expire_claims(self) -> None:
        now = time.monotonic()
        for record in self.instances.values():
            if record.state == "allocated" and now - record.since > self.claim_timeout:
                self._released(record.uid)
                record.state, record.uid, record.since = "ready", None, now

    def _routed(self, uid: str, address: str) -> None:
        for hook in self.route_hooks:
            hook(uid, address)

    def _released(self, uid: str) -> None:
        for hook in self.release_hooks:
            hook(uid)

    def _count(self) -> None:
        for state in STATES:
            INSTANCES.labels(state).set(sum(1 for r in self.instances.values() if r.state == state))

    # -- queries ---------------------------------------------------------------
    def lookup(self, uid: str) -> InstanceRecord | None:
        """The instance already serving or claimed by `uid`, else one just allocated."""
        for record in self.instances.values():
            if record.uid == uid and record.state in ("allocated", "active"):
                return record
        ready = [r for r in self.instances.values() if r.state == "ready" and r.address]
        if not ready:
            return None
        record = min(ready, key=lambda r: r.since)
        record.state, record.uid, record.since = "allocated", uid, time.monotonic()
        self._routed(uid, record.address)
        self._count()
        return record

    def deficit(self) -> int:
        """How many instances to start now to keep the Ready buffer full."""
        idle = sum(1 for r in self.instances.values() if r.state in ("ready", "starting"))
        return max(0, self.buffer - idle - int(sum(self.requested.values())))

    def dynamic_wrapper(self) -> tuple[str, str] | None:
        """(name, url) of the wrapper with the fewest instances that takes start requests."""
        candidates = [(n, u) for n, u in self.wrappers.items() if u]
        if not candidates:
            return None
        load = {n: sum(1 for r in self.instances.values() if r.wrapper == n) for n, _ in candidates}
        return min(candidates, key=lambda c: load[c[0]] + self.requested.get(c[0], 0))

    def idle(self) -> list[InstanceRecord]:
        """Ready instances beyond the buffer (all of them on demand) that nobody claimed
        for `claim_timeout`, oldest first: taken out of the table, to be stopped. They
        come from a consumer who never logged in, or from instances reused after LOGOUT."""
        if self.mode == "trivial":
            return []
        now = time.monotonic()
        ready = sorted(
            (r for r in self.instances.values() if r.state == "ready"), key=lambda r: r.since
        )
        out = [
            r
            for r in ready[: max(0, len(ready) - self.buffer)]
            if now - r.since > self.claim_timeout
        ]
        for record in out:
            del self.instances[record.id]
        return out

    def summary(self) -> list[dict]:
        return [asdict(r) for r in self.instances.values()]


class RoutingManager:
    def __init__(self, table: RoutingTable, start_timeout: float = 30.0, ready_wait: float = 5.0):
        self.table = table
        self.start_timeout = start_timeout
        self.ready_wait = ready_wait  # a miss waits this long for an instance being started
        self.http = httpx.AsyncClient(timeout=10.0)

    async def start_instances(self, count: int) -> int:
        chosen = self.table.dynamic_wrapper()
        if chosen is None or count <= 0:
            return 0
        name, url = chosen
        self.table.requested[name] = self.table.requested.get(name, 0) + count
        try:
            response = await self.http.post(f"{url}/v1/instances", json={"count": count})
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.table.requested[name] -= count
            log.warning("wrapper %s did not start instances: %s", name, exc)
            return 0
        return count

    async def refill(self) -> None:
        if self.table.mode == "standby":
            await self.start_instances(self.table.deficit())

    async def route(self, uid: str) -> InstanceRecord:
        started = time.perf_counter()
        try:
            record = self.table.lookup(uid)
            if record is None and self.table.mode == "on-demand":
                record = await self._start_for(uid)
            elif record is None and self.ready_wait > 0:
                ALLOCATIONS.labels("waited").inc()
                await self.refill()
                record = await self._wait_for(uid, self.ready_wait)
            if record is None:
                ALLOCATIONS.labels("none-free").inc()
                raise NoInstance(f"no instance is free for {uid}; try again shortly")
            ALLOCATIONS.labels("routed").inc()
            asyncio.get_running_loop().create_task(self.refill())
            return record
        finally:
            QUERY_SECONDS.observe(time.perf_counter() - started)

    async def _start_for(self, uid: str) -> InstanceRecord | None:
        """On-demand: ask a wrapper for an instance, wait until one is Ready, take it."""
        if not await self.start_instances(1):
            return None
        return await self._wait_for(uid, self.start_timeout)

    async def _wait_for(self, uid: str, timeout: float) -> InstanceRecord | None:
        """Wait until an instance is Ready for `uid` (reports wake us), then take it."""
        deadline = time.monotonic() + timeout
        async with self.table.changed:
            while (record := self.table.lookup(uid)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(self.table.changed.wait(), left)
                except TimeoutError:
                    return None
        return record

    async def report(self, report: Report) -> None:
        self.table.report(report)
        async with self.table.changed:
            self.table.changed.notify_all()
        await self.refill()
        for record in self.table.idle():
            url = self.table.wrappers.get(record.wrapper)
            if url:
                try:
                    await self.http.delete(f"{url}/v1/instances/{record.id}")
                except httpx.HTTPError as exc:
                    log.warning("could not stop idle instance %s: %s", record.id, exc)


def make_routing_app(manager: RoutingManager):
    app = make_app(
        "securecloud portal routing manager",
        "1",
        health=lambda: {"mode": manager.table.mode, "instances": len(manager.table.instances)},
    )

    @app.post("/v1/reports", tags=["report API"])
    async def report(body: Report) -> dict:
        """A wrapper's report: changes (full=false) or every instance it runs (full=true)."""
        await manager.report(body)
        return {"ok": True}

    @app.get("/v1/routes/{uid}", tags=["query API"])
    async def route(uid: str) -> dict:
        """Where the consumer's connection goes; allocates a Ready instance if needed."""
        try:
            check_uid(uid)
        except BadName as exc:
            raise ServiceError(str(exc), reason="bad-uid") from None
        record = await manager.route(uid)
        return {"uid": uid, "address": record.address, "instance": record.id}

    @app.get("/v1/instances", tags=["operations"])
    async def instances() -> dict:
        return {"mode": manager.table.mode, "instances": manager.table.summary()}

    return app
