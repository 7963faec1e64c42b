"""Meter frames: fixed sizes, a code byte, CRC-16, as in ABNT NBR 14522.

NBR 14522 has fixed-size frames in each direction and ends each with a
CRC-16 (polynomial x^16 + x^15 + x^2 + 1, reflected, initial value 0:
CRC-16/ARC), sent least significant byte first. We keep that and extend it as
SecureCloud did: asynchronous operation (a meter may have several frames in
flight, each acknowledged on its own), encryption and authentication
(`securecloud.crypto.suite1`), and load connect/disconnect commands.

Uplink frames (meter -> platform) are 258 bytes, downlink frames 96 bytes
(NBR 14522's 66-byte command frame does not hold a P-256 signature). Unused
bytes are zero and must be zero. Integers are big endian. Layouts are in
docs/protocol.md; this module only packs and checks them, it holds no keys.

The message classes are plain (not frozen) slotted dataclasses: one is built
per frame on both sides, and a frozen one takes five times as long to build.
Treat them as values all the same.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fastcrc import crc16

from securecloud.apps.metering import reading

UPLINK_SIZE = 258
DOWNLINK_SIZE = 96

HELLO = 0x11
ACCEPT = 0x12
DATA = 0x20
ACK = 0x21
NACK = 0x2F
COMMAND = 0x30
UPLINK_CODES = frozenset({HELLO, DATA})
DOWNLINK_CODES = frozenset({ACCEPT, ACK, NACK, COMMAND})

# ACK status
STORED, DUPLICATE, QUARANTINED = 0, 1, 2
ACK_STATUS = {STORED: "stored", DUPLICATE: "duplicate", QUARANTINED: "quarantined"}
# NACK reasons: the meter treats every NACK as "not stored"; some also mean "handshake again".
NACK_REASONS = {
    1: "crc",
    2: "length",
    3: "unknown-code",
    4: "unknown-meter",
    5: "revoked-meter",
    6: "bad-signature",
    7: "auth-failed",
    8: "replay",
    9: "malformed",
    10: "unavailable",
    11: "not-owner",
}
NACK_CODES = {name: code for code, name in NACK_REASONS.items()}
# Load commands
CONNECT_LOAD, DISCONNECT_LOAD = 1, 2

SEALED_SIZE = reading.SIZE + 16
_HELLO = struct.Struct(">BI8s16sIII64s")
_DATA = struct.Struct(f">BI8sI{SEALED_SIZE}s")
_ACCEPT = struct.Struct(">BI8sIII64s")
_ACK = struct.Struct(">BI8sIIB16s")
_NACK = struct.Struct(">BIIB")
_COMMAND = struct.Struct(">BI8sIB16s")
DATA_HEADER_SIZE = 13  # code, meter id, session id: the associated data of the ciphertext


class FrameError(ValueError):
    """A frame that cannot be taken: `reason` is one of NACK_REASONS' names."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


_ZEROS = bytes(UPLINK_SIZE)


def crc(data: bytes) -> int:
    return crc16.arc(data)


def _finish(body: bytes, size: int) -> bytes:
    padded = body + bytes(size - 2 - len(body))
    return padded + crc(padded).to_bytes(2, "little")


def check(frame: bytes, size: int, layout: struct.Struct) -> tuple:
    """Length, CRC, zero padding; then the fields of `layout`."""
    if len(frame) != size:
        raise FrameError("length", f"{len(frame)} bytes (expected {size})")
    body, sent = frame[:-2], int.from_bytes(frame[-2:], "little")
    if crc(body) != sent:
        raise FrameError("crc", f"CRC {sent:04x} does not match {crc(body):04x}")
    if body[layout.size :] != _ZEROS[: len(body) - layout.size]:
        raise FrameError("malformed", "padding is not zero")
    return layout.unpack_from(body)


def code_of(frame: bytes) -> int:
    return frame[0] if frame else -1


@dataclass(slots=True)
class Hello:
    meter_id: int
    system_title: bytes
    nonce: bytes
    meter_time: int
    next_invocation: int
    next_report: int
    signature: bytes

    def signed_part(self) -> bytes:
        return b"securecloud meter hello v1" + _HELLO.pack(HELLO, *self._fields()[:-1], bytes(64))

    def _fields(self) -> tuple:
        return (
            self.meter_id,
            self.system_title,
            self.nonce,
            self.meter_time,
            self.next_invocation,
            self.next_report,
            self.signature,
        )

    def encode(self) -> bytes:
        return _finish(_HELLO.pack(HELLO, *self._fields()), UPLINK_SIZE)


@dataclass(slots=True)
class Data:
    meter_id: int
    session_id: bytes
    invocation: int
    sealed: bytes  # ciphertext of a phasor report || GCM tag

    def header(self) -> bytes:
        return data_header(self.meter_id, self.session_id)

    def encode(self) -> bytes:
        return _finish(
            _DATA.pack(DATA, self.meter_id, self.session_id, self.invocation, self.sealed),
            UPLINK_SIZE,
        )


