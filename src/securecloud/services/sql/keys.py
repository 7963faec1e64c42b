"""Order-preserving key encoding: byte order of encoded keys equals SQL order.

CascaDB keeps every table and index as one sorted key space, so a range of
SQL values must be a range of bytes (the scheme of CockroachDB and TiDB):

    row            <table id> <index 1> <primary-key values>
    index entry    <table id> <index id> <indexed values> <primary-key values>

Ids are unsigned, encoded as one length byte then big-endian bytes (a longer
number sorts after a shorter one). Each value is a tag then its body:

    NULL   0x05                       (first: SQLite sorts NULL lowest)
    INT    0x10 + 8 bytes big-endian of value + 2^63
    REAL   0x20 + 8 bytes: IEEE-754 bits, sign bit flipped (>= 0) or all bits
                  inverted (< 0); -0.0 is written as 0.0
    TEXT   0x30 + UTF-8 with 0x00 escaped as 00 FF, ended by 00 01
    BLOB   0x40 + bytes, same escaping

A descending column has every byte of its encoding complemented. Values of one
column share one type (the engine coerces on write), so comparing INT with REAL
never arises; across types the tag order is SQLite's (numbers, text, blobs).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

NULL, INT, REAL, TEXT, BLOB = 0x05, 0x10, 0x20, 0x30, 0x40
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
SIGN = 1 << 63  # integers are stored offset by this, so that byte order is numeric order
_INVERT = bytes.maketrans(bytes(range(256)), bytes(range(255, -1, -1)))

Value = int | float | str | bytes | None


class KeyEncodingError(ValueError):
    """A value that has no key encoding (an integer beyond 64 bits, NaN)."""


def encode_id(number: int) -> bytes:
    if number < 0:
        raise KeyEncodingError(f"id {number}: must not be negative")
    body = number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")
    return bytes([len(body)]) + body


def decode_id(data: bytes, position: int = 0) -> tuple[int, int]:
    length = data[position]
    end = position + 1 + length
    return int.from_bytes(data[position + 1 : end], "big"), end


def _escape(raw: bytes) -> bytes:
    return raw.replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def encode_value(value: Value, descending: bool = False) -> bytes:
    if value is None:
        encoded = bytes([NULL])
    elif isinstance(value, bool | int):
        if not -SIGN <= value < SIGN:
            raise KeyEncodingError(f"integer {value} does not fit in 64 bits")
        encoded = bytes([INT]) + _U64.pack(value + SIGN)
    elif isinstance(value, float):
        if value != value:
            raise KeyEncodingError("NaN has no place in an ordered key")
        (bits,) = _U64.unpack(_F64.pack(value + 0.0))  # + 0.0 turns -0.0 into 0.0
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits & SIGN else bits | SIGN
        encoded = bytes([REAL]) + _U64.pack(bits)
    elif isinstance(value, str):
        encoded = bytes([TEXT]) + _escape(value.encode())
    elif isinstance(value, bytes | bytearray | memoryview):
        encoded = bytes([BLOB]) + _escape(bytes(value))
    else:
        raise KeyEncodingError(f"{type(value).__name__} has no key encoding")
    return encoded.translate(_INVERT) if descending else encoded


def encode_values(values: Sequence[Value], descending: Sequence[bool] | None = None) -> bytes:
    if descending is None:
        return b"".join(encode_value(v) for v in values)
    return b"".join(encode_value(v, d) for v, d in zip(values, descending, strict=True))


def ints_encoder(count: int):
    """encode_values for `count` ascending integers by one struct call (a row's key at
    every insert, a key probe's prefix at every lookup of a join); anything else (a
    NULL, an integer beyond 64 bits) goes to encode_values, which encodes it or says
    what is wrong."""
    packer = struct.Struct(">" + "BQ" * count).pack

    def encode(values: Sequence[int]) -> bytes:
        try:
            return packer(*[part for v in values for part in (INT, v + SIGN)])
        except (TypeError, struct.error):
            return encode_values(values)

    return encode


def _unescape(data: bytes, position: int, inverted: bool) -> tuple[bytes, int]:
    zero, end_mark, escape_mark = (0xFF, 0xFE, 0x00) if inverted else (0x00, 0x01, 0xFF)
    out = bytearray()
    while True:
        found = data.index(zero, position)
        out += data[position:found]
        mark = data[found + 1]
        if mark == end_mark:
            chunk = bytes(out)
            return (chunk.translate(_INVERT) if inverted else chunk), found + 2
        if mark != escape_mark:
            raise KeyEncodingError(f"bad escape at byte {found}")
        out.append(zero)
        position = found + 2


def decode_value(data: bytes, position: int = 0, descending: bool = False) -> tuple[Value, int]:
    tag = data[position] ^ 0xFF if descending else data[position]
    body = position + 1
    if tag == NULL:
        return None, body
    if tag in (INT, REAL):
        raw = data[body : body + 8]
        (bits,) = _U64.unpack(raw.translate(_INVERT) if descending else raw)
        if tag == INT:
            return bits - SIGN, body + 8
        bits = bits ^ SIGN if bits & SIGN else bits ^ 0xFFFFFFFFFFFFFFFF
        return _F64.unpack(_U64.pack(bits))[0], body + 8
    if tag in (TEXT, BLOB):
        raw, end = _unescape(data, body, descending)
        return (raw.decode() if tag == TEXT else raw), end
    raise KeyEncodingError(f"unknown key tag 0x{tag:02x} at byte {position}")


def decode_values(
    data: bytes, count: int, position: int = 0, descending: Sequence[bool] | None = None
) -> tuple[list[Value], int]:
    values = []
    for i in range(count):
        value, position = decode_value(data, position, bool(descending and descending[i]))
        values.append(value)
    return values, position


def index_prefix(table_id: int, index_id: int) -> bytes:
    return encode_id(table_id) + encode_id(index_id)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
