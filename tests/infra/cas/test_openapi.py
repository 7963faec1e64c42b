"""Schemathesis against the CAS OpenAPI document: generated requests, valid (positive) and
invalid (negative), get a 2xx or a 4xx with a message, never a 500."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from securecloud.crypto import fingerprint, generate_signing_key
from securecloud.infra.cas.api import create_app
from securecloud.infra.cas.service import Cas
from securecloud.runtime.sealing import Sealer


def _cas(directory) -> Cas:
    key = generate_signing_key("ed25519")
    sealer = Sealer(bytes(32), "aa" * 32, "bb" * 32)
    return Cas(directory, sealer, {fingerprint(key.public_key()): key.public_key()})


def _cases(tmp_root="/tmp") -> list[tuple[str, GenerationMode]]:
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        cas = _cas(tmp)
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(cas))
        cases = []
        for result in schema.get_all_operations():
            operation = result.ok()
            cases.append((operation.label, GenerationMode.POSITIVE))
            if len(operation.body) or len(operation.path_parameters):  # something to break
                cases.append((operation.label, GenerationMode.NEGATIVE))
        cas.close()
    return cases


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    cas = _cas(tmp_path_factory.mktemp("cas"))
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(cas))
    cas.close()


@pytest.mark.parametrize(("label", "mode"), _cases())
def test_generated_requests_never_cause_a_server_error(schema, label, mode):
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call()
        assert response.status_code < 500, (label, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert response.json().get("detail"), (label, response.text[:300])

    check()
