"""Row values: the columns outside the primary key, packed for one table.

Layout: a null bitmap (one bit per value column), then per column an 8-byte
integer, an 8-byte double, or a 4-byte length for text and blobs, then the
text and blob bytes in column order. One `struct` call decodes the fixed part;
the types are the table's (values are coerced to their column's affinity on
write), so no per-value tags are stored.
"""

from __future__ import annotations

import operator
import struct

import numpy as np

from securecloud.services.sql.catalog import PRIMARY, Table
from securecloud.services.sql.errors import NotNullViolation, TypeMismatch
from securecloud.services.sql.keys import SIGN as _SIGN
from securecloud.services.sql.keys import (
    decode_values,
    encode_values,
    index_prefix,
    ints_encoder,
)

_CODES = {"integer": "q", "real": "d", "text": "I", "blob": "I"}
_ZERO = {"integer": 0, "real": 0.0, "text": 0, "blob": 0}


EXACT_TYPE = {"integer": int, "real": float, "text": str, "blob": bytes}
# Fewer rows are decoded one by one: a LIMIT 1 scan's first chunk holds 16, and
# setting up NumPy for every column of 16 rows cost more than it saved
BY_COLUMN_FROM = 64


def coerce(value, affinity: str, column: str):
    """The value as its column stores it, or TypeMismatch naming the column."""
    if value is None or type(value) is EXACT_TYPE[affinity]:
        return value
    try:
        if affinity == "integer":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                text = value.strip().lower()
                if text in ("t", "true", "f", "false"):
                    return int(text.startswith("t"))
                return int(text)
        elif affinity == "real":
            if isinstance(value, int | float):
                return float(value)
            if isinstance(value, str):
                return float(value)
        elif affinity == "text":
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
        elif affinity == "blob" and isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
    except ValueError:
        pass
    raise TypeMismatch(
        f'column "{column}" is {affinity}: {type(value).__name__} {str(value)[:40]!r} does not fit'
    )


