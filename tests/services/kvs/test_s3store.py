"""The S3 fragment backend against a real S3-compatible server running here (moto in
server mode, one process): the gateway's fragments become objects there."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from securecloud.infra.supervisor import free_port
from securecloud.services.kvs.codec import KvsKeys
from securecloud.services.kvs.coder import ZfecCoder
from securecloud.services.kvs.gateway import Gateway
from securecloud.services.kvs.index import Index
from securecloud.services.kvs.s3store import S3FragmentStore


@pytest.fixture(scope="module")
def s3_server():
    port = free_port()
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    process = subprocess.Popen(
        [binary, "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait()


def test_gateway_on_s3_stores_round_trips_and_repairs(s3_server, tmp_path):
    endpoint = s3_server.removeprefix("http://")
    stores = [
        S3FragmentStore(f"s3+http://{endpoint}/node-{i}/fragments", "test", "test")
        for i in range(9)
    ]
    for store in stores:
        store.ensure_bucket()
    keys = KvsKeys.from_master(os.urandom(32))
    gateway = Gateway(keys, stores, Index(tmp_path / "index.log", keys.index_key), ZfecCoder())
    gateway.create_bucket("meters")
    secret = b"meter 77 read 3.5 kWh " * 20_000
    gateway.put("meters", "consumer-77/day", secret, policy="ec:6+3")
    gateway.put("meters", "consumer-77/small", secret[:500])
    assert gateway.get("meters", "consumer-77/day")[1] == secret
    for store in stores:  # the object store holds opaque ids and ciphertext only
        for fid in store.list():
            blob = store.get(fid)
            assert b"consumer-77" not in blob and b"kWh" not in blob and "consumer" not in fid
    object_id = keys.object_id("meters", "consumer-77/day")
    _, health = gateway.stat("meters", "consumer-77/day")
    victim = next(s for s in stores if s.name == health[0].node)
    victim.delete(keys.fragment_id(object_id, 1, 0))
    assert gateway.scrub()["repaired"] == 1
    assert all(h.state == "ok" for h in gateway.stat("meters", "consumer-77/day")[1])
    gateway.close()
