"""The portal's client, as the thesis's: one consumer's sessions, timed per operation.

Type 1 (a meter or sensor): LOGIN, one LONG_WRITE of accumulated metrics,
LOGOUT. Type 2 (the consumer): LOGIN, then every `frequency` seconds a WRITE
(with probability `write_ratio`) or a QUERY_AVG until `duration` is over, then
LOGOUT. The connection goes to a router (or an instance) at host:port with the
consumer's server name in the SNI; the client verifies the instance's
certificate against the portal CA and the name, presents its own certificate,
and sends its database key only after that.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from securecloud.apps.portal.names import DOMAIN, server_name

OPERATIONS = ("LOGIN", "LOGOUT", "WRITE", "LONG_WRITE", "QUERY_AVG")


class PortalError(Exception):
    def __init__(self, operation: str, status: int, reason: str, detail: str):
        super().__init__(f"{operation}: {status} {reason}: {detail}")
        self.operation, self.status, self.reason = operation, status, reason


@dataclass(frozen=True)
class Credentials:
    uid: str
    cert: Path
    key: Path
    ca: Path
    db_key: str  # 64 hex digits

    @classmethod
    def load(cls, keydir: Path, ca: Path, uid: str | None = None) -> Credentials:
        """From a consumer folder of `portal provision` (client.crt, client.key, db.key)."""
        return cls(
            uid or keydir.name,
            keydir / "client.crt",
            keydir / "client.key",
            ca,
            (keydir / "db.key").read_text().strip(),
        )

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@dataclass
class Sample:
    operation: str
    latency_ms: float
    status: int
    uid: str
    at: float


class PortalSession:
    """One consumer's connection to its instance (kept alive between requests)."""

    def __init__(self, address: str, credentials: Credentials, domain: str = DOMAIN):
        self.credentials = credentials
        self.name = server_name(credentials.uid, domain)
        self.http = httpx.AsyncClient(
            base_url=f"https://{address}", verify=credentials.tls(), timeout=60.0
        )
        self.token: str | None = None
        self.samples: list[Sample] = []

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, operation: str, method: str, path: str, **kw) -> dict:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        started = time.perf_counter()
        try:
            response = await self.http.request(
                method, path, headers=headers, extensions={"sni_hostname": self.name}, **kw
            )
        except httpx.HTTPError as exc:
            self.samples.append(Sample(operation, _ms(started), 0, self.credentials.uid, started))
            raise PortalError(operation, 0, "unreachable", str(exc) or type(exc).__name__) from exc
        self.samples.append(
            Sample(operation, _ms(started), response.status_code, self.credentials.uid, started)
        )
        doc = response.json()
        if response.status_code != 200:
            raise PortalError(operation, response.status_code, doc["error"], doc["detail"])
        return doc

    async def login(self) -> dict:
        doc = await self._call("LOGIN", "POST", "/v1/login", json={"key": self.credentials.db_key})
        self.token = doc["token"]
        return doc

    async def logout(self) -> dict:
        doc = await self._call("LOGOUT", "POST", "/v1/logout")
        self.token = None
        return doc

    async def write(self, alarms: list[dict]) -> dict:
        return await self._call("WRITE", "POST", "/v1/write", json={"alarms": alarms})

    async def long_write(self, metrics: list[list]) -> dict:
        return await self._call("LONG_WRITE", "POST", "/v1/long-write", json={"metrics": metrics})

    async def query_avg(self, start: int | None = None, end: int | None = None) -> dict:
        params = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        return await self._call("QUERY_AVG", "GET", "/v1/query-avg", params=params)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def metrics_for(hours: float, every_s: int = 15, start: int | None = None) -> list[list]:
    """Simulated meter metrics: power, impedance and tension every `every_s` seconds."""
    start = int(time.time()) if start is None else start
    out = []
    for i in range(int(hours * 3600 / every_s)):
        tension = random.gauss(127.0, 2.0)
        power = max(50.0, random.gauss(800.0, 250.0))  # standby load at least
        current = power / tension
        out.append([start + i * every_s, round(power, 2), round(tension / current, 3), tension])
    return out


def alarms_for(count: int = 3) -> list[dict]:
    return [
        {"metric": random.choice(("power", "impedance", "tension")), "threshold": random.random()}
        for _ in range(count)
    ]


async def type1(address: str, credentials: Credentials, hours: float = 1.0, domain=DOMAIN):
    """A meter: LOGIN, LONG_WRITE of `hours` of 15-second metrics, LOGOUT."""
    session = PortalSession(address, credentials, domain)
    try:
        await session.login()
        await session.long_write(metrics_for(hours))
        await session.logout()
    finally:
        await session.close()
    return session.samples


async def type2(
    address: str,
    credentials: Credentials,
    duration: float,
    frequency: float,
    write_ratio: float,
    domain: str = DOMAIN,
    rng: random.Random | None = None,
) -> list[Sample]:
    """A consumer: LOGIN, WRITE or QUERY_AVG every `frequency` s for `duration` s, LOGOUT."""
    rng = rng or random.Random()
    session = PortalSession(address, credentials, domain)
    try:
        await session.login()
        ends = time.monotonic() + duration
        while (left := ends - time.monotonic()) > 0:
            await asyncio.sleep(min(left, frequency * rng.uniform(0.5, 1.5)))
            if time.monotonic() >= ends:
                break
            if rng.random() < write_ratio:
                await session.write(alarms_for())
            else:
                await session.query_avg()
        await session.logout()
    finally:
        await session.close()
    return session.samples
