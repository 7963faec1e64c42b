"""API keys and scopes per bucket."""

import json

import pytest

from securecloud.services.kvs.apikeys import Forbidden, KeyStore, Unauthorized, require
from securecloud.services.kvs.errors import KvsError

STORE = KeyStore.from_json(
    json.dumps(
        {
            "keys": [
                {
                    "id": "ingest",
                    "secret": "s1",
                    "tenant": "utility",
                    "scopes": {"readings": ["write"]},
                },
                {"id": "auditor", "secret": "s2", "scopes": {"*": ["read"]}},
            ]
        }
    )
)


def test_scopes_are_per_bucket_and_wildcard():
    ingest = STORE.bearer("Bearer ingest:s1")
    require(ingest, "readings", "write")
    with pytest.raises(Forbidden, match="no read scope on bucket 'readings'"):
        require(ingest, "readings", "read")
    with pytest.raises(Forbidden):
        require(ingest, "bills", "write")
    auditor = STORE.bearer("Bearer auditor:s2")
    require(auditor, "bills", "read")
    with pytest.raises(Forbidden, match="admin"):
        require(auditor, "bills", "admin")


@pytest.mark.parametrize(
    "header", ["", "Basic x", "Bearer ingest", "Bearer ingest:wrong", "Bearer nobody:s1"]
)
def test_bad_credentials_are_refused(header):
    with pytest.raises(Unauthorized):
        STORE.bearer(header)


def test_a_malformed_key_store_is_refused():
    with pytest.raises(KvsError, match="unknown"):
        KeyStore.from_json('{"keys": [{"id": "a", "secret": "b", "scopes": {"*": ["root"]}}]}')
