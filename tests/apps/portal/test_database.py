"""A consumer's SQLCipher database: encrypted at rest, all-or-nothing writes."""

import os

import pytest

from securecloud.apps.portal.database import ConsumerDatabase, WrongKey


def test_the_file_is_ciphertext_and_opens_only_with_its_key(tmp_path):
    key = os.urandom(32)
    db = ConsumerDatabase.create(tmp_path / "c1.sqlite", key)
    db.write_metrics([(1_000, 900.0, 15.0, 127.0), (1_015, 1_100.0, 14.0, 126.0)])
    db.write_alarms([("power", 5_000.0)])
    db.close()
    raw = (tmp_path / "c1.sqlite").read_bytes()
    assert b"SQLite format 3" not in raw and b"metrics" not in raw and b"power" not in raw
    with pytest.raises(WrongKey):
        ConsumerDatabase(tmp_path / "c1.sqlite", os.urandom(32))
    db = ConsumerDatabase(tmp_path / "c1.sqlite", key)
    assert db.averages() == {"count": 2, "power": 1_000.0, "impedance": 14.5, "tension": 126.5}
    assert db.averages(start=1_010)["count"] == 1
    assert db.averages(end=1_000)["count"] == 0
    db.close()


def test_a_write_with_one_bad_row_writes_nothing(tmp_path):
    db = ConsumerDatabase.create(tmp_path / "c1.sqlite", os.urandom(32))
    with pytest.raises(Exception, match="NOT NULL"):
        db.write_alarms([("power", 1.0), ("tension", None)])
    assert db.db.execute("SELECT count(*) FROM alarms").fetchone() == (0,)
    db.close()


def test_keys_must_be_raw_256_bit(tmp_path):
    with pytest.raises(ValueError, match="key"):
        ConsumerDatabase.create(tmp_path / "c1.sqlite", b"passphrase")
