"""CascaDB's engine on an in-memory object store: SQL semantics, keys, transactions."""

import pytest

from securecloud.services.sql.engine import Database
from securecloud.services.sql.errors import (
    InFailedTransaction,
    NotNullViolation,
    SerializationFailure,
    SqlError,
    TypeMismatch,
    UndefinedTable,
    UniqueViolation,
    Unsupported,
)
from securecloud.services.sql.storage import Store

READING = (
    "CREATE TABLE reading (client_id INTEGER, timestamp BIGINT, power REAL, "
    "voltage DOUBLE PRECISION, note TEXT, PRIMARY KEY (client_id, timestamp))"
)


def rows(session, sql, params=None):
    return session.execute(sql, params)[-1].rows


@pytest.fixture
def loaded(database):
    session = database.session()
    session.execute(READING)
    values = ", ".join(
        f"({m}, {t}, {m * 100 + t}.5, 230.0, 'm{m}')" for m in range(1, 11) for t in range(96)
    )
    session.execute(f"INSERT INTO reading VALUES {values}")
    return session


def test_point_lookup_reads_one_row(loaded):
    loaded.rows_read = 0
    assert rows(
        loaded, "SELECT power FROM reading WHERE client_id = $1 AND timestamp = $2", [3, 7]
    ) == [(307.5,)]
    assert loaded.rows_read == 1
    # values of other types are coerced to the key's columns as SQLite compares them
    for key in (["3", 7], [3.0, "7"], [3, 7.0]):
        assert rows(
            loaded, "SELECT power FROM reading WHERE client_id = $1 AND timestamp = $2", key
        ) == [(307.5,)]
    assert (
        rows(loaded, "SELECT * FROM reading WHERE client_id = $1 AND timestamp = $2", [3, 96]) == []
    )
    assert (
        rows(loaded, "SELECT * FROM reading WHERE client_id = $1 AND timestamp = $2", [3, None])
        == []
    )


def test_key_columns_read_from_the_key_alone_of_any_type(database):
    session = database.session()
    session.execute(
        "CREATE TABLE meter (name TEXT, phase INTEGER, place TEXT, PRIMARY KEY (name, phase))"
    )
    session.execute("INSERT INTO meter VALUES ('b', 2, 'x'), ('a', 1, 'y'), ('c', -3, NULL)")
    assert rows(session, "SELECT name FROM meter WHERE name > $1 ORDER BY name LIMIT 1", ["a"]) == [
        ("b",)
    ]
    assert rows(
        session, "SELECT phase FROM meter WHERE name = $1 ORDER BY phase DESC LIMIT 1", ["c"]
    ) == [(-3,)]
    assert rows(session, "SELECT phase, name, place FROM meter ORDER BY name") == [
        (1, "a", "y"),
        (2, "b", "x"),
        (-3, "c", None),
    ]


def test_range_on_the_key_reads_only_the_range(loaded):
    loaded.rows_read = 0
    found = rows(
        loaded,
        "SELECT count(*), sum(power) FROM reading "
        "WHERE client_id = 5 AND timestamp >= 10 AND timestamp < 20",
    )
    assert found == [(10, sum(500 + t + 0.5 for t in range(10, 20)))]
    assert loaded.rows_read == 10


def test_in_lists_and_descending_order_are_pushed_down(loaded):
    loaded.rows_read = 0
    found = rows(
        loaded,
        "SELECT client_id, timestamp FROM reading WHERE client_id IN (9, 2) AND timestamp = 5",
    )
    assert sorted(found) == [(2, 5), (9, 5)]
    assert loaded.rows_read == 2
    loaded.rows_read = 0
    found = rows(
        loaded,
        "SELECT timestamp FROM reading WHERE client_id = 9 ORDER BY timestamp DESC LIMIT 3",
    )
    assert found == [(95,), (94,), (93,)]
    assert loaded.rows_read <= 4  # read backwards and stopped: no sort of 96 rows


