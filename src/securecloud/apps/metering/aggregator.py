"""The aggregator (untrusted): many meter connections in, batches to authenticators out.

It holds no key and never decrypts. It cuts each meter's byte stream into
258-byte frames, checks the CRC (a frame with a bad CRC gets a NACK and the
connection is closed, since the frame boundaries can no longer be trusted),
sends frames in batches (up to `batch_frames`, or after `batch_delay` s) to the
authenticator that owns the meter (meter id modulo the number of
authenticators, so a meter's counters live in one place) and routes every
reply back to the connection it belongs to. With `nats` set it publishes the
same batches to the JetStream subject of the meter's partition instead and
takes the replies from its own reply subject (jetstream.py). Counts by reason are Prometheus
metrics.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import ssl
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from securecloud.apps.metering import frames, link
from securecloud.apps.metering.jetstream import MAX_MESSAGE_BYTES, Publisher

log = logging.getLogger("securecloud.metering.aggregator")
FRAMES = Counter("securecloud_aggregator_frames_total", "Uplink frames forwarded")
REPLIES = Counter("securecloud_aggregator_replies_total", "Downlink frames routed to meters")
REFUSED = Counter("securecloud_aggregator_refused_total", "Frames refused here", ["reason"])
CONNECTIONS = Gauge("securecloud_aggregator_connections", "Meter connections open")


@dataclass(frozen=True)
class AggregatorConfig:
    host: str = "127.0.0.1"
    port: int = 4800
    authenticators: tuple[str, ...] = ("127.0.0.1:4810",)
    ca_file: str | None = None
    batch_frames: int = 2000
    batch_delay: float = 0.005
    backlog: int = 4096
    nats: str | None = None  # the scale-out mode: publish to JetStream instead of links
    partitions: int = 1

    def __post_init__(self) -> None:
        if self.nats and self.batch_frames * (4 + frames.UPLINK_SIZE) + 8 > MAX_MESSAGE_BYTES:
            raise ValueError(
                f"batch_frames: {self.batch_frames} frames exceed a NATS message "
                f"({MAX_MESSAGE_BYTES} bytes); at most {MAX_MESSAGE_BYTES // 262 - 1}"
            )
        if self.partitions < 1:
            raise ValueError(f"partitions: {self.partitions} is not a positive count")


class MeterConnection(asyncio.Protocol):
    def __init__(self, aggregator: Aggregator):
        self.aggregator = aggregator
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.tag = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.tag = self.aggregator.register(self)
        CONNECTIONS.inc()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        size = frames.UPLINK_SIZE
        while len(self.buffer) >= size:
            frame = bytes(self.buffer[:size])
            del self.buffer[:size]
            if frames.crc(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                REFUSED.labels("crc").inc()
                meter = frames.meter_id_of(frame) or 0
                self.send(frames.Nack(meter, 0, frames.NACK_CODES["crc"]).encode())
                self.transport.close()
                return
            self.aggregator.forward(self.tag, frame)

    def eof_received(self):
        if self.buffer:
            REFUSED.labels("length").inc()
        return False

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def connection_lost(self, exc) -> None:
        self.aggregator.unregister(self.tag)
        CONNECTIONS.dec()


class Batcher(abc.ABC):
    """Frames for one destination, sent when `batch_frames` are pending or after
    `batch_delay` s; subclasses say how a batch leaves (`emit`)."""

    def __init__(self, aggregator: Aggregator):
        self.aggregator = aggregator
        self.pending: list[tuple[int, bytes]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.batch_ids = itertools.count(1)

    def add(self, tag: int, frame: bytes) -> None:
        self.pending.append((tag, frame))
        if len(self.pending) >= self.aggregator.config.batch_frames:
            self.send()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(
                self.aggregator.config.batch_delay, self.send
            )

    def send(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            batch, self.pending = self.pending, []
            self.emit(batch)

    @abc.abstractmethod
    def emit(self, batch: list[tuple[int, bytes]]) -> None: ...


class Upstream(Batcher):
    """One TLS link to one authenticator."""

    def __init__(self, aggregator: Aggregator, address: str):
        super().__init__(aggregator)
        self.address = address
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()

    async def run(self, context: ssl.SSLContext | None) -> None:
        host, _, port = self.address.rpartition(":")
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    host, int(port), ssl=context, server_hostname=host if context else None
                )
            except OSError as exc:
                log.warning("authenticator %s unreachable: %s", self.address, exc)
                await asyncio.sleep(0.5)
                continue
            self.writer = writer
            self.connected.set()
            log.info("linked to authenticator %s", self.address)
            try:
                while True:
                    _batch, entries = await link.read_response(reader)
                    self.aggregator.route(entries)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
                log.warning("link to %s lost: %s", self.address, exc)
            finally:
                self.connected.clear()
                self.writer = None
                writer.close()
            await asyncio.sleep(0.2)

    def emit(self, batch: list[tuple[int, bytes]]) -> None:
        if self.writer is None:
            # No link: the meters will time out and send again; nothing was acknowledged.
            REFUSED.labels("no-authenticator").inc(len(batch))
            return
        FRAMES.inc(len(batch))
        self.writer.write(link.encode(next(self.batch_ids), batch))


class Partition(Batcher):
    """One JetStream subject (the scale-out mode, jetstream.py)."""

    def __init__(self, aggregator: Aggregator, partition: int):
        super().__init__(aggregator)
        self.partition = partition

    def emit(self, batch: list[tuple[int, bytes]]) -> None:
        FRAMES.inc(len(batch))
        count = len(batch)
        self.aggregator.publisher.publish(
            self.partition,
            link.encode(next(self.batch_ids), batch),
            lambda reason: REFUSED.labels(reason).inc(count),
        )


class Aggregator:
    def __init__(self, config: AggregatorConfig):
        self.config = config
        self.connections: dict[int, MeterConnection] = {}
        self._tags = itertools.count(1)
        self.publisher: Publisher | None = None
        if config.nats:
            self.publisher = Publisher(config.nats, config.partitions, self.route)
            self.upstreams: list[Batcher] = [Partition(self, p) for p in range(config.partitions)]
        else:
            self.upstreams = [Upstream(self, a) for a in config.authenticators]

    def register(self, connection: MeterConnection) -> int:
        tag = next(self._tags) & 0xFFFFFFFF
        self.connections[tag] = connection
        return tag

    def unregister(self, tag: int) -> None:
        self.connections.pop(tag, None)

    def forward(self, tag: int, frame: bytes) -> None:
        meter = frames.meter_id_of(frame) or 0
        self.upstreams[meter % len(self.upstreams)].add(tag, frame)

    def route(self, entries: list[tuple[int, bytes]]) -> None:
        """One write per meter connection per response, however many replies it holds."""
        by_tag: dict[int, list[bytes]] = {}
        for tag, frame in entries:
            by_tag.setdefault(tag, []).append(frame)
        for tag, replies in by_tag.items():
            connection = self.connections.get(tag)
            if connection is not None:
                connection.send(b"".join(replies))
        REPLIES.inc(len(entries))

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        context = None
        if self.config.ca_file:
            context = ssl.create_default_context(cafile=self.config.ca_file)
        if self.publisher is not None:
            await self.publisher.start()
            tasks = []
        else:
            tasks = [asyncio.create_task(u.run(context)) for u in self.upstreams]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: MeterConnection(self),
            self.config.host,
            self.config.port,
            backlog=self.config.backlog,
        )
        log.info("aggregator listening on %s:%d", self.config.host, self.config.port)
        if ready is not None:
            ready.set()
        try:
            await server.serve_forever()
        finally:
            server.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.publisher is not None:
                for upstream in self.upstreams:
                    upstream.send()
                await self.publisher.close()
