"""CAS audit log: append-only, numbered, signed, hash-chained, durable before acknowledged.

One line per entry, each the canonical JSON of::

    {"seq": n, "time": "<UTC ISO-8601>", "prev": <hex SHA-256 of line n-1, "" for n=1>,
     "event": "<name>", "fields": {...}, "sig": <hex Ed25519 by the CAS audit key over
     b"securecloud/audit/v1\\x00" || canonical JSON of the entry without "sig">}

An entry is written and fsynced before the operation it records is answered.
fsync is the scarcest resource of the machine (~260/s), so appends group-commit:
the first waiter writes and fsyncs everything queued so far while later ones
wait for it; each append returns only once its own entry is durable.

`verify_log` checks numbering, chain and signatures; given a checkpoint (a head
an auditor saw before) it also detects truncation below it and a rolled-back or
forked history.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Histogram

from securecloud.crypto import CryptoError, canonical, sign, verify
from securecloud.runtime.durable import GroupCommitFile

_CONTEXT = b"securecloud/audit/v1\x00"
ENTRIES = Counter("securecloud_cas_audit_entries_total", "Audit entries made durable")
BATCH = Histogram(
    "securecloud_cas_audit_batch_entries",
    "Entries covered by one fsync of the audit log",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


class AuditError(Exception):
    """The audit log is inconsistent; the message says where and how."""


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str

    def to_json(self) -> dict:
        return {"seq": self.seq, "hash": self.hash}


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(path: Path) -> bytes | None:
    """The last complete line; an incomplete tail (crash before fsync, never
    acknowledged) is cut off."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        window = min(size, 1 << 20)
        handle.seek(size - window)
        tail = handle.read(window)
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            handle.truncate(size - window + cut + 1 if cut >= 0 else size - window)
            tail = tail[: cut + 1] if cut >= 0 else b""
            if not tail:
                return None
        lines = tail[:-1].rsplit(b"\n", 1)
        return lines[-1]


class AuditLog:
    def __init__(self, path: Path, signing_key):
        self.path = Path(path)
        self.key = signing_key
        self.path.touch(mode=0o600, exist_ok=True)
        last = _last_line(self.path)
        if last is None:
            self.head = Head(0, "")
        else:
            self.head = Head(canonical.decode(last)["seq"], _line_hash(last))
        self._lock = threading.Lock()  # entries are numbered and queued in one order
        self._file = GroupCommitFile(self.path, on_batch=self._count)

    @staticmethod
    def _count(entries: int) -> None:
        ENTRIES.inc(entries)
        BATCH.observe(entries)

    def _entry(self, event: str, fields: dict) -> bytes:
        entry = {
            "seq": self.head.seq + 1,
            "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "prev": self.head.hash,
            "event": event,
            "fields": fields,
        }
        entry["sig"] = sign(self.key, _CONTEXT + canonical.encode(entry)).hex()
        line = canonical.encode(entry)
        self.head = Head(entry["seq"], _line_hash(line))
        return line

    def append(self, event: str, **fields) -> Head:
        """Record an event; returns once it is on disk (fsynced)."""
        with self._lock:
            line = self._entry(event, fields)
            mine = self.head
            try:
                ticket, _ = self._file.write(line + b"\n")
            except OSError as exc:
                raise AuditError(f"audit log unwritable: {exc}") from exc
        try:
            self._file.wait(ticket)
        except OSError as exc:
            if "unwritable" in str(exc):
                raise AuditError(f"audit log unwritable: {exc}") from exc
            raise
        return mine

    def close(self) -> None:
        self._file.close()


def iter_entries(path: Path) -> Iterator[tuple[dict, bytes]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                raise AuditError(f"entry {number}: incomplete last line")
            line = raw[:-1]
            try:
                yield canonical.decode(line), line
            except CryptoError as exc:
                raise AuditError(f"entry {number}: not canonical JSON ({exc})") from exc


def verify_log(path: Path, public_key, checkpoint: Head | None = None) -> Head:
    """Verify the whole log; return its head. Raises AuditError on the first problem."""
    head = Head(0, "")
    for entry, line in iter_entries(path):
        seq = head.seq + 1
        if entry.get("seq") != seq:
            raise AuditError(
                f"entry {seq}: numbered {entry.get('seq')} (entries removed or reordered)"
            )
        if entry.get("prev") != head.hash:
            raise AuditError(f"entry {seq}: does not chain to entry {seq - 1} (altered history)")
        signature = entry.pop("sig", "")
        try:
            verify(public_key, _CONTEXT + canonical.encode(entry), bytes.fromhex(signature))
        except (CryptoError, ValueError) as exc:
            raise AuditError(f"entry {seq}: signature does not verify (altered entry)") from exc
        if checkpoint is not None and seq == checkpoint.seq and _line_hash(line) != checkpoint.hash:
            raise AuditError(
                f"entry {seq}: differs from the checkpoint (history rolled back or forked)"
            )
        head = Head(seq, _line_hash(line))
    if checkpoint is not None and head.seq < checkpoint.seq:
        raise AuditError(
            f"log ends at entry {head.seq} but entry {checkpoint.seq} was seen before "
            "(truncated or rolled back)"
        )
    return head
