"""The scale-out transport: aggregators and authenticators meet in a NATS JetStream stream.

A work-queue stream `METERING` keeps the aggregators' batches (the same bytes
as on the direct link, `link.py`) under `metering.frames.<partition>`, where
partition = meter id mod P. Each partition has one durable pull consumer,
`authenticator-p<partition>`; an authenticator binds the partitions of its
shard (partition mod N == I, `ownership.py`) and refuses frames of any other
meter, because a meter's counters (replay protection, duplicate and missing
accounting) must live in exactly one place. That is why the stream is shared
and the consumers are per partition rather than one consumer shared by all:
with one shared consumer a meter's frames would land on any authenticator.

Delivery is at least once. An authenticator acknowledges a message to
JetStream only after the batch is stored in the KVS and its replies are
published; a message of an authenticator killed before that comes back after
`ACK_WAIT` to whichever process binds the partition next, and frames already
stored are then answered "duplicate". Replies travel over core NATS to the
subject the aggregator named in the `Securecloud-Reply` header; a lost reply
costs a resend by the meter, never a reading.

The partition count is written into the stream's description; an aggregator
or authenticator configured with another count is refused with a clear error
instead of leaving partitions nobody consumes.
"""

from __future__ import annotations

import asyncio
import logging
import os

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from securecloud.apps.metering import link
from securecloud.apps.metering.ownership import Ownership

log = logging.getLogger("securecloud.metering.jetstream")
STREAM = "METERING"
REPLY_HEADER = "Securecloud-Reply"
ACK_WAIT_S = 20.0
MAX_STREAM_BYTES = 1 << 30
MAX_MESSAGE_BYTES = 1 << 20  # NATS's default max_payload
FETCH = 8


class TransportError(RuntimeError):
    """The stream exists with another partition count, or NATS cannot be reached."""


def frames_subject(partition: int) -> str:
    return f"metering.frames.{partition}"


def durable_name(partition: int) -> str:
    return f"authenticator-p{partition}"


async def connect(url: str, name: str) -> nats.NATS:
    """A NATS connection that keeps reconnecting (the broker may restart under us)."""
    try:
        return await nats.connect(
            url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5
        )
    except (OSError, NatsTimeout, nats.errors.NoServersError) as exc:
        raise TransportError(f"nats: cannot connect to {url}: {exc}") from exc


async def ensure_stream(js, partitions: int) -> None:
    """Create the work-queue stream, or check that it has our partition count."""
    description = f"securecloud metering frames; partitions={partitions}"
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        config = StreamConfig(
            name=STREAM,
            description=description,
            subjects=["metering.frames.*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,  # full: refuse new batches, keep the stored ones
            max_bytes=MAX_STREAM_BYTES,
            max_msg_size=MAX_MESSAGE_BYTES,
        )
        await js.add_stream(config)
        return
    if info.config.description != description:
        raise TransportError(
            f"partitions: stream {STREAM} was made with {info.config.description!r}, "
            f"this process is configured with partitions={partitions}"
        )


class Publisher:
    """The aggregator's side: publish batches and hand every reply batch to `on_reply`."""

    def __init__(self, url: str, partitions: int, on_reply, in_flight: int = 64):
        self.url, self.partitions, self.on_reply = url, partitions, on_reply
        self.reply_subject = f"metering.replies.{os.urandom(6).hex()}"
        self.nc = None
        self.js = None
        self._slots = asyncio.Semaphore(in_flight)
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.nc = await connect(self.url, "securecloud-aggregator")
        self.js = self.nc.jetstream()
        await ensure_stream(self.js, self.partitions)
        await self.nc.subscribe(self.reply_subject, cb=self._reply)

    async def _reply(self, msg) -> None:
        try:
            _batch, entries = link.decode_response(msg.data)
        except ValueError as exc:
            log.warning("reply of %d bytes dropped: %s", len(msg.data), exc)
            return
        self.on_reply(entries)

    def publish(self, partition: int, payload: bytes, on_failure) -> None:
        """Publish in the background (in call order); `on_failure(reason)` when refused."""
        task = asyncio.create_task(self._publish(partition, payload, on_failure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, partition: int, payload: bytes, on_failure) -> None:
        async with self._slots:
            try:
                await self.js.publish(
                    frames_subject(partition), payload, headers={REPLY_HEADER: self.reply_subject}
                )
            except Exception as exc:  # full stream, no JetStream, timeout: meters resend
                log.warning("batch for partition %d not queued: %s", partition, exc)
                on_failure("queue-unavailable")

    async def close(self) -> None:
        for task in list(self._tasks):
            await asyncio.wait([task], timeout=5)
        if self.nc is not None:
            await self.nc.drain()


class Reply:
    """Stands in for the link's writer: the replies of one message, then its ack."""

    def __init__(self, consumer: Consumer, msg):
        self.consumer, self.msg = consumer, msg

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.consumer.finish(self.msg, data)


class Consumer:
    """The authenticator's side: pull the owned partitions into the runner's queue."""

    def __init__(self, url: str, ownership: Ownership, queue: asyncio.Queue, name: str):
        self.url, self.ownership, self.queue, self.name = url, ownership, queue, name
        self.nc = None
        self._tasks: set[asyncio.Task] = set()
        self._pullers: list[asyncio.Task] = []

    async def start(self) -> None:
        self.nc = await connect(self.url, f"securecloud-{self.name}")
        js = self.nc.jetstream()
        await ensure_stream(js, self.ownership.partitions)
        for partition in self.ownership.owned:
            subscription = await js.pull_subscribe(
                frames_subject(partition),
                durable=durable_name(partition),
                stream=STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=256
                ),
            )
            self._pullers.append(asyncio.create_task(self._pull(partition, subscription)))
        log.info("consuming partitions %s of %d", self.ownership.owned, self.ownership.partitions)

    async def _pull(self, partition: int, subscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(FETCH, timeout=1.0)
            except NatsTimeout:
                continue
            except Exception as exc:  # reconnecting: try again shortly
                log.warning("partition %d: fetch failed: %s", partition, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in messages:
                try:
                    batch_id, entries = link.decode_request(msg.data)
                except ValueError as exc:
                    log.warning("partition %d: message dropped: %s", partition, exc)
                    await msg.term()
                    continue
                await self.queue.put((Reply(self, msg), batch_id, entries))

    def finish(self, msg, data: bytes) -> None:
        task = asyncio.create_task(self._finish(msg, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, msg, data: bytes) -> None:
        reply = (msg.headers or {}).get(REPLY_HEADER)
        try:
            if reply:
                await self.nc.publish(reply, data)
            await msg.ack()
        except Exception as exc:  # not acked: JetStream delivers it again after ACK_WAIT_S
            log.warning("reply or ack failed: %s", exc)

    async def stop(self) -> None:
        """Stop pulling; messages not yet acknowledged come back to the next consumer."""
        for task in self._pullers:
            task.cancel()
        if self._pullers:
            await asyncio.wait(self._pullers)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.nc is not None:
            await self.nc.drain()
