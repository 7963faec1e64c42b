"""A FragmentStore on a local directory: fragments packed into append-only files.

Small fragments must not cost a file and an fsync each (the machine manages
about 8,400 file creates and 260 fsyncs a second), so every fragment is a
record appended to the current pack file, and concurrent puts share fsyncs
(`GroupCommitFile`). The index (fragment id → pack, offset, length) lives in
memory and is rebuilt by scanning the packs at start; a torn last record
(crash before its fsync, never acknowledged) is cut off.

Record layout::

    "PK" | op (1: 1 put, 2 delete) | L (1) | fragment id (L ASCII bytes)
         | data length (4, big-endian) | CRC-32 of id and data (4) | data

A delete appends a tombstone. Space of deleted or overwritten fragments is
reclaimed by compaction, which is later work (docs/kvs.md).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

from securecloud.runtime.durable import GroupCommitFile

_HEAD = struct.Struct(">2sBB")
_TAIL = struct.Struct(">II")
_PUT, _DELETE = 1, 2
PACK_LIMIT = 1 << 30


class PackStore:
    def __init__(self, directory: Path, name: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name or self.directory.name
        self._lock = threading.Lock()
        self._index: dict[str, tuple[int, int, int]] = {}
        packs = sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("pack-*.dat"))
        for number in packs:
            self._scan(number)
        self._number = packs[-1] if packs else 1
        self._file = GroupCommitFile(self._path(self._number))
        self._readers: dict[int, int] = {}

    def _path(self, number: int) -> Path:
        return self.directory / f"pack-{number:06d}.dat"

    def _scan(self, number: int) -> None:
        path = self._path(number)
        data = path.read_bytes()
        position = 0
        while position < len(data):
            try:
                magic, op, id_len = _HEAD.unpack_from(data, position)
                start = position + _HEAD.size
                fid = data[start : start + id_len].decode()
                length, crc = _TAIL.unpack_from(data, start + id_len)
                body = start + id_len + _TAIL.size
                payload = data[body : body + length]
                if magic != b"PK" or len(payload) != length:
                    raise ValueError("torn")
                if zlib.crc32(fid.encode() + payload) != crc:
                    raise ValueError("crc")
            except (struct.error, ValueError, UnicodeDecodeError):
                with open(path, "r+b") as handle:  # never acknowledged: drop it
                    handle.truncate(position)
                return
            if op == _PUT:
                self._index[fid] = (number, body, length)
            else:
                self._index.pop(fid, None)
            position = body + length

    def _record(self, op: int, fid: str, data: bytes) -> tuple[bytes, int]:
        raw = fid.encode()
        head = _HEAD.pack(b"PK", op, len(raw)) + raw + _TAIL.pack(len(data), zlib.crc32(raw + data))
        return head + data, len(head)

    def put(self, fragment_id: str, data: bytes) -> None:
        self.put_many([(fragment_id, data)])

    def put_many(self, fragments: list[tuple[str, bytes]]) -> None:
        """Append every (fragment id, data) and return once all are durable: one fsync
        for the lot, or fewer than one each when other puts are waiting too."""
        placed = []
        with self._lock:
            for fragment_id, data in fragments:
                record, head = self._record(_PUT, fragment_id, data)
                if self._file.size + len(record) > PACK_LIMIT and self._file.size > 0:
                    self._file.close()  # after writing what other puts queued in it
                    self._number += 1
                    self._file = GroupCommitFile(self._path(self._number))
                ticket, offset = self._file.write(record)
                placed.append(
                    (fragment_id, self._file, ticket, self._number, offset + head, len(data))
                )
        for _, file, ticket, _, _, _ in placed:
            file.wait(ticket)
        with self._lock:
            for fragment_id, _, _, number, offset, length in placed:
                self._index[fragment_id] = (number, offset, length)

    def get(self, fragment_id: str) -> bytes | None:
        with self._lock:
            where = self._index.get(fragment_id)
        if where is None:
            return None
        number, offset, length = where
        with self._lock:
            fd = self._readers.get(number)
            if fd is None:
                fd = self._readers[number] = os.open(self._path(number), os.O_RDONLY)
        return os.pread(fd, length, offset)

    def delete(self, fragment_id: str) -> None:
        record, _ = self._record(_DELETE, fragment_id, b"")
        with self._lock:
            if fragment_id not in self._index:
                return
            file = self._file
            ticket, _ = file.write(record)
        file.wait(ticket)
        with self._lock:
            self._index.pop(fragment_id, None)

    def list(self, after: str = "", limit: int = 1000) -> list[str]:
        with self._lock:
            ids = sorted(f for f in self._index if f > after)
        return ids[:limit]

    def stats(self) -> dict:
        with self._lock:
            return {
                "fragments": len(self._index),
                "bytes": sum(length for _, _, length in self._index.values()),
            }

    def close(self) -> None:
        self._file.close()
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
