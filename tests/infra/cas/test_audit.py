"""The audit log: tampering, truncation and rollback are each detected."""

import json
import threading

import pytest

from securecloud.crypto import canonical, generate_signing_key
from securecloud.infra.cas.audit import BATCH, AuditError, AuditLog, Head, verify_log


@pytest.fixture
def key():
    return generate_signing_key("ed25519")


def write(path, key, count):
    log = AuditLog(path, key)
    heads = [log.append("event", n=i) for i in range(count)]
    log.close()
    return heads


def lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def test_honest_log_verifies_and_reopening_continues_the_chain(tmp_path, key):
    path = tmp_path / "audit.log"
    write(path, key, 5)
    heads = write(path, key, 3)
    assert verify_log(path, key.public_key()) == heads[-1]
    assert heads[-1].seq == 8


def test_altered_entry_is_detected(tmp_path, key):
    path = tmp_path / "audit.log"
    write(path, key, 4)
    entries = lines(path)
    doc = canonical.decode(entries[1])
    doc["fields"]["n"] = 99
    entries[1] = canonical.encode(doc)
    path.write_bytes(b"\n".join(entries) + b"\n")
    with pytest.raises(AuditError, match="entry 2: signature"):
        verify_log(path, key.public_key())


def test_removed_entry_is_detected(tmp_path, key):
    path = tmp_path / "audit.log"
    write(path, key, 4)
    entries = lines(path)
    path.write_bytes(b"\n".join(entries[:1] + entries[2:]) + b"\n")
    with pytest.raises(AuditError, match="entry 2: numbered 3"):
        verify_log(path, key.public_key())


def test_entry_signed_by_another_key_is_detected(tmp_path, key):
    path = tmp_path / "audit.log"
    write(path, key, 2)
    with pytest.raises(AuditError, match="entry 1: signature"):
        verify_log(path, generate_signing_key("ed25519").public_key())


def test_truncation_below_a_checkpoint_is_detected(tmp_path, key):
    path = tmp_path / "audit.log"
    heads = write(path, key, 5)
    path.write_bytes(b"\n".join(lines(path)[:3]) + b"\n")
    assert verify_log(path, key.public_key()).seq == 3  # a prefix alone is self-consistent
    with pytest.raises(AuditError, match="truncated or rolled back"):
        verify_log(path, key.public_key(), heads[-1])


def test_rolled_back_and_rewritten_history_is_detected(tmp_path, key):
    path = tmp_path / "audit.log"
    checkpoint = write(path, key, 4)[-1]
    path.write_bytes(b"\n".join(lines(path)[:2]) + b"\n")
    write(path, key, 3)  # a forked history, validly signed, longer than the checkpoint
    with pytest.raises(AuditError, match="rolled back or forked"):
        verify_log(path, key.public_key(), checkpoint)


def test_a_failed_fsync_acknowledges_nothing_after_it(tmp_path, key, monkeypatch):
    from securecloud.infra.cas import audit

    log = AuditLog(tmp_path / "audit.log", key)
    log.append("first")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(audit.os, "fsync", broken)
    with pytest.raises(OSError):
        log.append("second")
    with pytest.raises(AuditError, match="unwritable"):
        log.append("third")


def test_torn_last_line_is_cut_on_reopen(tmp_path, key):
    path = tmp_path / "audit.log"
    write(path, key, 3)
    with open(path, "ab") as handle:
        handle.write(b'{"seq":4,"tim')  # crash mid-write: never fsynced, never acknowledged
    heads = write(path, key, 1)
    assert heads[0].seq == 4
    assert verify_log(path, key.public_key()).seq == 4


def test_concurrent_appends_group_commit_and_stay_consistent(tmp_path, key, monkeypatch):
    import os
    import time

    from securecloud.infra.cas import audit

    fsyncs, real_fsync = [], os.fsync

    def slow_fsync(fd):  # a disk where fsync costs 5 ms, as on this machine's (~260/s)
        fsyncs.append(fd)
        time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(audit.os, "fsync", slow_fsync)
    path = tmp_path / "audit.log"
    log = AuditLog(path, key)
    before = BATCH._sum.get()
    results: list[Head] = []

    def worker(base):
        for i in range(25):
            results.append(log.append("event", worker=base, i=i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert sorted(h.seq for h in results) == list(range(1, 201))
    assert verify_log(path, key.public_key()).seq == 200
    assert BATCH._sum.get() - before == 200
    assert all(json.loads(line)["seq"] for line in lines(path))
    assert len(fsyncs) < 100, f"{len(fsyncs)} fsyncs for 200 entries: no group commit"
