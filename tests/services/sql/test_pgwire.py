"""The PostgreSQL protocol with real clients: psycopg (extended protocol) and psql."""

import os
import subprocess

import psycopg
import pytest


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
