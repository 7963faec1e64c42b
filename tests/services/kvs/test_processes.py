"""The KVS with real processes: nine storage nodes, an attested gateway, kills."""

import base64
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from securecloud.infra.supervisor import Supervisor, free_port
from securecloud.services.kvs import batchwire
from securecloud.services.kvs.client import KvsClient
from securecloud.services.kvs.errors import KvsError

TOKEN = "node-token-for-tests"


def start_node(directory, port, token_file):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "securecloud.cli.main",
            "kvs",
            "node",
            "serve",
            "--directory",
            str(directory),
            "--port",
            str(port),
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("node did not start")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("kvs")
    token_file = data_dir / "node-token"
    token_file.write_text(TOKEN)
    supervisor = Supervisor(data_dir)
    las, cas = supervisor.up(free_port(), free_port())
    ports = [free_port() for _ in range(9)]
    nodes = {p: start_node(data_dir / f"node-{p}", p, token_file) for p in ports}
    gateway_port = free_port()
    args = [
        "kvs",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(gateway_port),
        "--cas",
        cas.url,
        "--las",
        las.url,
        "--node-token-file",
        str(token_file),
    ]
    for p in ports:
        args += ["--node", f"http://127.0.0.1:{p}"]
    gateway = supervisor.start(
        "kvs", args, f"https://127.0.0.1:{gateway_port}", ca=data_dir / "kvs" / "ca.crt", timeout=60
    )
    creds = json.loads((data_dir / "kvs" / "credentials.json").read_text())
    client = KvsClient(gateway.url, data_dir / "kvs" / "ca.crt", creds["id"], creds["secret"])
    client.create_bucket("meters")
    state = {
        "data_dir": data_dir,
        "nodes": nodes,
        "token_file": token_file,
        "supervisor": supervisor,
        "client": client,
        "args": args,
        "gateway": gateway,
    }
    yield state
    client.close()
    for process in state["nodes"].values():
        process.terminate()
        process.wait()
    supervisor.stop_all()


def test_a_large_object_comes_back_whole_in_pieces(cluster):
    """The gateway sends bodies in 256 KiB pieces (web.PiecewiseResponse): sizes around
    the piece boundaries and a multi-megabyte one come back byte for byte."""
    client = cluster["client"]
    for size in (0, 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 5_000_003):
        data = os.urandom(size)
        client.put("meters", f"piecewise-{size}", data)
        response = client._call("GET", f"/v1/meters/piecewise-{size}")
        assert response.content == data
        assert response.headers["content-length"] == str(size)


def test_keys_with_url_characters_round_trip_and_errors_keep_their_reason(cluster):
    """Object bodies come back through http.client (infra.bulk_http), everything else
    through httpx: both must name the same object for any UTF-8 key and report a
    missing one as the gateway does."""
    client = cluster["client"]
    for key in ("a%41/b", "what?x=1", "hash#tag", "two words", "ação/medição", "a/../b"):
        data = key.encode() * 3
        put = client.put("meters", key, data)
        assert client.get("meters", key) == data
        assert client.get_versioned("meters", key) == (data, put["version"])
        assert client.head("meters", key)["x-object-version"] == str(put["version"])
        assert key in [o["key"] for o in client.list("meters", key)]
        client.delete("meters", key)
        with pytest.raises(KvsError) as missing:
            client.get("meters", key)
        assert missing.value.status == 404 and missing.value.reason == "no-such-key"


def test_a_kept_connection_the_gateway_closed_is_replaced(cluster):
    """uvicorn closes a connection idle for 5 s; the next GET must still succeed."""
    client = cluster["client"]
    client.put("meters", "idle-then-get", b"still here")
    assert client.get("meters", "idle-then-get") == b"still here"
    assert len(client._bulk._idle) == 1
    time.sleep(6)
    assert client.get("meters", "idle-then-get") == b"still here"


def test_a_put_after_the_gateway_closed_its_kept_connection_is_sent_once(cluster):
    """A PUT is never sent twice (it may have been carried out): an idle connection the
    gateway closed is noticed before the PUT goes out. A conditional PUT shows it: sent
    twice, its second copy would find the version it made and be refused with 412."""
    client = cluster["client"]
    first = client.put("meters", "idle-then-put", b"v1")
    time.sleep(6)  # uvicorn closes a connection idle for 5 s
    second = client.put("meters", "idle-then-put", b"v2", if_match=first["version"])
    assert second["version"] == first["version"] + 1
    assert client.get("meters", "idle-then-put") == b"v2"


