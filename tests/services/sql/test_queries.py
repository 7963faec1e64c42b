"""CascaDB's answers against plain SQLite's on the same rows: seeks and scans of the
primary key and a secondary index (LIMIT 1, unique keys, ranges, IN lists, skip scans,
a loose index scan), with rows spread over runs of blocks, the memtable, deletes and a
transaction's own uncommitted writes."""

import random
import re
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.services.sql import storage
from securecloud.services.sql.engine import Database
from securecloud.services.sql.storage import Store
from tests.services.sql.memory import MemoryObjects

SCHEMA = (
    "CREATE TABLE t (a INTEGER NOT NULL, b BIGINT NOT NULL, c TEXT, d REAL, PRIMARY KEY (a, b))",
    "CREATE INDEX t_c ON t (c, d DESC)",
)
LASTPOINT_ALL = (
    "WITH RECURSIVE k(id) AS (SELECT (SELECT a FROM t ORDER BY a LIMIT 1) UNION ALL "
    "SELECT (SELECT a FROM t WHERE a > k.id ORDER BY a LIMIT 1) FROM k WHERE k.id IS NOT NULL) "
    "SELECT t.* FROM k JOIN t ON t.a = k.id AND t.b = "
    "(SELECT b FROM t WHERE a = k.id ORDER BY b DESC LIMIT 1) ORDER BY t.a"
)


def a(rng):
    return rng.choice(A_VALUES)


def b(rng):
    return rng.choice(B_VALUES)


def c(rng):
    return rng.choice(C_VALUES[:3])


# (SQL, its parameters, whether its ORDER BY fixes the order of every row)
QUERIES = [
    ("SELECT * FROM t WHERE a = $1 ORDER BY b DESC LIMIT 1", [a], True),
    ("SELECT * FROM t WHERE a = $1 ORDER BY b LIMIT 2", [a], True),
    ("SELECT * FROM t WHERE a = $1 AND b = $2", [a, b], True),
    (
        "SELECT * FROM t WHERE a = $1 AND b = $2",
        [lambda rng: str(a(rng)), lambda rng: float(b(rng))],
        True,
    ),
    ("SELECT b FROM t WHERE a = $1 AND b > $2 ORDER BY b LIMIT 1", [a, b], True),
    ("SELECT b FROM t WHERE a = $1 AND b <= $2 ORDER BY b DESC LIMIT 2", [a, b], True),
    ("SELECT a FROM t WHERE a > $1 ORDER BY a LIMIT 1", [a], True),
    ("SELECT a FROM t WHERE a < $1 ORDER BY a DESC LIMIT 1", [a], True),
    ("SELECT * FROM t WHERE a IN ($1, $2, $3) AND b = $4", [a, a, a, b], False),
    ("SELECT a, count(*), sum(d) FROM t WHERE b >= $1 AND b < $2 GROUP BY a", [b, b], False),
    ("SELECT count(*) FROM t WHERE a = $1 AND b <= $2", [a, b], True),
    ("SELECT * FROM t ORDER BY a DESC, b DESC LIMIT 3", [], True),
    (
        "SELECT a, b, d FROM t WHERE c = $1 AND d IS NOT NULL ORDER BY d DESC, a, b LIMIT 2",
        [c],
        True,
    ),
    ("SELECT count(*) FROM t WHERE c = $1", [c], True),
    (LASTPOINT_ALL, [], True),
]
UPSERT = (
    "INSERT INTO t VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (a, b) DO UPDATE SET c = EXCLUDED.c, d = EXCLUDED.d"
)
A_VALUES, B_VALUES, C_VALUES = range(12), range(40), ["x", "y", "z", None]


def _both(session, reference, sql: str, params=()) -> None:
    session.execute(sql, list(params))
    reference.execute(re.sub(r"\$(\d+)", r"?\1", sql), params)


def _change(rng: random.Random, session, reference) -> None:
    """One random write, the same on both: an upsert, a delete or an update."""
    choice = rng.random()
    if choice < 0.6:
        d = rng.choice([None, rng.randrange(-10, 10) / 2])  # sums exact in any order
        _both(session, reference, UPSERT, (a(rng), b(rng), rng.choice(C_VALUES), d))
    elif choice < 0.8:
        _both(session, reference, "DELETE FROM t WHERE a = $1 AND b >= $2", (a(rng), b(rng)))
    else:
        _both(session, reference, "UPDATE t SET c = $1 WHERE a = $2", (c(rng), a(rng)))


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False), st.booleans())
def test_queries_answer_as_sqlite_does_over_the_same_rows(rng, open_transaction):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "BLOCK_BYTES", 256)  # many blocks per run
        _compare(rng, open_transaction)


def _compare(rng: random.Random, open_transaction: bool) -> None:
    store = Store(MemoryObjects(), checkpoint_entries=10**9, background=False)
    session = Database(store).session()
    reference = sqlite3.connect(":memory:", isolation_level=None)
    for statement in SCHEMA:
        _both(session, reference, statement)
    for _ in range(rng.randrange(4, 10)):  # commits, some followed by a checkpoint
        _both(session, reference, "BEGIN")
        for _ in range(rng.randrange(1, 40)):
            _change(rng, session, reference)
        _both(session, reference, "COMMIT")
        if rng.random() < 0.5:
            store.checkpoint()
    if open_transaction:  # queries see the session's own writes over the store
        _both(session, reference, "BEGIN")
        for _ in range(rng.randrange(1, 10)):
            _change(rng, session, reference)
    for sql, arguments, ordered in QUERIES:
        for _ in range(3):
            params = [choose(rng) for choose in arguments]
            ours = [tuple(r) for r in session.execute(sql, params)[-1].rows]
            theirs = reference.execute(re.sub(r"\$(\d+)", r"?\1", sql), params).fetchall()
            if not ordered:
                ours, theirs = sorted(ours, key=repr), sorted(theirs, key=repr)
            assert ours == theirs, (sql, params)
