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


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _file_hash_cache.get(key)
    if cached is None:
        cached = hashlib.sha256(path.read_bytes()).hexdigest()
        _file_hash_cache[key] = cached
    return cached


def _listing(root: Path) -> list[list[str]]:
    if root.is_file():
        return [[root.name, _file_digest(root)]]
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for filename in filenames:
            if filename.endswith(".pyc"):
                continue
            path = Path(dirpath) / filename
            if path.is_file():
                relative = path.relative_to(root).as_posix()
                entries.append([f"{root.name}/{relative}", _file_digest(path)])
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
