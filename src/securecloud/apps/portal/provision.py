"""Consumers of the portal: their client certificates, database keys and databases.

For each consumer this makes what the consumer's own device would hold (a P-256
client key and certificate naming its UID, a raw 256-bit database key) under
<data dir>/portal/consumers/<uid>/, and an empty SQLCipher database encrypted
with that key, stored in the KVS at portal/db/<uid>.sqlite. The platform keeps
the encrypted file only; in a deployment the keys stay on the consumers'
devices and this tool runs there. The consumer CA (key 0600 in
<data dir>/portal/) signs client certificates; instances trust its certificate.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securecloud.apps.portal.client import metrics_for
from securecloud.apps.portal.database import ConsumerDatabase
from securecloud.apps.portal.deploy import portal_dir
from securecloud.apps.portal.instance import BUCKET, database_key
from securecloud.apps.portal.names import DOMAIN, consumer_uids, leaf_certificate, pem_pair
from securecloud.infra.cas.ca import cert_pem, make_ca
from securecloud.runtime.durable import atomic_write


def consumer_dir(data_dir: Path, uid: str) -> Path:
    return portal_dir(data_dir) / "consumers" / uid


def consumers_ca(data_dir: Path):
    """(key, certificate) of the consumer CA, made on first use."""
    directory = portal_dir(data_dir)
    key_path, cert_path = directory / "consumers-ca.key", directory / "consumers-ca.crt"
    if not key_path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        key, cert = make_ca("securecloud portal consumers")
        key_pem, _ = pem_pair(key, cert)
        atomic_write(key_path, key_pem, mode=0o600)
        atomic_write(cert_path, cert_pem(cert), mode=0o644)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def provision(
    data_dir: Path,
    kvs,
    count: int,
    domain: str = DOMAIN,
    progress: Callable[[int], None] = lambda _: None,
    seed_hours: float = 0.0,
) -> list[str]:
    """Consumers c000001..c<count>; existing ones are left as they are. `seed_hours`:
    metrics (every 15 s) already in each new database, so queries have data to read."""
    ca_key, ca_cert = consumers_ca(data_dir)
    if BUCKET not in kvs.buckets():
        kvs.create_bucket(BUCKET)
    made = []
    with tempfile.TemporaryDirectory(prefix="portal-provision-") as tmp:
        for uid in consumer_uids(count):
            folder = consumer_dir(data_dir, uid)
            if (folder / "db.key").exists():
                progress(1)
                continue
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            key, cert = leaf_certificate(ca_key, ca_cert, uid, domain, server=False, hours=24 * 365)
            key_pem, crt_pem = pem_pair(key, cert)
            db_key = os.urandom(32)
            path = Path(tmp) / f"{uid}.sqlite"
            db = ConsumerDatabase.create(path, db_key)
            if seed_hours > 0:
                db.write_metrics(metrics_for(seed_hours, start=1_767_225_600))
            db.close()
            kvs.put(BUCKET, database_key(uid), path.read_bytes())
            path.unlink()
            atomic_write(folder / "client.key", key_pem, mode=0o600)
            atomic_write(folder / "client.crt", crt_pem, mode=0o644)
            atomic_write(folder / "db.key", db_key.hex().encode(), mode=0o600)
            made.append(uid)
            progress(1)
    return made
