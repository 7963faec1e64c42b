"""Row values decoded a chunk at a time agree with row-by-row decoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.services.sql.engine import Database
from securecloud.services.sql.keys import KeyEncodingError, encode_values
from securecloud.services.sql.rows import BY_COLUMN_FROM
from securecloud.services.sql.storage import Store
from tests.services.sql.memory import MemoryObjects

INT64 = st.integers(-(2**63), 2**63 - 1)
REAL = st.floats(allow_nan=False)
NUMERIC = (
    "CREATE TABLE m (a INTEGER, b BIGINT, x REAL, n INTEGER, y DOUBLE PRECISION, "
    "PRIMARY KEY (a, b))"
)


def _codec():
    session = Database(Store(MemoryObjects())).session()
    session.execute(NUMERIC)
    return session.database.codec("m")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(INT64, INT64, REAL, INT64, REAL),
        min_size=BY_COLUMN_FROM,
        max_size=BY_COLUMN_FROM + 40,
        unique_by=lambda r: (r[0], r[1]),
    ),
    st.one_of(st.none(), st.integers(0, BY_COLUMN_FROM - 1)),
)
def test_a_chunk_decodes_by_column_as_it_does_by_row(rows, null_at):
    """Any integer keys (the stored order flips their top bit) and numeric values; one
    NULL anywhere sends the chunk back to row-by-row decoding."""
    if null_at is not None:
        a, b, x, _, y = rows[null_at]
        rows[null_at] = (a, b, x, None, y)
    codec = _codec()
    chunk = [
        (codec.primary_prefix + encode_values([a, b]), codec.encode([a, b, x, n, y]))
        for a, b, x, n, y in rows
    ]
    by_row = [codec.row(key, value) for key, value in chunk]
    columns = codec.chunk_columns(chunk)
    if null_at is not None:
        assert columns is None
        return
    for number in range(5):
        decoded = columns.column(number)
        assert decoded == [row[number] for row in by_row]
        assert [type(v) for v in decoded] == [type(row[number]) for row in by_row]
    assert codec.chunk_columns(chunk[: BY_COLUMN_FROM - 1]) is None  # small: by row


def test_text_columns_are_decoded_by_row():
    session = Database(Store(MemoryObjects())).session()
    session.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, s TEXT)")
    codec = session.database.codec("t")
    chunk = [(codec.primary_prefix + encode_values([k]), codec.encode([k, "x"])) for k in range(99)]
    assert codec.chunk_columns(chunk) is None


def test_aggregates_over_numeric_rows_with_negatives_extremes_and_nulls():
    session = Database(Store(MemoryObjects())).session()
    session.execute(NUMERIC)
    rows = [
        (a, b, a * 0.5 - b, None if b == 3 else a * b, -1.5) for a in (-7, 0, 9) for b in range(5)
    ]
    rows += [(2**63 - 1, -(2**63), 1e300, -(2**63), 0.0)]
    for row in rows:
        session.execute("INSERT INTO m VALUES ($1, $2, $3, $4, $5)", list(row))
    got = session.execute("SELECT a, b, x, n, y FROM m ORDER BY a, b")[-1].rows
    assert got == sorted(rows)
    total = session.execute("SELECT sum(x), count(n), min(b) FROM m WHERE a < 10")[-1].rows
    assert total == [(sum(r[2] for r in rows if r[0] < 10), 12, 0)]


@settings(max_examples=200, deadline=None)
@given(INT64, INT64)
def test_integer_keys_packed_at_once_are_the_keys_encoded_value_by_value(a, b):
    codec = _codec()
    assert codec.primary_key([a, b, 0.5, 1, 2.5]) == codec.primary_prefix + encode_values([a, b])


def test_keys_that_cannot_be_packed_are_refused_as_value_by_value_encoding_does():
    codec = _codec()
    with pytest.raises(KeyEncodingError):
        codec.primary_key([2**63, 0, 0.5, 1, 2.5])
    assert codec.primary_key([None, 1, 0.5, 1, 2.5]) == codec.primary_prefix + encode_values(
        [None, 1]
    )
