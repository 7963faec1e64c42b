"""`securecloud sql serve` with real processes: LAS, CAS, the KVS gateway with nine
storage nodes, and CascaDB launched attested; the unmodified collector, psql-style
clients, HTTPS /v1/query, kill -9 and restart."""

import csv
import io
import os
import signal
import ssl
import subprocess
import sys

import httpx
import psycopg
import pytest

from securecloud.apps.collector import COLUMNS
from securecloud.infra.supervisor import Supervisor, free_port
from securecloud.services.sql.deploy import conninfo

CLI = [sys.executable, "-m", "securecloud.cli.main"]
SECRET = "Rua das Flores 1578, apto 42"  # a value no storage node may ever see


@pytest.fixture(scope="module")
def cascadb(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cascadb")
    supervisor = Supervisor(data_dir)
    las, cas, kvs = supervisor.up(free_port(), free_port(), kvs_port=free_port())
    pg_port, http_port = free_port(), free_port()

    def start():
        return supervisor.start_sql(pg_port, http_port, cas.url, las.url, kvs.url, cache_mb=16)

    start()
    token = (data_dir / "sql" / "token").read_text().strip()
    yield {
        "data_dir": data_dir,
        "supervisor": supervisor,
        "start": start,
        "conninfo": conninfo(data_dir, pg_port, user="collector"),
        "url": f"https://127.0.0.1:{http_port}",
        "token": token,
        "pg_port": pg_port,
    }
    supervisor.stop_all()


def _csv(meters: int, intervals: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for step in range(intervals):
        for meter in range(1, meters + 1):
            power = 100.0 * meter + step
            phases = [127.1, 0, 0, power / 127.1, 0, 0, 3.5, 0, 0]
            totals = [power, 12.5, 0.99, 60.0, power]
            writer.writerow(
                [meter, 1_772_409_600 + 900 * step, *phases, *totals, 1000 * meter + 25 * step]
            )
    return out.getvalue()


def _query(cascadb, sql, params=None, token=None):
    return httpx.post(
        f"{cascadb['url']}/v1/query",
        json={"sql": sql, "params": params},
        headers={"Authorization": f"Bearer {token or cascadb['token']}"},
        verify=ssl.create_default_context(cafile=cascadb["data_dir"] / "sql" / "ca.crt"),
        timeout=30,
    )


def _running_pid(cascadb) -> int:
    return next(r.pid for r in cascadb["supervisor"].running() if r.name == "sql")


def test_the_unmodified_collector_stores_readings_and_clients_query_them(cascadb):
    collector = subprocess.run(
        [sys.executable, "-m", "securecloud.apps.collector", cascadb["conninfo"], "--batch", "50"],
        input=_csv(20, 12),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collector.returncode == 0, collector.stderr
    assert "stored 240 readings" in collector.stdout
    with psycopg.connect(cascadb["conninfo"]) as connection:
        rows = connection.execute(
            "SELECT timestamp, power FROM reading WHERE client_id = %s "
            "ORDER BY timestamp DESC LIMIT 2",
            (7,),
        ).fetchall()
        assert rows == [(1_772_409_600 + 900 * 11, 711.0), (1_772_409_600 + 900 * 10, 710.0)]
    answer = _query(cascadb, "SELECT count(*), max(energy) FROM reading WHERE client_id = $1", [20])
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [[12, 20_275]]
    shell_args = ["--data-dir", str(cascadb["data_dir"]), "--port", str(cascadb["pg_port"])]
    shell = subprocess.run(
        [*CLI, "sql", "shell", *shell_args, "-c", "SELECT count(*) AS n FROM reading"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0 and "240" in shell.stdout, shell.stdout + shell.stderr


def test_https_query_refuses_a_wrong_token_and_names_the_sqlstate(cascadb):
    assert _query(cascadb, "SELECT 1", token="not-the-token").status_code == 401
    missing = _query(cascadb, "SELECT * FROM nowhere")
    assert missing.status_code == 400 and missing.json()["reason"] == "42P01"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cascadb["conninfo"].replace(cascadb["token"], "wrong")).close()


def test_storage_nodes_hold_no_plaintext(cascadb):
    with psycopg.connect(cascadb["conninfo"], autocommit=True) as connection:
        connection.execute("CREATE TABLE consumer (id INTEGER PRIMARY KEY, address TEXT)")
        connection.execute("INSERT INTO consumer VALUES (1, %s)", (SECRET,))
        assert connection.execute("SELECT address FROM consumer").fetchone() == (SECRET,)
    nodes = list((cascadb["data_dir"]).rglob("nodes/node-*/*"))
    assert nodes, "the KVS nodes keep their files under <data dir>/.../nodes"
    for path in nodes:
        if path.is_file():
            content = path.read_bytes()
            for needle in (SECRET.encode(), b"consumer", b"address", b"CREATE TABLE"):
                assert needle not in content, (path, needle)


def test_kill_minus_nine_keeps_commits_and_drops_the_open_transaction(cascadb):
    with psycopg.connect(cascadb["conninfo"], autocommit=True) as connection:
        connection.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT)")
        connection.execute("INSERT INTO ledger VALUES (1, 'committed')")
    open_tx = psycopg.connect(cascadb["conninfo"])
    open_tx.execute("INSERT INTO ledger VALUES (2, 'never committed')")
    os.killpg(_running_pid(cascadb), signal.SIGKILL)
    open_tx.close()
    cascadb["supervisor"].stop("sql", grace=0)
    cascadb["start"]()  # attested again: keys and token from CAS, state from the KVS log
    with psycopg.connect(cascadb["conninfo"]) as connection:
        assert connection.execute("SELECT id, note FROM ledger").fetchall() == [(1, "committed")]
        assert connection.execute("SELECT count(*) FROM reading").fetchone() == (240,)
