"""The JetStream transport against a real nats-server: partitions, replies, acks,
redelivery of what an authenticator did not finish, and a refused partition count."""

import asyncio

import pytest

from securecloud.apps.metering import frames, jetstream, link
from securecloud.apps.metering.ownership import Ownership


def test_ownership_splits_partitions_between_shards():
    shards = [Ownership(8, i, 3) for i in range(3)]
    assert sorted(p for s in shards for p in s.owned) == list(range(8))
    for meter in range(100):
        assert sum(s.owns(meter) for s in shards) == 1
    assert Ownership().owns(12345)
    assert Ownership.parse(4, "1/2") == Ownership(4, 1, 2)
    for bad, field in [("x", "shard"), ("2/2", "shard"), ("0/5", "shard"), ("1", "shard")]:
        with pytest.raises(ValueError, match=field):
            Ownership.parse(4, bad)
    with pytest.raises(ValueError, match="partitions"):
        Ownership(0)


def test_link_messages_decode_whole_and_refuse_bad_lengths():
    entries = [(5, bytes(range(256)) + b"ab"), (9, bytes(258))]
    message = link.encode(77, entries)
    assert link.decode_request(message) == (77, entries)
    assert link.decode_request(link.encode(1, [])) == (1, [])
    for bad in [message[:-1], message + b"x", message[:6], b""]:
        with pytest.raises(ValueError, match="link message"):
            link.decode_request(bad)


def _frame(meter: int) -> bytes:
    frame = bytearray(frames.UPLINK_SIZE)
    frame[0] = frames.DATA
    frame[1:5] = meter.to_bytes(4, "big")
    return bytes(frame)


def test_batches_reach_the_owner_of_their_partition_and_replies_come_back(nats_url):
    async def scenario():
        replies: list = []
        publisher = jetstream.Publisher(nats_url, 4, replies.extend)
        await publisher.start()
        queues = [asyncio.Queue(), asyncio.Queue()]
        consumers = [
            jetstream.Consumer(nats_url, Ownership(4, i, 2), queues[i], f"t{i}") for i in range(2)
        ]
        for consumer in consumers:
            await consumer.start()
        failures = []
        for partition in range(4):
            batch = [(partition * 10 + k, _frame(partition + 4 * k)) for k in range(3)]
            publisher.publish(partition, link.encode(partition, batch), failures.append)
        got = {0: [], 1: []}
        for i in range(2):
            for _ in range(2):
                writer, batch_id, entries = await asyncio.wait_for(queues[i].get(), 10)
                got[i].append(batch_id)
                assert all(frames.meter_id_of(f) % 4 == batch_id for _t, f in entries)
                writer.write(link.encode(batch_id, [(t, bytes(96)) for t, _f in entries]))
        assert sorted(got[0]) == [0, 2] and sorted(got[1]) == [1, 3]
        for _ in range(100):
            if len(replies) == 12:
                break
            await asyncio.sleep(0.05)
        assert sorted(t for t, _r in replies) == sorted(
            p * 10 + k for p in range(4) for k in range(3)
        )
        assert not failures
        for consumer in consumers:
            await consumer.stop()
        info = await publisher.js.stream_info(jetstream.STREAM)
        assert info.state.messages == 0  # every message acknowledged, so removed
        await publisher.close()

    asyncio.run(scenario())


def test_an_unfinished_message_is_delivered_again(nats_url, monkeypatch):
    monkeypatch.setattr(jetstream, "ACK_WAIT_S", 1.0)

    async def scenario():
        publisher = jetstream.Publisher(nats_url, 4, lambda entries: None)
        await publisher.start()
        failures: list = []
        publisher.publish(0, link.encode(41, [(1, _frame(8))]), failures.append)
        first = jetstream.Consumer(nats_url, Ownership(4, 0, 4), asyncio.Queue(), "dies")
        await first.start()
        _writer, batch_id, _ = await asyncio.wait_for(first.queue.get(), 10)
        assert batch_id == 41
        await first.stop()  # taken, never answered: as if killed before storing
        second = jetstream.Consumer(nats_url, Ownership(4, 0, 4), asyncio.Queue(), "next")
        await second.start()
        writer, batch_id, _ = await asyncio.wait_for(second.queue.get(), 15)
        assert batch_id == 41
        writer.write(link.encode(41, []))
        await second.stop()
        assert not failures
        await publisher.close()

    asyncio.run(scenario())


def test_a_different_partition_count_is_refused(nats_url):
    async def scenario():
        publisher = jetstream.Publisher(nats_url, 4, lambda entries: None)
        await publisher.start()
        await publisher.close()
        other = jetstream.Publisher(nats_url, 5, lambda entries: None)
        with pytest.raises(jetstream.TransportError, match="partitions"):
            await other.start()
        await other.nc.close()

    asyncio.run(scenario())
