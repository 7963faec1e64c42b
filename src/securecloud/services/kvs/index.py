"""The gateway's ordered index of objects, encrypted at rest.

Listing by key and range scans (CascaDB's) need an ordered index of names,
which the storage nodes must never see. It lives in memory (per bucket, a
dict and a sorted key list) and on disk as an append-only log of sealed
records (crypto envelope under a key derived from the master key, associated
data = record number), made durable by group commit: a put is acknowledged
only after its record is fsynced. At start the log is replayed; a torn last
record (never acknowledged) is cut off. The index can also be rebuilt from the
sealed metadata that every fragment carries (later work, docs/kvs.md).

Record layout: length (4, big-endian) | envelope of canonical JSON
{"op": "bucket" | "put" | "delete" | "batch", ...}. An atomic batch is one
record holding all its entries: replayed whole, or (torn) not at all.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from securecloud.crypto import CryptoError, canonical, open_sealed, seal
from securecloud.runtime.durable import GroupCommitFile
from securecloud.services.kvs.codec import ObjectMeta
from securecloud.services.kvs.errors import KvsError

_LEN = struct.Struct(">I")


class Index:
    def __init__(self, path: Path, key: bytes):
        self.path = Path(path)
        self.key = key
        self._lock = threading.Lock()
        self.buckets: dict[str, dict[str, ObjectMeta]] = {}
        self._sorted: dict[str, list[str]] = {}
        # version of the tombstone of each deleted key: a re-created key continues above
        # it, so an old fragment kept by a node can never pass for the new object's
        self.tombstones: dict[tuple[str, str], int] = {}
        self._records = 0
        if self.path.exists():
            self._replay()
        self._file = GroupCommitFile(self.path)

    def _replay(self) -> None:
        data = self.path.read_bytes()
        position = 0
        while position + _LEN.size <= len(data):
            (length,) = _LEN.unpack_from(data, position)
            blob = data[position + _LEN.size : position + _LEN.size + length]
            if len(blob) < length:
                break
            try:
                record = canonical.decode(open_sealed(self.key, blob, str(self._records).encode()))
            except CryptoError as exc:
                raise KvsError(
                    f"index {self.path}: record {self._records} does not open "
                    "(altered, or another gateway key)",
                    status=500,
                ) from exc
            self._apply(record)
            self._records += 1
            position += _LEN.size + length
        if position < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(position)

    def _apply(self, record: dict) -> None:
        op = record["op"]
        if op == "batch":  # one record, so a batch is applied whole or not at all
            for entry in record["entries"]:
                self._apply(entry)
            return
        if op == "bucket":
            self.buckets.setdefault(record["bucket"], {})
            self._sorted.setdefault(record["bucket"], [])
            return
        meta = ObjectMeta.from_json(record["meta"])
        objects, keys = self.buckets[meta.bucket], self._sorted[meta.bucket]
        if op == "put":
            if meta.key not in objects:
                bisect.insort(keys, meta.key)
            objects[meta.key] = meta
            return
        self.tombstones[(meta.bucket, meta.key)] = meta.version
        if meta.key in objects:
            del objects[meta.key]
            keys.pop(bisect.bisect_left(keys, meta.key))

    def _commit(self, record: dict) -> None:
        with self._lock:
            blob = seal(
                self.key, canonical.encode(record), str(self._records).encode(), key_id=b"kvs-index"
            )
            self._records += 1
            ticket, _ = self._file.write(_LEN.pack(len(blob)) + blob)
        self._file.wait(ticket)
        with self._lock:
            self._apply(record)

    def commit_batch(self, puts: list[ObjectMeta], deletes: list[ObjectMeta]) -> None:
        entries = [{"op": "put", "meta": m.to_json()} for m in puts]
        entries += [{"op": "delete", "meta": m.to_json()} for m in deletes]
        self._commit({"op": "batch", "entries": entries})

    def replace_all(
        self, buckets: set[str], live: list[ObjectMeta], tombstones: list[ObjectMeta]
    ) -> None:
        """Rewrite the index from scratch (rebuild-index): a new log, swapped in atomically."""
        fresh = self.path.with_name(self.path.name + ".rebuild")
        fresh.unlink(missing_ok=True)
        with self._lock:
            rebuilt = Index(fresh, self.key)
            for bucket in sorted(buckets):
                rebuilt.create_bucket(bucket)
            rebuilt.commit_batch(live, tombstones)
            rebuilt.close()
            self._file.close()
            os.replace(fresh, self.path)
            self.buckets, self._sorted = rebuilt.buckets, rebuilt._sorted
            self.tombstones, self._records = rebuilt.tombstones, rebuilt._records
            self._file = GroupCommitFile(self.path)

    def create_bucket(self, bucket: str) -> bool:
        if bucket in self.buckets:
            return False
        self._commit({"op": "bucket", "bucket": bucket})
        return True

    def put(self, meta: ObjectMeta) -> None:
        self._commit({"op": "put", "meta": meta.to_json()})

    def delete(self, meta: ObjectMeta) -> None:
        self._commit({"op": "delete", "meta": meta.to_json()})

    def get(self, bucket: str, key: str) -> ObjectMeta | None:
        return self.buckets.get(bucket, {}).get(key)

    def scan(
        self,
        bucket: str,
        prefix: str = "",
        start_after: str = "",
        end: str | None = None,
        limit: int = 1000,
    ) -> Iterator[ObjectMeta]:
        """Objects in key order: key > start_after, starting with prefix, key < end."""
        with self._lock:
            keys = self._sorted.get(bucket, [])
            lower = max(start_after, prefix)
            position = (
                bisect.bisect_right(keys, lower)
                if lower == start_after and start_after
                else bisect.bisect_left(keys, lower)
            )
            selected = []
            objects = self.buckets[bucket]
            while position < len(keys) and len(selected) < limit:
                key = keys[position]
                if not key.startswith(prefix) or (end is not None and key >= end):
                    break
                if key > start_after:
                    selected.append(objects[key])
                position += 1
        yield from selected

    def close(self) -> None:
        self._file.close()
