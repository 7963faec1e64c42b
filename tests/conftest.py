"""Shared fixtures: in-process CAS pieces for unit tests, real processes for the rest."""

import os
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
