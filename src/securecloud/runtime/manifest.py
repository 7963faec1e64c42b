"""Launch manifests: what a trusted service is, before it is measured.

A manifest names the entry point, the enclave heap and the debug flag, and the
code roots whose files are measured. Built-in services register a manifest
under the `securecloud.services` entry-point group (so this layer can launch
services of higher layers without importing them); any other service is a
YAML file::

    name: my-service
    entry_point: my_package.main:run     # callable(argv: list[str]) -> int | None
    heap_mb: 64
    debug: false
    code: [src/my_package]               # files or folders, relative to the YAML file
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from securecloud.runtime.errors import ManifestError

ENTRY_POINT_GROUP = "securecloud.services"
DEFAULT_HEAP_MB = 64


@dataclass(frozen=True)
class ServiceManifest:
    name: str
    entry_point: str
    heap_mb: int = DEFAULT_HEAP_MB
    debug: bool = False
    code: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ManifestError(f"name: {self.name!r} must be non-empty and contain no '/'")
        module, _, attr = self.entry_point.partition(":")
        if not module or not attr:
            raise ManifestError(f"entry_point: {self.entry_point!r} must be 'module:callable'")
        if not isinstance(self.heap_mb, int) or isinstance(self.heap_mb, bool):
            raise ManifestError(f"heap_mb: {self.heap_mb!r} is not an integer")
        if not 1 <= self.heap_mb <= 65536:
            raise ManifestError(f"heap_mb: {self.heap_mb} outside 1..65536")
        if not isinstance(self.debug, bool):
            raise ManifestError(f"debug: {self.debug!r} is not true or false")
        if not self.code:
            raise ManifestError("code: at least one file or folder must be measured")

    def launch_fields(self) -> dict:
        """The manifest fields that are part of the measurement."""
        return {
            "name": self.name,
            "entry_point": self.entry_point,
            "heap_mb": self.heap_mb,
            "debug": self.debug,
        }

    def load_entry_point(self):
        """Import the entry point from the measured code (its roots' parents go on sys.path)."""
        for root in self.code:
            parent = str(Path(root).parent)
            if parent not in sys.path:
                sys.path.insert(0, parent)
        module, _, attr = self.entry_point.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ManifestError(f"entry_point: cannot load {self.entry_point!r}: {exc}") from exc


def builtin_service(name: str, entry_point: str, heap_mb: int, debug: bool = False):
    """A manifest for a service inside the securecloud package (its whole code is measured)."""
    import securecloud

    return ServiceManifest(
        name=name,
        entry_point=entry_point,
        heap_mb=heap_mb,
        debug=debug,
        code=(Path(securecloud.__file__).parent,),
    )


def registered_services() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


@functools.cache
def _registered(service: str) -> ServiceManifest | None:
    """Entry-point lookups scan installed metadata (~1.5 ms): do each once per process."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == service:
            manifest = ep.load()
            if not isinstance(manifest, ServiceManifest):
                raise ManifestError(f"entry point {service!r} is not a ServiceManifest")
            return manifest
    return None


def load_manifest(service: str) -> ServiceManifest:
    """Resolve SERVICE: a registered service name or the path of a manifest YAML file."""
    manifest = _registered(service)
    if manifest is not None:
        return manifest
    path = Path(service)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _from_yaml(path)
    known = ", ".join(registered_services()) or "none"
    raise ManifestError(f"service {service!r}: not a registered service ({known}) nor a YAML file")


def _from_yaml(path: Path) -> ServiceManifest:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: a manifest is a mapping")
    unknown = set(doc) - {"name", "entry_point", "heap_mb", "debug", "code"}
    if unknown:
        raise ManifestError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    for field in ("name", "entry_point", "code"):
        if field not in doc:
            raise ManifestError(f"{path}: {field} is required")
    code = doc["code"] if isinstance(doc["code"], list) else [doc["code"]]
    roots = tuple((path.parent / str(item)).resolve() for item in code)
    for root in roots:
        if not root.exists():
            raise ManifestError(f"{path}: code: {root} does not exist")
    return ServiceManifest(
        name=str(doc["name"]),
        entry_point=str(doc["entry_point"]),
        heap_mb=doc.get("heap_mb", DEFAULT_HEAP_MB),
        debug=doc.get("debug", False),
        code=roots,
    )
