"""The PostgreSQL protocol with real clients: psycopg (extended protocol) and psql."""

import os
import select
import socket
import ssl
import struct
import subprocess
import threading
import time

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.infra.web import server_ssl_context
from securecloud.services.sql import pgwire
from securecloud.services.sql.engine import Database
from securecloud.services.sql.storage import Store
from tests.services.sql.memory import MemoryObjects


def test_psycopg_inserts_and_queries_with_parameters(pg_server):
    with psycopg.connect(pg_server["conninfo"], autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS sample (client_id INTEGER, "
            "timestamp BIGINT, power REAL, raw BYTEA, "
            "PRIMARY KEY (client_id, timestamp))"
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO sample (client_id, timestamp, power, raw) VALUES (%s, %s, %s, %s)",
                [(i % 4, i, i * 0.5, bytes([i])) for i in range(40)],
            )
            cursor.execute(
                "SELECT timestamp, power, raw FROM sample WHERE client_id = %s "
                "AND timestamp >= %s ORDER BY timestamp DESC LIMIT 2",
                (1, 10),
            )
            assert cursor.fetchall() == [(37, 18.5, b"\x25"), (33, 16.5, b"\x21")]
            cursor.execute("SELECT avg(power) AS mean, count(*) FROM sample")
            assert [d.name for d in cursor.description] == ["mean", "count"]
            assert cursor.fetchone() == (9.75, 40)


def test_a_statement_prepared_again_under_its_name_is_the_one_that_runs(pg_server):
    """Binds of binary numbers are decoded by their remembered layout (a bulk INSERT's
    fast path); preparing or closing a statement of the same name must forget it."""
    with psycopg.connect(pg_server["conninfo"], autocommit=True) as connection:
        connection.execute("CREATE TABLE first_t (a BIGINT PRIMARY KEY, b BIGINT)")
        connection.execute("CREATE TABLE second_t (a BIGINT PRIMARY KEY, b BIGINT)")
        pgconn = connection.pgconn
        int8 = [20, 20]

        def run(name: bytes, a: int, b: int) -> None:
            values = [a.to_bytes(8, "big", signed=True), b.to_bytes(8, "big", signed=True)]
            result = pgconn.exec_prepared(name, values, param_formats=[1, 1])
            assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message

        pgconn.prepare(b"s", b"INSERT INTO first_t (a, b) VALUES ($1, $2)", int8)
        run(b"s", 1, 10)
        run(b"s", 2, 20)
        pgconn.prepare(b"s", b"INSERT INTO second_t (a, b) VALUES ($1, $2)", int8)
        run(b"s", 3, 30)
        _close_statement(pgconn, b"s")
        gone = pgconn.exec_prepared(b"s", [bytes(8), bytes(8)], param_formats=[1, 1])
        assert gone.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"
        pgconn.prepare(b"s", b"INSERT INTO second_t (b, a) VALUES ($1, $2)", int8)
        run(b"s", 40, 4)
        assert connection.execute("SELECT a, b FROM first_t ORDER BY a").fetchall() == [
            (1, 10),
            (2, 20),
        ]
        assert connection.execute("SELECT a, b FROM second_t ORDER BY a").fetchall() == [
            (3, 30),
            (4, 40),
        ]


def _close_statement(pgconn, name: bytes) -> None:
    """Close and Sync, sent and answered without libpq's blocking PQclosePrepared, which
    (libpq 18 here, over TLS) leaves the Close in its buffer and waits for the answer."""
    pgconn.send_close_prepared(name)
    while pgconn.flush():
        select.select([], [pgconn.socket], [], 5)
    results = []
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                break
            results.append(result.status)
        else:
            select.select([pgconn.socket], [], [], 5)
    assert results == [psycopg.pq.ExecStatus.COMMAND_OK]


def test_errors_carry_their_sqlstate_and_the_session_goes_on(pg_server):
    with psycopg.connect(pg_server["conninfo"]) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS uniq (id INTEGER PRIMARY KEY)")
        connection.commit()
        for sql, state in [
            ("SELECT * FROM nowhere", "42P01"),
            ("SELEC 1", "42601"),
            ("INSERT INTO uniq VALUES ('x')", "22P02"),
        ]:
            with pytest.raises(psycopg.Error) as raised:
                connection.execute(sql)
            assert raised.value.sqlstate == state
            connection.rollback()
        connection.execute("INSERT INTO uniq VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO uniq VALUES (1)")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            connection.execute("SELECT 1")
        connection.rollback()
        assert connection.execute("SELECT count(*) FROM uniq").fetchone() == (0,)


def test_wrong_password_and_plaintext_are_refused(pg_server):
    wrong = pg_server["conninfo"].replace("password=", "password=not-")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(wrong)
    plain = pg_server["conninfo"].replace("sslmode=verify-full", "sslmode=disable")
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(plain)


def test_psql_lists_and_describes_tables(pg_server):
    with psycopg.connect(pg_server["conninfo"], autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS described (id INTEGER PRIMARY KEY, "
            "serial TEXT UNIQUE, kwh DOUBLE PRECISION NOT NULL)"
        )
    env = dict(os.environ, PGPASSWORD="token-for-tests", PGCONNECT_TIMEOUT="10")
    target = pg_server["conninfo"].replace(" password=token-for-tests", "")
    result = subprocess.run(
        ["psql", target, "-X", "-c", r"\dt", "-c", r"\d described", "-c", "SELECT 40 + 2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "described | table" in result.stdout
    assert "kwh    | double precision |           | not null" in result.stdout
    assert '"described_pkey" PRIMARY KEY, cascadb (id)' in result.stdout
    assert '"described_serial_key" UNIQUE, cascadb (serial)' in result.stdout
    assert "42" in result.stdout


def test_silent_sockets_are_dropped_and_clients_beyond_the_limit_refused(tls_files):
    import socket
    import time

    from securecloud.infra.supervisor import free_port
    from securecloud.infra.web import server_ssl_context
    from securecloud.services.sql.engine import Database
    from securecloud.services.sql.pgwire import Authenticator, PgServer
    from securecloud.services.sql.storage import Store
    from tests.services.sql.conftest import TOKEN
    from tests.services.sql.memory import MemoryObjects

    directory, tls = tls_files
    port = free_port()
    server = PgServer(
        Database(Store(MemoryObjects())),
        server_ssl_context(tls),
        Authenticator(TOKEN),
        max_connections=1,
        startup_seconds=0.5,
    ).start("127.0.0.1", port)
    try:
        silent = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.1)
        conninfo = (
            f"host=127.0.0.1 port={port} user=u dbname=d password={TOKEN} "
            f"sslmode=verify-full sslrootcert={directory / 'ca.crt'} connect_timeout=5"
        )
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(conninfo).close()
        silent.settimeout(5)
        assert silent.recv(100) == b""  # closed by the server after its startup deadline
        time.sleep(0.1)
        with psycopg.connect(conninfo) as connection:  # the slot is free again
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.close()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(),
            st.floats(min_value=-1e6, max_value=1e6),
            st.floats(min_value=1e-6, max_value=1e-3),  # around the bound of _plain
            st.floats(min_value=1e300),
        ),
        min_size=1,
        max_size=20,
    ),
    st.booleans(),
)
def test_a_column_of_floats_is_sent_as_each_value_alone_would_be(values, binary):
    """Columns are converted in bulk (orjson for long columns of plain floats, maps for
    the rest); the bytes equal the value-by-value conversion, repr's text included."""
    values = values * (pgwire._BULK_FLOATS // len(values) + 1)  # long enough for orjson
    column = pgwire._fields(tuple(values), binary)
    alone = [pgwire._fields((v,), binary)[0] for v in values]
    expected = [
        pgwire._U32.pack(len(raw)) + raw
        for raw in (pgwire._binary(v) if binary else pgwire._text(v) for v in values)
    ]
    assert column == alone == expected
    rows = [(v, n) for n, v in enumerate(values)]  # a DataRow each, by column or by value
    for count in (1, 2, len(rows)):
        sent = pgwire.data_rows(rows[:count], [1] if binary else [0])
        assert sent == b"".join(
            b"D" + pgwire._U32.pack(4 + len(payload)) + payload
            for payload in (
                b"\x00\x02" + expected[n] + pgwire._U32.pack(len(f)) + f
                for n in range(count)
                for f in [pgwire._binary(n) if binary else str(n).encode()]
            )
        )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(),
            st.floats(min_value=1e-11, max_value=1e-3),  # where orjson and repr part
            st.floats(min_value=-1e6, max_value=1e6),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.booleans(),
            st.none(),
            st.text(max_size=3),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_a_row_is_sent_as_each_value_alone_would_be(row):
    """One row of numbers goes out by maps (orjson where it writes repr's digits); the
    bytes equal the value-by-value conversion, whatever the row holds."""
    payload = b"".join(
        [pgwire._U16.pack(len(row))]
        + [
            pgwire._NULL_FIELD if v is None else pgwire._U32.pack(len(t)) + t
            for v in row
            for t in [b"" if v is None else pgwire._text(v)]
        ]
    )
    expected = b"D" + pgwire._U32.pack(4 + len(payload)) + payload
    assert pgwire.data_rows([tuple(row)], [0]) == expected


_PLAIN_NUMBERS = st.one_of(
    st.floats(min_value=1e-4, max_value=1e308),
    st.floats(min_value=-1e308, max_value=-1e-4),
    st.sampled_from([0.0, -0.0, 1.0, 1e16, 123.456]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
_SPOILERS = st.one_of(  # each sends the whole result the column-wise way
    st.floats(min_value=1e-11, max_value=1e-5),
    st.sampled_from([float("nan"), float("inf"), True, None, "7", 2**64]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=5).flatmap(
        lambda width: st.lists(
            st.lists(_PLAIN_NUMBERS, min_size=width, max_size=width),
            min_size=pgwire._NUMBERS_AS_TEXT_FROM,
            max_size=60,
        )
    ),
    st.one_of(st.none(), st.tuples(st.integers(min_value=0), _SPOILERS)),
)
def test_a_result_of_many_rows_is_sent_as_each_value_alone_would_be(rows, spoiler):
    """A result of numbers alone goes out from one orjson text cut up by NumPy; the bytes
    equal the value-by-value conversion, and any other value sends it the other way."""
    if spoiler is not None:
        at, value = spoiler
        rows[at % len(rows)][at % len(rows[0])] = value
    rows = [tuple(row) for row in rows]
    expected = b""
    for row in rows:
        payload = pgwire._U16.pack(len(row)) + b"".join(
            pgwire._NULL_FIELD if v is None else pgwire._U32.pack(len(t)) + t
            for v in row
            for t in [b"" if v is None else pgwire._text(v)]
        )
        expected += b"D" + pgwire._U32.pack(4 + len(payload)) + payload
    assert pgwire.data_rows(rows, [0]) == expected
    assert (pgwire._numbers_as_text(rows) is not None) == (spoiler is None)


def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def _row(k: int | None, v: float, w: int) -> bytes:
    """What psycopg's executemany sends for one row: Bind (binary int8, float8, int8),
    Describe of the portal, Execute."""
    params = b"".join(
        b"\xff\xff\xff\xff" if value is None else (8).to_bytes(4, "big") + packed
        for value, packed in (
            (k, None if k is None else k.to_bytes(8, "big", signed=True)),
            (v, struct.pack("!d", v)),
            (w, w.to_bytes(8, "big", signed=True)),
        )
    )
    bind = b"\x00s1\x00" + b"\x00\x01\x00\x01" + b"\x00\x03" + params + b"\x00\x00"
    return _msg(b"B", bind) + _msg(b"D", b"P\x00") + _msg(b"E", b"\x00\x00\x00\x00\x00")


def _pipeline(rows, block: bool) -> list[bytes]:
    """What the client sends before each wait for the answers."""
    parse = _msg(
        b"P",
        b"s1\x00INSERT INTO t (k, v, w) VALUES ($1, $2, $3)\x00\x00\x03"
        + b"".join(oid.to_bytes(4, "big") for oid in (20, 701, 20)),
    )
    rows = parse + b"".join(_row(*r) for r in rows) + _msg(b"S")
    if block:
        return [_msg(b"Q", b"BEGIN\x00"), rows, _msg(b"Q", b"COMMIT\x00"), _msg(b"X")]
    return [rows, _msg(b"X")]


class _Feed:
    """A client whose pipeline arrived whole before the engine read it (the engine is
    behind it); it waits for the answers at each Sync or Query."""

    def __init__(self, segments: list[bytes]):
        self.segments, self.sent = list(segments), []

    def read(self, limit: int) -> bytes:
        segment = self.segments.pop(0)
        return segment

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def _serve(pipeline: list[bytes], bulk: bool, monkeypatch) -> tuple[bytes, list, int]:
    """(the replies, the stored rows, the rows inserted in runs)."""
    database = Database(Store(MemoryObjects()))
    session = database.session()
    session.execute("CREATE TABLE t (k BIGINT PRIMARY KEY, v DOUBLE PRECISION, w BIGINT)")
    connection = pgwire.Connection(None, _Feed(pipeline))
    connection.session = database.session()
    in_runs = []
    insert_many = connection.session.insert_many

    def counted(statement, rows):
        done, error = insert_many(statement, rows)
        in_runs.append(done)
        return done, error

    with monkeypatch.context() as patch:
        if bulk:
            patch.setattr(connection.session, "insert_many", counted)
        else:
            patch.setattr(pgwire.Connection, "bulk_insert", lambda self, m, s: (0, b""))
        connection.loop()
    stored = session.execute("SELECT * FROM t ORDER BY k")[0].rows
    return b"".join(connection.stream.sent), stored, sum(in_runs)


@pytest.mark.parametrize(
    "case",
    ["block", "duplicate key in a block", "NULL key in a block", "autocommit rows"],
)
def test_a_run_of_bulk_inserts_answers_and_stores_as_one_by_one(case, monkeypatch):
    """Bind/Describe/Execute runs of one INSERT in a transaction block go to the engine
    in one call (Connection.bulk_insert): the replies and the stored rows are those of
    the same messages handled one at a time, errors included."""
    rows = [(k, k / 7, k * 3) for k in range(60)]
    block = case != "autocommit rows"
    if case == "duplicate key in a block":
        rows[30] = (5, 0.5, 1)  # fails; the block fails, so COMMIT rolls it back
        rows[45] = (None, 0.5, 1)  # after the run, skipped until Sync as the rest
    if case == "NULL key in a block":
        rows[30] = (None, 0.5, 1)  # another Bind layout: one by one, and NOT NULL fails
    pipeline = _pipeline(rows, block)
    replies, stored, _ = _serve(pipeline, bulk=False, monkeypatch=monkeypatch)
    together, stored_together, in_runs = _serve(pipeline, bulk=True, monkeypatch=monkeypatch)
    assert (together, stored_together) == (replies, stored)
    if case == "block":
        assert stored == [tuple(r) for r in rows] and b"SERROR" not in replies
        assert in_runs == 59  # the first Bind sets the shape, the rest went in one run
    elif case == "autocommit rows":
        assert stored == [tuple(r) for r in rows] and in_runs == 0  # each row commits
    else:
        assert stored == [] and b"ROLLBACK" in replies and b"SERROR" in replies
        assert in_runs == 29  # rows 1-29; row 30 fails (in the run, or alone)


def test_a_read_gathers_the_records_that_have_arrived(tls_files):
    """A pipelining client writes a TLS record per row and one recv returns one record:
    Stream.read takes every record already here, so the engine sees them as a run."""
    directory, tls = tls_files
    listener = socket.create_server(("127.0.0.1", 0))
    client_raw = socket.create_connection(listener.getsockname())
    server_raw, _ = listener.accept()
    context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    handshake = threading.Thread(
        target=lambda: holder.append(context.wrap_socket(client_raw, server_hostname="localhost"))
    )
    holder: list = []
    handshake.start()
    stream = pgwire.Stream(server_raw)
    stream.start_tls(server_ssl_context(tls))
    handshake.join(10)
    client = holder[0]
    records = [_row(k, 1.5, 2) for k in range(5)]
    for record in records:
        client.sendall(record)  # one TLS record each
    time.sleep(0.3)
    assert stream.read(pgwire.READ_BYTES) == b"".join(records)
    client.close()
    stream.close()
    listener.close()


def test_a_connection_waits_busy_only_after_it_has_answered(monkeypatch):
    """The thread spins for the client's next message only once it has written an answer
    (the client's next query comes soon); in the middle of a pipeline it does not."""
    ours, client = socket.socketpair()
    stream = pgwire.Stream(ours, spin=0.001)
    spins = []
    real_spin = stream._spin
    monkeypatch.setattr(stream, "_spin", lambda: spins.append(real_spin()))
    client.sendall(b"B")
    assert stream.read(10) == b"B" and spins == []  # nothing answered yet
    stream.write(b"answer")
    client.sendall(b"E")
    assert stream.read(10) == b"E" and len(spins) == 1
    client.sendall(b"S")
    assert stream.read(10) == b"S" and len(spins) == 1
    stream.write(b"answer")
    threading.Timer(0.01, client.sendall, (b"late",)).start()  # after the spin: sleeps
    assert stream.read(10) == b"late" and len(spins) == 2
    ours.close()
    client.close()
