"""The embedded SNI router: routes TLS connections to instances, never holding a key.

For each connection: read the whole ClientHello (`clienthello.read_hello`),
take the consumer's UID from its server name, ask the Routing Manager where it
goes (GET /v1/routes/<uid>, over one kept-alive connection), connect, forward
the buffered bytes, then copy both ways until either side closes. A connection
with no usable server name, or for which no instance is free, is closed before
any byte reaches an instance (TLS clients see the connection reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from prometheus_client import Counter, Histogram

from securecloud.apps.portal.clienthello import HelloError, read_hello, server_name
from securecloud.apps.portal.names import DOMAIN, BadName, uid_of

log = logging.getLogger("securecloud.portal.router")
CONNECTIONS = Counter("securecloud_portal_router_connections_total", "By outcome", ["outcome"])
SETUP = Histogram("securecloud_portal_router_setup_seconds", "ClientHello to backend connected")


class SniRouter:
    def __init__(self, manager_url: str, domain: str = DOMAIN, hello_deadline: float = 5.0):
        self.manager = httpx.AsyncClient(base_url=manager_url, timeout=35.0)
        self.domain, self.hello_deadline = domain, hello_deadline
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self.handle, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.manager.aclose()

    async def route(self, uid: str) -> tuple[str, int] | None:
        response = await self.manager.get(f"/v1/routes/{uid}")
        if response.status_code != 200:
            return None
        host, _, port = response.json()["address"].rpartition(":")
        return host, int(port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outcome, up_writer = "routed", None
        try:
            hello = await read_hello(reader, self.hello_deadline)
            started = asyncio.get_running_loop().time()
            target = await self.route(uid_of(server_name(hello), self.domain))
            if target is None:
                outcome = "no-instance"
                return
            up_reader, up_writer = await asyncio.open_connection(*target)
            SETUP.observe(asyncio.get_running_loop().time() - started)
            up_writer.write(hello)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (HelloError, BadName) as exc:
            outcome = "bad-hello"
            log.info("refused a connection: %s", exc)
        except TimeoutError:
            outcome = "hello-timeout"
        except (OSError, httpx.HTTPError) as exc:
            outcome = "unreachable"
            log.warning("routing failed: %s", exc)
        except asyncio.CancelledError:  # the router is closing: drop the connection quietly
            outcome = "closed"
        finally:
            CONNECTIONS.labels(outcome).inc()
            writer.close()
            if up_writer is not None:
                up_writer.close()


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