def test_node_refuses_requests_without_the_token(cluster):
    port = next(iter(cluster["nodes"]))
    response = httpx.get(f"http://127.0.0.1:{port}/v1/fragments")
    assert response.status_code == 401


def test_nodes_see_no_plaintext_and_no_names(cluster):
    client = cluster["client"]
    secret = b"meter 0042 reported 17.25 kWh at 03:45 " * 50
    client.put("meters", "consumer-0042/2026-11-21", secret, policy="hybrid:1+6+2")
    client.put("meters", "consumer-0042/tiny", secret[:64])
    for port in cluster["nodes"]:
        for path in (cluster["data_dir"] / f"node-{port}").glob("*"):
            content = path.read_bytes()
            for needle in (secret[:40], b"consumer-0042", b"meters", b"17.25 kWh"):
                assert needle not in content, (path, needle)


def test_killing_up_to_m_nodes_keeps_every_object_readable_and_m_plus_one_stops_writes(cluster):
    client, nodes = cluster["client"], cluster["nodes"]
    objects = {f"obj-{p}": os.urandom(200_000) for p in ("ec:6+3", "hybrid:1+6+2")}
    for (key, data), policy in zip(objects.items(), ("ec:6+3", "hybrid:1+6+2"), strict=True):
        client.put("meters", key, data, policy=policy)
    victims = list(nodes)[:4]
    for port in victims[:3]:
        nodes[port].send_signal(signal.SIGKILL)
        nodes[port].wait()
    for key, data in objects.items():
        assert client.get("meters", key) == data
    client.put("meters", "written-with-3-down", b"x" * 200_000, policy="ec:6+3")
    nodes[victims[3]].send_signal(signal.SIGKILL)
    nodes[victims[3]].wait()
    with pytest.raises(KvsError) as caught:
        client.put("meters", "obj-ec:6+3", b"must not appear", policy="ec:6+3")
    assert caught.value.status == 503
    for port in victims:  # restart them: nothing half-written became visible
        nodes[port] = start_node(cluster["data_dir"] / f"node-{port}", port, cluster["token_file"])
    assert client.get("meters", "obj-ec:6+3") == objects["obj-ec:6+3"]
    assert client.head("meters", "obj-ec:6+3")["x-object-version"] == "1"
    stat = client.stat("meters", "written-with-3-down")
    assert [f["state"] for f in stat["fragments"]].count("ok") == 6  # 3 were down
    assert client.scrub()["repaired"] >= 3
    stat = client.stat("meters", "written-with-3-down")
    assert all(f["state"] == "ok" for f in stat["fragments"])  # full health again


