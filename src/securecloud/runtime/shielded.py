"""Shielded files: an encrypted, integrity- and freshness-protected file format.

A shielded file is two files: the data file with encrypted 64 KiB chunks, and
`<path>.meta`, a sealed record of the file's version, length and the version
of every chunk. It gives random-access read and write and detects:

- alteration of any byte (AES-256-GCM per chunk and on the metadata);
- reordering of chunks (the chunk index is in each chunk's associated data);
- truncation (the authenticated length and chunk list must all be present);
- rollback of a chunk to an older content (its chunk version is recorded in
  the metadata) and rollback of the whole file, when the caller passes the
  version it last committed as `min_version` (in simulation mode that number
  must be kept by the caller; a TEE would keep it in a monotonic counter).

Data file layout: chunk i has two slots, A at (2i)·S and B at (2i+1)·S with
S = 12 + 65536 + 16; each slot is nonce (12) | ciphertext | tag (16). A write
goes to the slot the metadata does not point at, and the metadata (written to
a temporary file, fsynced, renamed) is the commit point: a crash mid-flush
leaves the previous version readable. Chunk associated data =
file_id (16) || index (8, big-endian) || chunk version (8) || slot (1).
Metadata: crypto envelope (key id b"shielded-meta"), associated data
b"securecloud/shielded-meta\\x00" || file_id, plaintext canonical JSON
{"file_id": hex, "version": int, "length": int, "chunks": [[version, slot], ...]}.
Keys: chunk and metadata keys are HKDF(key, salt=file_id, info=...).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securecloud.crypto import CryptoError, canonical, derive_key, open_sealed, seal
from securecloud.runtime.durable import atomic_write
from securecloud.runtime.errors import RollbackError, ShieldedFileError

CHUNK_SIZE = 64 * 1024
_NONCE = 12
_TAG = 16
_SLOT = _NONCE + CHUNK_SIZE + _TAG
_META_AAD = b"securecloud/shielded-meta\x00"


class ShieldedFile:
    """Random-access encrypted file; `flush` commits a new version durably."""

    def __init__(
        self, path: str | os.PathLike, key: bytes, file_id: bytes, *, min_version: int = 0
    ):
        if len(file_id) != 16:
            raise ShieldedFileError("file_id must be 16 bytes")
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta")
        self.file_id = file_id
        self._chunk_aead = AESGCM(derive_key(key, salt=file_id, info=b"securecloud/shielded/chunk"))
        self._meta_key = derive_key(key, salt=file_id, info=b"securecloud/shielded/meta")
        self._dirty: dict[int, bytearray] = {}
        self._changed = False  # metadata-only changes (truncation) need a flush too
        if self.meta_path.exists():
            self._load_meta(min_version)
        else:
            if min_version > 0:
                raise RollbackError(
                    f"{self.path}: metadata missing but version {min_version} was committed"
                )
            self.version, self.length, self._chunks = 0, 0, []
            self.path.touch(mode=0o600)
        self._fd = os.open(self.path, os.O_RDWR)

    # -- metadata ---------------------------------------------------------
    def _load_meta(self, min_version: int) -> None:
        try:
            doc = canonical.decode(
                open_sealed(self._meta_key, self.meta_path.read_bytes(), _META_AAD + self.file_id)
            )
        except CryptoError as exc:
            raise ShieldedFileError(f"{self.meta_path}: metadata altered or wrong key") from exc
        if doc["file_id"] != self.file_id.hex():
            raise ShieldedFileError(f"{self.meta_path}: belongs to another file")
        self.version, self.length = doc["version"], doc["length"]
        self._chunks = [tuple(c) for c in doc["chunks"]]
        if self.version < min_version:
            raise RollbackError(
                f"{self.path}: version {self.version} is older than committed {min_version}"
            )
        if len(self._chunks) != -(-self.length // CHUNK_SIZE):
            raise ShieldedFileError(f"{self.meta_path}: chunk list does not match length")

    def _write_meta(self) -> None:
        doc = {
            "file_id": self.file_id.hex(),
            "version": self.version,
            "length": self.length,
            "chunks": [list(c) for c in self._chunks],
        }
        blob = seal(
            self._meta_key, canonical.encode(doc), _META_AAD + self.file_id, key_id=b"shielded-meta"
        )
        atomic_write(self.meta_path, blob)

    # -- chunks -----------------------------------------------------------
    def _aad(self, index: int, chunk_version: int, slot: int) -> bytes:
        return self.file_id + struct.pack(">QQB", index, chunk_version, slot)

    def _chunk_len(self, index: int) -> int:
        return min(CHUNK_SIZE, self.length - index * CHUNK_SIZE)

    def _read_chunk(self, index: int) -> bytearray:
        if index in self._dirty:
            return self._dirty[index]
        if index >= len(self._chunks):
            return bytearray()
        chunk_version, slot = self._chunks[index]
        size = _NONCE + self._chunk_len(index) + _TAG
        raw = os.pread(self._fd, size, (2 * index + slot) * _SLOT)
        if len(raw) != size:
            raise ShieldedFileError(f"{self.path}: chunk {index} is truncated")
        try:
            plain = self._chunk_aead.decrypt(
                raw[:_NONCE], raw[_NONCE:], self._aad(index, chunk_version, slot)
            )
        except InvalidTag as exc:
            raise ShieldedFileError(
                f"{self.path}: chunk {index} altered, moved or rolled back"
            ) from exc
        return bytearray(plain)

    # -- file interface ---------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be non-negative")
        end = min(offset + size, self.length)
        out = bytearray()
        position = offset
        while position < end:
            index, within = divmod(position, CHUNK_SIZE)
            chunk = self._read_chunk(index)
            piece = chunk[within : within + (end - position)]
            out += piece
            position += len(piece)
        return bytes(out)

    def read_all(self) -> bytes:
        return self.read(0, self.length)

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0:
            raise ValueError("offset must be non-negative")
        if offset > self.length:  # fill the hole with zeros, as a sparse file reads
            self.write(self.length, bytes(offset - self.length))
        position, view = offset, memoryview(data)
        while view:
            index, within = divmod(position, CHUNK_SIZE)
            chunk = self._read_chunk(index)
            take = min(len(view), CHUNK_SIZE - within)
            if len(chunk) < within + take:
                chunk.extend(bytes(within + take - len(chunk)))
            chunk[within : within + take] = view[:take]
            self._dirty[index] = chunk
            self._changed = True
            position, view = position + take, view[take:]
            self.length = max(self.length, position)

    def truncate(self, length: int) -> None:
        if length < 0:
            raise ValueError("length must be non-negative")
        if length >= self.length:
            self.write(self.length, bytes(length - self.length))
            return
        keep = -(-length // CHUNK_SIZE)
        last = None
        if length % CHUNK_SIZE:
            last = self._read_chunk(keep - 1)[: length % CHUNK_SIZE]
        self._dirty = {i: c for i, c in self._dirty.items() if i < keep}
        self._chunks = self._chunks[:keep]
        self.length = length
        self._changed = True
        if last is not None:
            self._dirty[keep - 1] = bytearray(last)

    def flush(self) -> int:
        """Encrypt dirty chunks into their spare slots, then commit the metadata."""
        new_version = self.version + 1
        for index in sorted(self._dirty):
            chunk = bytes(self._dirty[index])
            old_slot = self._chunks[index][1] if index < len(self._chunks) else 1
            slot = 1 - old_slot
            nonce = os.urandom(_NONCE)
            sealed = self._chunk_aead.encrypt(nonce, chunk, self._aad(index, new_version, slot))
            os.pwrite(self._fd, nonce + sealed, (2 * index + slot) * _SLOT)
            while len(self._chunks) <= index:
                self._chunks.append((0, 1))
            self._chunks[index] = (new_version, slot)
        os.fsync(self._fd)
        self.version = new_version
        self._write_meta()
        self._dirty.clear()
        self._changed = False
        return self.version

    def close(self) -> None:
        if self._fd >= 0:
            if self._changed:
                self.flush()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ShieldedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
