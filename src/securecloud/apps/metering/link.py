"""The aggregator <-> authenticator link: batches of frames over one TLS stream.

    request  = u32 length | u32 batch id | entries of (u32 tag | 258-byte uplink frame)
    response = u32 length | u32 batch id | entries of (u32 tag | 96-byte downlink frame)

The tag is the aggregator's name for a meter connection; the authenticator
returns it unchanged with every reply (zero or more per frame). Frames stay
encrypted end to end: the TLS link only hides which meters talk and keeps the
untrusted network from altering batches in bulk.
"""

from __future__ import annotations

import asyncio
import struct

from securecloud.apps.metering.frames import DOWNLINK_SIZE, UPLINK_SIZE

_HEAD = struct.Struct(">II")
MAX_MESSAGE = 64 << 20


def encode(batch_id: int, entries: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(tag.to_bytes(4, "big") + frame for tag, frame in entries)
    return _HEAD.pack(len(body) + 4, batch_id) + body


def decode(message: bytes, frame_size: int) -> tuple[int, list[tuple[int, bytes]]]:
    """One whole message (header included), as JetStream carries it."""
    if len(message) < _HEAD.size:
        raise ValueError(f"link message of {len(message)} bytes")
    length, batch_id = _HEAD.unpack_from(message)
    if length != len(message) - 4:
        raise ValueError(f"link message says {length} bytes, has {len(message) - 4}")
    return batch_id, _entries(length, memoryview(message)[_HEAD.size :], frame_size)


_ENTRY = {size: struct.Struct(f">I{size}s") for size in (UPLINK_SIZE, DOWNLINK_SIZE)}


def _entries(length: int, body, frame_size: int) -> list[tuple[int, bytes]]:
    if length < 4 or length > MAX_MESSAGE or (length - 4) % (4 + frame_size):
        raise ValueError(f"link message of {length} bytes")
    return list(_ENTRY[frame_size].iter_unpack(body))


async def read(
    reader: asyncio.StreamReader, frame_size: int
) -> tuple[int, list[tuple[int, bytes]]]:
    head = await reader.readexactly(_HEAD.size)
    length, batch_id = _HEAD.unpack(head)
    if length < 4 or length > MAX_MESSAGE:
        raise ValueError(f"link message of {length} bytes")
    body = await reader.readexactly(length - 4)
    return batch_id, _entries(length, body, frame_size)


async def read_request(reader):
    return await read(reader, UPLINK_SIZE)


async def read_response(reader):
    return await read(reader, DOWNLINK_SIZE)


def decode_request(message: bytes):
    return decode(message, UPLINK_SIZE)


def decode_response(message: bytes):
    return decode(message, DOWNLINK_SIZE)
