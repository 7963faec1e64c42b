"""Row values decoded a chunk at a time agree with row-by-row decoding."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.services.sql.engine import Database
from securecloud.services.sql.keys import encode_values
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


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(INT64, INT64, REAL, st.one_of(st.none(), INT64), REAL),
        min_size=1,
        max_size=40,
        unique_by=lambda r: (r[0], r[1]),
    )
)
def test_a_chunk_decodes_by_column_as_it_does_by_row(rows):
    codec = _codec()
    chunk = [
        (codec.primary_prefix + encode_values([a, b]), codec.encode([a, b, x, n, y]))
        for a, b, x, n, y in rows
    ]
    by_row = [codec.row(key, value) for key, value in chunk]
    columns = codec.chunk_columns(chunk)
    if any(n is None for _, _, _, n, _ in rows):
        assert columns is None  # a NULL anywhere: the chunk is decoded row by row
        return
    for number in range(5):
        decoded = columns.column(number)
        assert decoded == [row[number] for row in by_row]
        assert [type(v) for v in decoded] == [type(row[number]) for row in by_row]


def test_text_columns_are_decoded_by_row():
    session = Database(Store(MemoryObjects())).session()
    session.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, s TEXT)")
    codec = session.database.codec("t")
    chunk = [(codec.primary_prefix + encode_values([1]), codec.encode([1, "x"]))]
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