def test_joins_aggregates_and_subqueries_come_from_sqlite(loaded):
    loaded.execute("CREATE TABLE client (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    loaded.execute("INSERT INTO client VALUES (1, 'school'), (2, 'bakery')")
    found = rows(
        loaded,
        "SELECT c.name, max(r.power) FROM reading r JOIN client c "
        "ON c.id = r.client_id GROUP BY c.name ORDER BY c.name",
    )
    assert found == [("bakery", 295.5), ("school", 195.5)]
    assert rows(
        loaded,
        "SELECT count(*) FROM reading WHERE client_id = "
        "(SELECT id FROM client WHERE name = 'bakery')",
    ) == [(96,)]


def test_secondary_index_is_maintained_and_used(loaded):
    loaded.execute("CREATE INDEX reading_note ON reading (note)")
    loaded.execute("UPDATE reading SET note = 'moved' WHERE client_id = 4 AND timestamp < 5")
    loaded.rows_read = 0
    assert rows(loaded, "SELECT count(*) FROM reading WHERE note = 'moved'") == [(5,)]
    assert loaded.rows_read == 5
    assert rows(loaded, "SELECT count(*) FROM reading WHERE note = 'm4'") == [(91,)]
    loaded.execute("DELETE FROM reading WHERE client_id = 4")
    assert rows(loaded, "SELECT count(*) FROM reading WHERE note = 'moved'") == [(0,)]


def test_keys_unique_and_not_null_are_enforced(database):
    session = database.session()
    session.execute(
        "CREATE TABLE meter (id INTEGER PRIMARY KEY, serial TEXT UNIQUE, site TEXT NOT NULL)"
    )
    session.execute("INSERT INTO meter VALUES (1, 'A-1', 'north')")
    with pytest.raises(UniqueViolation):
        session.execute("INSERT INTO meter VALUES (1, 'A-2', 'south')")
    with pytest.raises(UniqueViolation):
        session.execute("INSERT INTO meter VALUES (2, 'A-1', 'south')")
    with pytest.raises(NotNullViolation):
        session.execute("INSERT INTO meter (id, serial) VALUES (3, 'A-3')")
    with pytest.raises(TypeMismatch, match="id"):
        session.execute("INSERT INTO meter VALUES ('three', 'A-3', 'x')")
    # a failed multi-row statement writes nothing
    with pytest.raises(UniqueViolation):
        session.execute("INSERT INTO meter VALUES (5, 'A-5', 'x'), (1, 'A-6', 'y')")
    assert rows(session, "SELECT id FROM meter ORDER BY id") == [(1,)]
    session.execute(
        "INSERT INTO meter VALUES (1, 'A-9', 'east') "
        "ON CONFLICT (id) DO UPDATE SET serial = EXCLUDED.serial, site = EXCLUDED.site"
    )
    session.execute("INSERT INTO meter VALUES (1, 'X', 'y') ON CONFLICT DO NOTHING")
    assert rows(session, "SELECT * FROM meter") == [(1, "A-9", "east")]


def test_tables_without_a_primary_key_and_serial_keys(database):
    session = database.session()
    session.execute("CREATE TABLE event (kind TEXT, at BIGINT)")
    session.execute("INSERT INTO event VALUES ('boot', 1), ('boot', 1)")
    assert rows(session, "SELECT * FROM event") == [("boot", 1), ("boot", 1)]
    session.execute("CREATE TABLE alarm (id SERIAL PRIMARY KEY, what TEXT)")
    session.execute("INSERT INTO alarm (what) VALUES ('a'), ('b')")
    assert rows(session, "SELECT id, what FROM alarm") == [(1, "a"), (2, "b")]


def test_rollback_and_statement_failure_in_a_block(loaded):
    loaded.execute("BEGIN")
    loaded.execute("DELETE FROM reading WHERE client_id = 1")
    assert rows(loaded, "SELECT count(*) FROM reading WHERE client_id = 1") == [(0,)]
    loaded.execute("ROLLBACK")
    assert rows(loaded, "SELECT count(*) FROM reading WHERE client_id = 1") == [(96,)]
    loaded.execute("BEGIN")
    loaded.execute("INSERT INTO reading VALUES (99, 1, 1, 1, 'x')")
    with pytest.raises(UniqueViolation):
        loaded.execute("INSERT INTO reading VALUES (99, 1, 1, 1, 'x')")
    with pytest.raises(InFailedTransaction):
        loaded.execute("SELECT 1")
    assert loaded.execute("COMMIT")[0].tag == "ROLLBACK"
    assert rows(loaded, "SELECT count(*) FROM reading WHERE client_id = 99") == [(0,)]


def test_nothing_uncommitted_survives_a_crash(objects, loaded):
    loaded.execute("BEGIN")
    loaded.execute("INSERT INTO reading VALUES (77, 1, 1, 1, 'pending')")
    objects.fail_next_batch = True  # the process dies as it commits
    with pytest.raises(ConnectionError):
        loaded.execute("COMMIT")
    restarted = Database(Store(objects)).session()
    assert rows(restarted, "SELECT count(*) FROM reading") == [(960,)]
    assert rows(restarted, "SELECT count(*) FROM reading WHERE client_id = 77") == [(0,)]


def test_acknowledged_commits_survive_restart_and_checkpoint(objects, database, loaded):
    database.checkpoint()
    loaded.execute("UPDATE reading SET note = 'after' WHERE client_id = 2")  # log only
    restarted = Database(Store(objects)).session()
    assert rows(restarted, "SELECT count(*) FROM reading WHERE note = 'after'") == [(96,)]
    assert rows(restarted, "SELECT sum(power) FROM reading") == rows(
        loaded, "SELECT sum(power) FROM reading"
    )
    assert not any(
        k.startswith("wal/") and int(k[4:]) <= database.store.checkpointed for k in objects.objects
    )


def test_concurrent_writers_of_one_row_one_is_told_to_retry(database, loaded):
    other = database.session()
    loaded.execute("BEGIN")
    other.execute("BEGIN")
    loaded.execute("UPDATE reading SET power = 1 WHERE client_id = 1 AND timestamp = 0")
    other.execute("UPDATE reading SET power = 2 WHERE client_id = 1 AND timestamp = 0")
    other.execute("UPDATE reading SET power = 2 WHERE client_id = 3 AND timestamp = 0")
    loaded.execute("COMMIT")
    with pytest.raises(SerializationFailure) as raised:
        other.execute("COMMIT")
    assert raised.value.sqlstate == "40001"
    assert rows(
        loaded, "SELECT power FROM reading WHERE client_id IN (1, 3) AND timestamp = 0"
    ) == [(1.0,), (300.5,)]


def test_a_second_server_on_the_same_objects_is_noticed(objects, database, loaded):
    second = Database(Store(objects)).session()
    loaded.execute("UPDATE reading SET power = 5 WHERE client_id = 6 AND timestamp = 6")
    # the second server's view is older; its commit finds the log moved and catches up
    second.execute("UPDATE reading SET power = 7 WHERE client_id = 8 AND timestamp = 8")
    assert rows(second, "SELECT power FROM reading WHERE client_id = 6 AND timestamp = 6") == [
        (5.0,)
    ]


def test_dialects_and_errors_name_what_is_wrong(database, loaded):
    mysql = loaded.execute(
        "SELECT `client_id` FROM reading WHERE client_id = 1 LIMIT 1", dialect_name="mysql"
    )
    assert mysql[0].rows == [(1,)]
    assert rows(loaded, "SELECT power::int FROM reading WHERE client_id = 1 AND timestamp = 0") == [
        (100,)
    ]
    with pytest.raises(UndefinedTable, match="nosuch"):
        loaded.execute("SELECT * FROM nosuch")
    with pytest.raises(SqlError) as raised:
        loaded.execute("SELECT nosuch FROM reading")
    assert raised.value.sqlstate == "42703"
    with pytest.raises(SqlError) as raised:
        loaded.execute("SELEC 1")
    assert raised.value.sqlstate == "42601"
    with pytest.raises(Unsupported):
        loaded.execute("CREATE VIEW v AS SELECT 1")
    assert rows(loaded, "SELECT count(*) FROM reading") == [(960,)]  # still usable


def test_drop_table_removes_its_rows(objects, database, loaded):
    loaded.execute("DROP TABLE reading")
    with pytest.raises(UndefinedTable):
        loaded.execute("SELECT * FROM reading")
    loaded.execute(READING)
    assert rows(loaded, "SELECT count(*) FROM reading") == [(0,)]


def test_a_range_on_the_second_key_column_skips_to_each_first_value(loaded, objects):
    """WHERE timestamp BETWEEN ... with a key of (client_id, timestamp): each meter's run
    only (a skip scan), the same answer as SQLite over every row, before and after a
    checkpoint, with the transaction's own writes seen."""
    sql = (
        "SELECT client_id, count(*), sum(power) FROM reading "
        "WHERE timestamp >= $1 AND timestamp < $2 GROUP BY client_id"
    )
    expected = [(m, 10, sum(m * 100 + t + 0.5 for t in range(40, 50))) for m in range(1, 11)]
    loaded.rows_read = 0
    assert rows(loaded, sql, [40, 50]) == expected
    assert loaded.rows_read == 100  # of 960
    loaded.database.store.checkpoint()
    reopened = Database(Store(objects)).session()
    assert rows(reopened, sql, [40, 50]) == expected
    reopened.execute("BEGIN")
    reopened.execute("DELETE FROM reading WHERE client_id = 3 AND timestamp = 41")
    reopened.execute("INSERT INTO reading VALUES (11, 45, 1.0, 230.0, 'new')")
    assert rows(reopened, "SELECT count(*) FROM reading WHERE timestamp = $1", [41]) == [(9,)]
    assert rows(reopened, sql, [45, 46])[-1] == (11, 1, 1.0)
    assert rows(reopened, "SELECT count(*) FROM reading WHERE timestamp >= 95") == [(10,)]


def test_direct_inserts_keep_every_check_of_the_sqlite_path(loaded):
    """A one-row INSERT of parameters skips SQLite; its errors are the same."""
    insert = "INSERT INTO reading (client_id, timestamp, power) VALUES ($1, $2, $3)"
    assert loaded.execute(insert, [20, 1, 2.5])[-1].tag == "INSERT 0 1"
    assert rows(loaded, "SELECT power, note FROM reading WHERE client_id = 20") == [(2.5, None)]
    with pytest.raises(UniqueViolation):
        loaded.execute(insert, [20, 1, 3.0])
    with pytest.raises(NotNullViolation):
        loaded.execute(insert, [None, 2, 3.0])
    with pytest.raises(TypeMismatch, match="timestamp"):
        loaded.execute(insert, [20, "soon", 3.0])
    with pytest.raises(SqlError) as unknown:
        loaded.execute(
            "INSERT INTO reading (client_id, timestamp, watts) VALUES ($1, $2, $3)", [20, 3, 1.0]
        )
    assert unknown.value.sqlstate == "42703"
    with pytest.raises(SqlError) as missing:
        loaded.execute(insert, [20, 4])  # $3 not given
    assert missing.value.sqlstate == "42P02" and "$3" in str(missing.value)
    assert rows(loaded, "SELECT count(*) FROM reading WHERE client_id = 20") == [(1,)]