class RowCodec:
    def __init__(self, table: Table):
        self.table = table
        key = set(table.primary_key)
        self.positions = [i for i, c in enumerate(table.columns) if c.name not in key]
        columns = [table.columns[i] for i in self.positions]
        self.affinities = [c.affinity for c in columns]
        self.names = [c.name for c in columns]
        self.not_null = [c.not_null for c in columns]
        self.bitmap = (len(columns) + 7) // 8
        self.fixed = struct.Struct(f"<{self.bitmap}s" + "".join(_CODES[a] for a in self.affinities))
        self.variable = [i for i, a in enumerate(self.affinities) if a in ("text", "blob")]
        self.zero = [_ZERO[a] for a in self.affinities]
        self.key_positions = [table.position(c) for c in table.primary_key]
        self.primary_prefix = index_prefix(table.id, PRIMARY)
        self.key_start = len(self.primary_prefix)
        # The common case decoded in C: integer key columns (tag byte, then the value
        # offset by 2**63, big-endian), no text or blob values, no NULLs in the row.
        self.int_keys = None
        if all(table.column(c).affinity == "integer" for c in table.primary_key):
            self.int_keys = struct.Struct(">" + "xQ" * len(table.primary_key))
        # the same keys packed by one struct call (tag, then value + 2**63, per column)
        self.encode_key = (
            ints_encoder(len(table.primary_key)) if self.int_keys is not None else encode_values
        )
        self.no_nulls = bytes(self.bitmap)
        combined = self.key_positions + self.positions  # key values, then value columns
        where = {position: i for i, position in enumerate(combined)}
        self.where = where
        self.key_columns = frozenset(self.key_positions)
        # The same layouts as NumPy records, to decode a scan's chunk a column at a time
        self.key_dtype = self.value_dtype = None
        if self.int_keys is not None and self.positions and not self.variable:
            self.key_dtype = np.dtype(
                [("prefix", f"V{self.key_start}")]
                + [(f, t) for j in range(len(self.key_positions)) for f, t in
                   ((f"t{j}", "u1"), (f"k{j}", ">u8"))]
            )  # fmt: skip
            self.value_dtype = np.dtype(
                [("nulls", "u1", (self.bitmap,))]
                + [(f"c{j}", "<i8" if a == "integer" else "<f8") for j, a in
                   enumerate(self.affinities)]
            )  # fmt: skip
        self.reorder = operator.itemgetter(*[where[i] for i in range(len(table.columns))])
        self.single = len(table.columns) == 1
        # the common write: every value already of its column's type (so no NULL), and
        # only integer and real value columns: packed by one struct call
        self.exact = tuple(EXACT_TYPE[c.affinity] for c in table.columns)
        self.packable = (
            operator.itemgetter(*self.positions)
            if len(self.positions) > 1 and not self.variable
            else None
        )

    def primary_key(self, row: list) -> bytes:
        """The row's key (keys.encode_values after the table's prefix)."""
        return self.primary_prefix + self.encode_key([row[i] for i in self.key_positions])

    def encode(self, row: list) -> bytes:
        """`row`: every column of the table, coerced; only value columns are packed."""
        if self.packable is not None and None not in row:
            try:
                return self.fixed.pack(self.no_nulls, *self.packable(row))
            except struct.error as exc:
                raise TypeMismatch(f"value out of range: {exc}", "22003") from exc
        values = [row[i] for i in self.positions]
        bits = 0
        fixed = list(self.zero)
        tail = []
        for j, value in enumerate(values):
            if value is None:
                if self.not_null[j]:
                    raise NotNullViolation(
                        f'null value in column "{self.names[j]}" violates not-null constraint'
                    )
                bits |= 1 << j
                continue
            affinity = self.affinities[j]
            if affinity == "text":
                raw = value.encode()
                fixed[j] = len(raw)
                tail.append(raw)
            elif affinity == "blob":
                fixed[j] = len(value)
                tail.append(value)
            else:
                fixed[j] = value
        try:
            head = self.fixed.pack(bits.to_bytes(self.bitmap, "little"), *fixed)
        except struct.error as exc:
            raise TypeMismatch(f"value out of range: {exc}", "22003") from exc
        return head + b"".join(tail)

    def decode(self, data: bytes) -> list:
        """The value columns, in their order among the table's columns."""
        unpacked = self.fixed.unpack_from(data)
        bits = int.from_bytes(unpacked[0], "little")
        values = list(unpacked[1:])
        if self.variable:
            position = self.fixed.size
            for j in self.variable:
                length = values[j]
                raw = data[position : position + length]
                position += length
                values[j] = raw.decode() if self.affinities[j] == "text" else raw
        if bits:
            for j in range(len(values)):
                if bits >> j & 1:
                    values[j] = None
        return values

    def row(self, key: bytes, value: bytes) -> tuple | list:
        """Every column of a stored row: key columns from its key, the others from its value."""
        if self.int_keys is not None and not self.variable and not self.single:
            unpacked = self.fixed.unpack_from(value)
            if unpacked[0] == self.no_nulls:
                keys = [v - _SIGN for v in self.int_keys.unpack_from(key, self.key_start)]
                return self.reorder((*keys, *unpacked[1:]))
        row = [None] * len(self.table.columns)
        for position, v in zip(self.positions, self.decode(value), strict=True):
            row[position] = v
        keys, _ = decode_values(key, len(self.key_positions), position=self.key_start)
        for position, v in zip(self.key_positions, keys, strict=True):
            row[position] = v
        return row

    def key_value(self, key: bytes, number: int):
        """Column `number`, a primary-key column, from the row's key alone: a probe
        (the next meter, its last time) asks for one key column and never reads the
        value's bytes."""
        j = self.where[number]
        if self.int_keys is not None:
            return self.int_keys.unpack_from(key, self.key_start)[j] - _SIGN
        return decode_values(key, len(self.key_positions), position=self.key_start)[0][j]

    def chunk_columns(self, chunk: list) -> ChunkColumns | None:
        """The rows of a scan's chunk decoded a column at a time (NumPy), when every row
        has integer keys and numeric values without NULL; else None (decode row by row)."""
        if self.value_dtype is None or len(chunk) < BY_COLUMN_FROM:
            return None
        values = b"".join([v for _, v in chunk])
        keys = b"".join([k for k, _ in chunk])
        if (
            len(values) != len(chunk) * self.value_dtype.itemsize
            or len(keys) != len(chunk) * self.key_dtype.itemsize
        ):
            return None
        decoded = np.frombuffer(values, self.value_dtype)
        if decoded["nulls"].any():
            return None
        return ChunkColumns(self, np.frombuffer(keys, self.key_dtype), decoded)


class ChunkColumns:
    """A chunk's columns, each turned into a list of Python values when first asked for:
    an aggregate over three of thirty columns decodes three, for the whole chunk in C,
    instead of every column of every row in a struct call and a tuple per row."""

    def __init__(self, codec: RowCodec, keys: np.ndarray, values: np.ndarray):
        self.codec, self.keys, self.values = codec, keys, values
        self.lists: dict[int, list] = {}

    def column(self, number: int) -> list:
        found = self.lists.get(number)
        if found is None:
            j = self.codec.where[number]
            count = len(self.codec.key_positions)
            if j < count:  # stored offset by 2**63: flipping the top bit gives the value
                found = (self.keys[f"k{j}"].astype(np.uint64) ^ np.uint64(_SIGN)).view(np.int64)
            else:
                found = self.values[f"c{j - count}"]
            found = self.lists[number] = found.tolist()
        return found