def test_a_gateway_killed_with_minus_nine_keeps_what_it_acknowledged(cluster):
    client, supervisor = cluster["client"], cluster["supervisor"]
    for i in range(20):
        client.put("meters", f"acked/{i}", f"value {i}".encode())
    gateway_pids = [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and b"SECURECLOUD_CONFIG_ID=kvs/gateway" in _environ(p)
    ]
    for pid in gateway_pids:
        os.kill(int(pid), signal.SIGKILL)
    supervisor.stop("kvs", grace=5)
    gateway = supervisor.start(
        "kvs",
        cluster["args"],
        cluster["gateway"].url,
        ca=cluster["data_dir"] / "kvs" / "ca.crt",
        timeout=60,
    )
    assert gateway.url == cluster["gateway"].url
    for i in range(20):
        assert client.get("meters", f"acked/{i}") == f"value {i}".encode()


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def test_gateway_refuses_to_start_without_its_configuration_from_cas(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from securecloud.services.kvs.server import main; "
            f"raise SystemExit(main(['--data-dir', '{tmp_path}']))",
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert result.returncode == 3 and "no master key from CAS" in result.stderr


def test_api_refuses_bad_credentials_and_missing_scopes(cluster):
    url = cluster["gateway"].url
    ca = str(cluster["data_dir"] / "kvs" / "ca.crt")
    import ssl

    context = ssl.create_default_context(cafile=ca)
    anonymous = httpx.get(f"{url}/v1", verify=context)
    assert anonymous.status_code == 401 and anonymous.json()["reason"] == "bad-credentials"
    wrong = httpx.get(f"{url}/v1", verify=context, headers={"Authorization": "Bearer admin:no"})
    assert wrong.status_code == 401


def test_a_batch_in_json_or_binary_writes_the_same_and_a_damaged_one_nothing(cluster):
    """The platform's clients send batches in binary (batchwire), others may send JSON
    with base64 data: the gateway takes both; a body that does not parse is refused
    with the operation and field named, and none of it is written."""
    client = cluster["client"]
    data = os.urandom(70_000)
    client.batch("meters", [{"op": "put", "key": "form/binary", "data": data}])  # binary
    json_form = {"operations": [
        {"op": "put", "key": "form/json", "data": base64.b64encode(data).decode()},
    ]}  # fmt: skip
    assert client._call("POST", "/v1-batch/meters", json=json_form).status_code == 200
    assert client.get("meters", "form/binary") == client.get("meters", "form/json") == data
    damaged = batchwire.encode(
        [{"op": "put", "key": "form/never", "data": b"x"}, {"op": "delete", "key": "form/json"}]
    )[:-3]
    with pytest.raises(KvsError) as refused:
        client._call(
            "POST",
            "/v1-batch/meters",
            content=damaged,
            headers={"Content-Type": batchwire.MEDIA_TYPE},
        )
    assert refused.value.status == 400 and refused.value.reason == "bad-batch"
    assert "operations[1]" in str(refused.value)
    assert [o["key"] for o in client.list("meters", "form/")] == ["form/binary", "form/json"]


def test_gateway_killed_during_an_atomic_batch_shows_all_or_nothing(cluster):
    import threading

    client, supervisor = cluster["client"], cluster["supervisor"]
    keys = [f"batch/{i}" for i in range(40)]
    operations = [
        {"op": "put", "key": k, "data": os.urandom(150_000), "policy": "ec:6+3"} for k in keys
    ]
    outcome = {}

    def send():
        try:
            outcome["result"] = client.batch("meters", operations)
        except Exception as exc:  # the gateway dies under it
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.4)
    for pid in [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and b"SECURECLOUD_CONFIG_ID=kvs/gateway" in _environ(p)
    ]:
        os.kill(int(pid), signal.SIGKILL)
    sender.join(timeout=60)
    supervisor.stop("kvs", grace=5)
    supervisor.start(
        "kvs",
        cluster["args"],
        cluster["gateway"].url,
        ca=cluster["data_dir"] / "kvs" / "ca.crt",
        timeout=60,
    )
    visible = {o["key"] for o in client.list("meters", prefix="batch/")}
    assert visible in (set(), set(keys)), f"{len(visible)} of {len(keys)} visible"
    if "result" in outcome:
        assert visible == set(keys)


def test_two_cascadb_stores_on_one_bucket_take_turns_through_conditional_puts(cluster):
    """CascaDB's log record goes to the gateway as one binary PUT with If-Match: 0; the
    second store to write a sequence number is refused (412), reads the other's record
    and either commits after it or, when it wrote the same row, is told to retry."""
    from securecloud.services.sql.objects import KvsObjects
    from securecloud.services.sql.storage import Store, WriteConflict
    from securecloud.services.sql.writes import Writes

    client = cluster["client"]
    client.create_bucket("cascadb-shared")

    def writes(**entries: str) -> Writes:
        out = Writes()
        for key, value in entries.items():
            out[key.encode()] = value.encode()
        return out

    first = Store(KvsObjects(client, "cascadb-shared"))
    second = Store(KvsObjects(client, "cascadb-shared"))
    assert first.commit(writes(a="1"), first.seq) == 1
    assert second.commit(writes(b="2"), second.seq) == 2  # lost wal/1, caught up, wrote 2
    assert second.get(b"a") == b"1"
    with pytest.raises(WriteConflict):
        first.commit(writes(b="3"), 1)  # began before the other store's write of b
    assert first.get(b"b") == b"2"
    assert client.get("cascadb-shared", "wal/0000000000000002")  # the record, as sent
