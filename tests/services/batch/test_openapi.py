"""Schemathesis against the batch manager's OpenAPI document, with and without the
token: generated requests get a 2xx or a 4xx with a message, never a 500."""

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from securecloud.services.batch.api import create_app
from securecloud.services.batch.manager import BatchConfig, Manager


def _manager(directory: Path) -> Manager:
    # No CAS behind it: a generated submission that is valid fails as a run, not as a request.
    return Manager(BatchConfig(data_dir=directory, cas_url="https://127.0.0.1:9"))


def _cases() -> list[tuple[str, GenerationMode]]:
    with tempfile.TemporaryDirectory() as tmp:
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_manager(Path(tmp))))
        cases = []
        for result in schema.get_all_operations():
            operation = result.ok()
            cases.append((operation.label, GenerationMode.POSITIVE))
            if len(operation.body) or len(operation.path_parameters):
                cases.append((operation.label, GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def app_and_token(tmp_path_factory):
    manager = _manager(tmp_path_factory.mktemp("batch"))
    yield create_app(manager), manager.token
    manager.shutdown()


@pytest.mark.parametrize(("label", "mode"), _cases())
def test_generated_requests_never_cause_a_server_error(app_and_token, label, mode):
    app, token = app_and_token
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def check(case):
        for headers in ({"Authorization": f"Bearer {token}"}, {}):
            response = case.call(headers=headers)
            assert response.status_code < 500, (label, response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert response.json().get("detail"), (label, response.text[:300])

    check()