@dataclass(slots=True)
class Accept:
    meter_id: int
    session_id: bytes
    server_time: int
    last_invocation: int  # highest invocation counter the platform has taken from this meter
    last_report: int  # highest report counter stored for this meter (0: none)
    signature: bytes

    def signed_part(self, hello_frame: bytes) -> bytes:
        return (
            b"securecloud meter accept v1"
            + hello_frame
            + _ACCEPT.pack(ACCEPT, *self._fields()[:-1], bytes(64))
        )

    def _fields(self) -> tuple:
        return (
            self.meter_id,
            self.session_id,
            self.server_time,
            self.last_invocation,
            self.last_report,
            self.signature,
        )

    def encode(self) -> bytes:
        return _finish(_ACCEPT.pack(ACCEPT, *self._fields()), DOWNLINK_SIZE)


@dataclass(slots=True)
class Ack:
    meter_id: int
    session_id: bytes
    invocation: int
    report: int
    status: int
    tag: bytes

    def authenticated_part(self) -> bytes:
        return ack_fields(self.meter_id, self.session_id, self.invocation, self.report, self.status)

    def _fields(self) -> tuple:
        return (self.meter_id, self.session_id, self.invocation, self.report, self.status, self.tag)

    def encode(self) -> bytes:
        return _finish(_ACK.pack(ACK, *self._fields()), DOWNLINK_SIZE)


@dataclass(slots=True)
class Nack:
    meter_id: int
    invocation: int
    reason: int

    def encode(self) -> bytes:
        return _finish(_NACK.pack(NACK, self.meter_id, self.invocation, self.reason), DOWNLINK_SIZE)

    @property
    def reason_name(self) -> str:
        return NACK_REASONS.get(self.reason, f"reason-{self.reason}")


@dataclass(slots=True)
class Command:
    meter_id: int
    session_id: bytes
    sequence: int  # strictly increasing per meter; the meter ignores older ones
    command: int  # CONNECT_LOAD or DISCONNECT_LOAD
    tag: bytes

    def authenticated_part(self) -> bytes:
        return _COMMAND.pack(COMMAND, *self._fields()[:-1], bytes(16))[:-16]

    def _fields(self) -> tuple:
        return (self.meter_id, self.session_id, self.sequence, self.command, self.tag)

    def encode(self) -> bytes:
        return _finish(_COMMAND.pack(COMMAND, *self._fields()), DOWNLINK_SIZE)


def data_header(meter_id: int, session_id: bytes) -> bytes:
    """A DATA frame's first DATA_HEADER_SIZE bytes: the ciphertext's associated data."""
    return bytes([DATA]) + meter_id.to_bytes(4, "big") + session_id


_ACK_FIELDS = struct.Struct(">BI8sIIB")


def ack_fields(
    meter_id: int, session_id: bytes, invocation: int, report: int, status: int
) -> bytes:
    """The authenticated part of an ACK (what its tag covers), packed once."""
    return _ACK_FIELDS.pack(ACK, meter_id, session_id, invocation, report, status)


def finish_ack(fields: bytes, tag: bytes) -> bytes:
    return _finish(fields + tag, DOWNLINK_SIZE)


def ack_identity(fields: bytes) -> tuple[int, int]:
    """(meter id, invocation counter) of packed ACK fields."""
    _code, meter_id, _sid, invocation, _report, _status = _ACK_FIELDS.unpack(fields)
    return meter_id, invocation


_DOWNLINK_KINDS = {
    ACCEPT: (Accept, _ACCEPT),
    ACK: (Ack, _ACK),
    NACK: (Nack, _NACK),
    COMMAND: (Command, _COMMAND),
}


def decode_uplink(frame: bytes) -> Hello | Data:
    code = code_of(frame)
    if code == DATA:
        return Data(*check(frame, UPLINK_SIZE, _DATA)[1:])
    if code == HELLO:
        return Hello(*check(frame, UPLINK_SIZE, _HELLO)[1:])
    if len(frame) != UPLINK_SIZE:
        raise FrameError("length", f"{len(frame)} bytes (expected {UPLINK_SIZE})")
    raise FrameError("unknown-code", f"uplink frame code 0x{code & 0xFF:02x}")


def decode_downlink(frame: bytes) -> Accept | Ack | Nack | Command:
    code = code_of(frame)
    if code not in _DOWNLINK_KINDS:
        if len(frame) != DOWNLINK_SIZE:
            raise FrameError("length", f"{len(frame)} bytes (expected {DOWNLINK_SIZE})")
        raise FrameError("unknown-code", f"downlink frame code 0x{code & 0xFF:02x}")
    kind, layout = _DOWNLINK_KINDS[code]
    return kind(*check(frame, DOWNLINK_SIZE, layout)[1:])


def meter_id_of(frame: bytes) -> int | None:
    """The meter id field, without any check (for counting and routing only)."""
    return int.from_bytes(frame[1:5], "big") if len(frame) >= 5 else None


def invocation_of(frame: bytes) -> int:
    """A DATA frame's invocation counter, without any check (to name it in a NACK)."""
    return int.from_bytes(frame[13:17], "big") if len(frame) >= 17 else 0


def system_title(meter_id: int) -> bytes:
    """DLMS system title: 3-letter manufacturer id + 5-byte serial."""
    return b"SCL" + meter_id.to_bytes(5, "big")
