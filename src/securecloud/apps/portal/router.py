"""The embedded SNI router: routes TLS connections to instances, never holding a key.

For each connection: read the whole ClientHello (`clienthello.read_hello`),
take the consumer's UID from its server name, find where it goes, connect,
forward the buffered bytes, then copy both ways until either side closes.
Where it goes: from the router's map (the fast path, kept current by the
Routing Manager's route and release hooks) or, on a miss, from the Routing
Manager itself (`resolve`; in `portal serve` the router runs beside the manager
and calls it; a router elsewhere is HAProxy, which asks the Query API). A mapped
instance that no longer answers is dropped
from the map and asked for again. A connection with no usable server name, or
for which no instance is free, is closed before any byte reaches an instance
(TLS clients see the connection reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram

from securecloud.apps.portal.clienthello import HelloError, read_hello, server_name
from securecloud.apps.portal.names import DOMAIN, BadName, uid_of

log = logging.getLogger("securecloud.portal.router")
CONNECTIONS = Counter("securecloud_portal_router_connections_total", "By outcome", ["outcome"])
SETUP = Histogram("securecloud_portal_router_setup_seconds", "ClientHello to backend connected")
Resolver = Callable[[str], Awaitable[str | None]]


class SniRouter:
    def __init__(self, resolve: Resolver, domain: str = DOMAIN, hello_deadline: float = 5.0):
        self.resolve, self.domain, self.hello_deadline = resolve, domain, hello_deadline
        self.routes: dict[str, str] = {}  # uid -> host:port, the fast path
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self.handle, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def set_route(self, uid: str, address: str) -> None:
        self.routes[uid] = address

    def remove_route(self, uid: str) -> None:
        self.routes.pop(uid, None)

    async def _connect(self, uid: str):
        """(reader, writer) of the consumer's instance, or None if none is free."""
        cached = self.routes.get(uid)
        if cached is not None:
            try:
                return await asyncio.open_connection(*_split(cached))
            except OSError:
                self.routes.pop(uid, None)  # it stopped; the manager knows more
        address = await self.resolve(uid)
        return None if address is None else await asyncio.open_connection(*_split(address))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outcome, up_writer = "routed", None
        try:
            hello = await read_hello(reader, self.hello_deadline)
            started = asyncio.get_running_loop().time()
            upstream = await self._connect(uid_of(server_name(hello), self.domain))
            if upstream is None:
                outcome = "no-instance"
                return
            up_reader, up_writer = upstream
            SETUP.observe(asyncio.get_running_loop().time() - started)
            up_writer.write(hello)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (HelloError, BadName) as exc:
            outcome = "bad-hello"
            log.info("refused a connection: %s", exc)
        except TimeoutError:
            outcome = "hello-timeout"
        except OSError as exc:
            outcome = "unreachable"
            log.warning("routing failed: %s", exc)
        except asyncio.CancelledError:  # the router is closing: drop the connection quietly
            outcome = "closed"
        finally:
            CONNECTIONS.labels(outcome).inc()
            writer.close()
            if up_writer is not None:
                up_writer.close()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
