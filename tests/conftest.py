"""Shared fixtures: in-process CAS pieces for unit tests, real processes for the rest."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from securecloud.crypto import fingerprint, generate_signing_key
from securecloud.infra.cas.service import Cas
from securecloud.infra.supervisor import Supervisor, free_port
from securecloud.runtime.sealing import Sealer


@pytest.fixture
def platform_key():
    return generate_signing_key("ed25519")


@pytest.fixture
def sealer():
    return Sealer(os.urandom(32), "cd" * 32, "ef" * 32)


@pytest.fixture
def make_cas(tmp_path, platform_key, sealer):
    made = []

    def factory(directory: Path | None = None, **kw) -> Cas:
        kw.setdefault(
            "platform_keys", {fingerprint(platform_key.public_key()): platform_key.public_key()}
        )
        cas = Cas(
            directory or tmp_path / "cas", kw.pop("sealer", sealer), kw.pop("platform_keys"), **kw
        )
        made.append(cas)
        return cas

    yield factory
    for cas in made:
        cas.close()


@pytest.fixture(scope="module")
def platform_processes(tmp_path_factory):
    """A real LAS and CAS, as `securecloud up` starts them, on free ports."""
    data_dir = tmp_path_factory.mktemp("platform")
    supervisor = Supervisor(data_dir)
    las, cas = supervisor.up(free_port(), free_port())
    yield data_dir, las, cas
    supervisor.stop_all()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server of our own on a free port (`make test` installs it if missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def nats_url(tmp_path_factory):
    """A real nats-server with JetStream of our own on a free port, fresh for each test
    (`make test` installs it)."""
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if binary is None:
        pytest.fail("nats-server is not installed: run `make test`, which installs it")
    port = free_port()
    directory = tmp_path_factory.mktemp("nats")
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)
