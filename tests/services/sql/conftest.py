"""CascaDB fixtures: a database on in-memory objects, and a real TLS PostgreSQL server."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from securecloud.infra.cas.ca import cert_pem, issue, make_ca
from securecloud.infra.supervisor import free_port
from securecloud.infra.web import TlsFiles, server_ssl_context
from securecloud.services.sql.engine import Database
from securecloud.services.sql.pgwire import Authenticator, PgServer
from securecloud.services.sql.storage import Store
from tests.services.sql.memory import MemoryObjects

TOKEN = "token-for-tests"


@pytest.fixture
def objects():
    return MemoryObjects()


@pytest.fixture
def database(objects):
    return Database(Store(objects))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sql-tls")
    ca_key, ca_cert = make_ca("cascadb test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(
        ca_key, ca_cert, key.public_key(), common_name="localhost", san=("localhost", "127.0.0.1")
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / "ca.crt").write_bytes(cert_pem(ca_cert))
    return directory, TlsFiles(cert_pem(cert), key_pem)


@pytest.fixture(scope="module")
def pg_server(tls_files):
    """A PostgreSQL-protocol CascaDB on a free port, its event loop in a thread."""
    directory, tls = tls_files
    database = Database(Store(MemoryObjects()))
    port = free_port()
    server = PgServer(database, server_ssl_context(tls), Authenticator(TOKEN)).start(
        "127.0.0.1", port
    )
    conninfo = (
        f"host=127.0.0.1 port={port} user=meter dbname=cascadb password={TOKEN} "
        f"sslmode=verify-full sslrootcert={directory / 'ca.crt'}"
    )
    yield {"conninfo": conninfo, "database": database, "port": port, "ca": directory / "ca.crt"}
    server.close()
