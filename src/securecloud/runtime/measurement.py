"""Measurement of a service: the MRENCLAVE analogue.

measurement = SHA-256( b"securecloud/measurement/v1\\n" || canonical JSON of
  {"manifest": <name, entry_point, heap_mb, debug>,
   "files": [[<root name>/<relative path>, <sha256 hex of content>], ...]} )

Files are every regular file under each code root except byte-code caches
(`__pycache__`, `*.pyc`), listed with POSIX paths in sorted order, so the
value does not depend on the directory's location or walk order and one changed
byte of code or manifest changes it. Third-party libraries and the interpreter
are not measured in this Python runtime; a TEE image (Gramine, SCONE) would
measure them too (docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from securecloud.crypto import canonical
from securecloud.runtime.manifest import ServiceManifest

_PREFIX = b"securecloud/measurement/v1\n"
# (path, size, mtime_ns) -> content hash: re-measuring an unchanged tree is cheap.
_file_hash_cache: dict[tuple[str, int, int], str] = {}


def _file_digest(path: str, stat: os.stat_result) -> str:
    key = (path, stat.st_size, stat.st_mtime_ns)
    cached = _file_hash_cache.get(key)
    if cached is None:
        with open(path, "rb") as handle:
            cached = hashlib.sha256(handle.read()).hexdigest()
        _file_hash_cache[key] = cached
    return cached


def _walk(directory: str, prefix: str, out: list[list[str]]) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    _walk(entry.path, f"{prefix}{entry.name}/", out)
            elif entry.is_file() and not entry.name.endswith(".pyc"):
                out.append([prefix + entry.name, _file_digest(entry.path, entry.stat())])


def _listing(root: Path) -> list[list[str]]:
    """[[<root name>/<relative POSIX path>, <sha256 hex>], ...]; re-hashes only files
    whose size or modification time changed since the last call."""
    path = str(root)
    if os.path.isfile(path):
        return [[root.name, _file_digest(path, os.stat(path))]]
    entries: list[list[str]] = []
    _walk(path, f"{root.name}/", entries)
    return entries


def code_listing(manifest: ServiceManifest) -> list[list[str]]:
    files: list[list[str]] = []
    for root in manifest.code:
        files.extend(_listing(Path(root)))
    return sorted(files)


def measure(manifest: ServiceManifest) -> str:
    """The hex measurement of `manifest` and its code as it is on disk now."""
    document = {"manifest": manifest.launch_fields(), "files": code_listing(manifest)}
    return hashlib.sha256(_PREFIX + canonical.encode(document)).hexdigest()
