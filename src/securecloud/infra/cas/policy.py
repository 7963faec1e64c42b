"""Policies ("sessions") in YAML, modelled on the SCONE session language 0.3.

A policy says which code may receive which configuration. Parsing is strict:
unknown fields, wrong types and dangling secret references are refused with a
message that names the field. The reference with a complete example is
docs/cas.md. The session hash is SHA-256 over the canonical JSON of the parsed
document; an update names the current hash as `predecessor`.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from securecloud.crypto import canonical
from securecloud.crypto.errors import FormatError
from securecloud.infra.cas.errors import PolicyError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
HEX = re.compile(r"^[0-9a-f]+$")
PLACEHOLDER = re.compile(r"\$\$SC::([A-Za-z0-9_.-]+)\$\$")
SECRET_KINDS = ("ascii", "binary", "hex", "aes-256", "private-key", "x509-ca", "x509")
KEY_ALGORITHMS = ("p256", "ed25519", "x25519")
TOLERANCES = ("simulation", "debug-mode", "outdated-tcb", "hyperthreading", "sw-hardening-needed")
SECRET_VIEWS = {
    "ascii": ("",),
    "binary": ("",),
    "hex": ("",),
    "aes-256": ("",),
    "private-key": ("", ".pub"),
    "x509-ca": (".crt",),
    "x509": (".crt", ".key", ".chain"),
}


@dataclass(frozen=True)
class Signer:
    mrsigner: str
    isv_prod_id: int
    isv_svn_min: int


@dataclass(frozen=True)
class InjectionFile:
    path: str
    content: str


@dataclass(frozen=True)
class ServicePolicy:
    name: str
    mrenclaves: tuple[str, ...] = ()
    signer: Signer | None = None
    command: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    injection_files: tuple[InjectionFile, ...] = ()
    heap_mb: int | None = None


@dataclass(frozen=True)
class SecretSpec:
    name: str
    kind: str
    size: int | None = None
    value: str | None = None
    algorithm: str | None = None
    issuer: str | None = None
    san: tuple[str, ...] = ()
    common_name: str | None = None
    valid_for: int = 365
    migrate: bool = False
    export: tuple[str, ...] = ()
    ca: bool = False  # x509: an issuing CA confined to `san` (name constraints)

    def generation_params(self) -> tuple:
        """What must stay equal for a generated secret to survive an update."""
        return (
            self.kind, self.size, self.algorithm, self.issuer, self.san, self.common_name, self.ca
        )  # fmt: skip


@dataclass(frozen=True)
class Import:
    session: str
    secret: str
    alias: str


@dataclass(frozen=True)
class Quorum:
    fingerprints: tuple[str, ...]
    require_at_least: int = 1


@dataclass(frozen=True)
class Session:
    name: str
    version: str
    predecessor: str | None
    services: tuple[ServicePolicy, ...]
    secrets: tuple[SecretSpec, ...]
    imports: tuple[Import, ...]
    tolerate: frozenset[str]
    ignore_advisories: frozenset[str]
    read: Quorum
    update: Quorum
    document: dict

    @property
    def hash(self) -> str:
        return session_hash(self.document)

    def service(self, name: str) -> ServicePolicy | None:
        return next((s for s in self.services if s.name == name), None)

    def secret(self, name: str) -> SecretSpec | None:
        return next((s for s in self.secrets if s.name == name), None)


def session_hash(document: dict) -> str:
    return hashlib.sha256(b"securecloud/session/v1\x00" + canonical.encode(document)).hexdigest()


# -- field readers: each names the field it reads in its error ---------------------


def _mapping(doc: Any, where: str, allowed: set[str]) -> dict:
    if not isinstance(doc, dict):
        raise PolicyError(f"{where}: expected a mapping")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    return doc


def _str(doc: dict, key: str, where: str, *, required: bool = False, pattern=None) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise PolicyError(f"{where}.{key}: is required")
        return None
    if not isinstance(value, str):
        raise PolicyError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    if pattern is not None and not pattern.match(value):
        raise PolicyError(f"{where}.{key}: {value!r} is not a valid value")
    return value


def _int(doc: dict, key: str, where: str, lo: int, hi: int, default=None) -> int | None:
    value = doc.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise PolicyError(f"{where}.{key}: expected an integer")
    if not lo <= value <= hi:
        raise PolicyError(f"{where}.{key}: {value} outside {lo}..{hi}")
    return value


def _bool(doc: dict, key: str, where: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}.{key}: expected true or false")
    return value


def _list(doc: dict, key: str, where: str) -> list:
    value = doc.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(f"{where}.{key}: expected a list")
    return value


def _strings(doc: dict, key: str, where: str, pattern=None) -> tuple[str, ...]:
    items = _list(doc, key, where)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise PolicyError(f"{where}.{key}[{i}]: expected a string")
        if pattern is not None and not pattern.match(item):
            raise PolicyError(f"{where}.{key}[{i}]: {item!r} is not a valid value")
    return tuple(items)


def _hex(length: int) -> re.Pattern:
    return re.compile(rf"^[0-9a-f]{{{length}}}$")


# -- sections ------------------------------------------------------------------------


def _service(doc: Any, where: str) -> ServicePolicy:
    allowed = {
        "name",
        "mrenclaves",
        "signer",
        "command",
        "environment",
        "injection_files",
        "heap_mb",
    }
    doc = _mapping(doc, where, allowed)
    name = _str(doc, "name", where, required=True, pattern=NAME)
    mrenclaves = _strings(doc, "mrenclaves", where, _hex(64))
    signer = None
    if "signer" in doc:
        s_where = f"{where}.signer"
        s = _mapping(doc["signer"], s_where, {"mrsigner", "isv_prod_id", "isv_svn_min"})
        signer = Signer(
            mrsigner=_str(s, "mrsigner", s_where, required=True, pattern=_hex(64)),
            isv_prod_id=_int(s, "isv_prod_id", s_where, 0, 65535, default=0),
            isv_svn_min=_int(s, "isv_svn_min", s_where, 0, 65535, default=0),
        )
    if not mrenclaves and signer is None:
        raise PolicyError(f"{where}: needs mrenclaves or a signer (what code may attest?)")
    command = doc.get("command", [])
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as exc:
            raise PolicyError(f"{where}.command: {exc}") from exc
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise PolicyError(f"{where}.command: expected a string or a list of strings")
    environment = doc.get("environment") or {}
    if not isinstance(environment, dict):
        raise PolicyError(f"{where}.environment: expected a mapping of names to strings")
    for key, value in environment.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise PolicyError(f"{where}.environment: {key!r} is not a variable name")
        if not isinstance(value, str):
            raise PolicyError(f"{where}.environment.{key}: expected a string (quote numbers)")
    files = []
    for i, item in enumerate(_list(doc, "injection_files", where)):
        f_where = f"{where}.injection_files[{i}]"
        f = _mapping(item, f_where, {"path", "content"})
        path = _str(f, "path", f_where, required=True)
        if ".." in path.split("/") or not path.strip("/"):
            raise PolicyError(f"{f_where}.path: {path!r} must not be empty or contain '..'")
        files.append(InjectionFile(path, _str(f, "content", f_where) or ""))
    return ServicePolicy(
        name=name,
        mrenclaves=mrenclaves,
        signer=signer,
        command=tuple(command),
        environment=dict(environment),
        injection_files=tuple(files),
        heap_mb=_int(doc, "heap_mb", where, 1, 65536),
    )


def _secret(doc: Any, where: str) -> SecretSpec:
    allowed = {
        "name",
        "kind",
        "size",
        "value",
        "algorithm",
        "issuer",
        "san",
        "common_name",
        "valid_for",
        "migrate",
        "export",
        "ca",
    }
    doc = _mapping(doc, where, allowed)
    name = _str(doc, "name", where, required=True, pattern=NAME)
    kind = _str(doc, "kind", where, required=True)
    if kind not in SECRET_KINDS:
        raise PolicyError(f"{where}.kind: {kind!r} is not one of {', '.join(SECRET_KINDS)}")
    spec = SecretSpec(
        name=name,
        kind=kind,
        size=_int(doc, "size", where, 1, 65536),
        value=_str(doc, "value", where),
        algorithm=_str(doc, "algorithm", where),
        issuer=_str(doc, "issuer", where, pattern=NAME),
        san=_strings(doc, "san", where),
        common_name=_str(doc, "common_name", where),
        valid_for=_int(doc, "valid_for", where, 1, 3650, default=365),
        migrate=_bool(doc, "migrate", where),
        export=_strings(doc, "export", where, NAME),
        ca=_bool(doc, "ca", where),
    )
    if spec.value is not None and kind not in ("ascii", "hex", "binary"):
        raise PolicyError(f"{where}.value: only ascii, hex and binary secrets take a value")
    if (
        kind == "hex"
        and spec.value is not None
        and (not HEX.match(spec.value) or len(spec.value) % 2)
    ):
        raise PolicyError(f"{where}.value: not an even-length lowercase hex string")
    if kind == "ascii" and spec.value is not None and not spec.value.isascii():
        raise PolicyError(f"{where}.value: not ASCII")
    if kind == "private-key":
        if spec.algorithm not in KEY_ALGORITHMS:
            raise PolicyError(
                f"{where}.algorithm: private-key needs one of {', '.join(KEY_ALGORITHMS)}"
            )
    elif spec.algorithm is not None:
        raise PolicyError(f"{where}.algorithm: only private-key secrets take an algorithm")
    if kind == "x509" and spec.issuer is None:
        raise PolicyError(f"{where}.issuer: an x509 secret names the x509-ca secret that signs it")
    if kind != "x509" and (spec.issuer or spec.san):
        raise PolicyError(f"{where}: issuer and san apply to x509 secrets only")
    if spec.ca and kind != "x509":
        raise PolicyError(f"{where}.ca: applies to x509 secrets only")
    if spec.ca and not spec.san:
        raise PolicyError(
            f"{where}.san: an issuing CA (ca: true) names the DNS subtrees it may sign"
        )
    if spec.migrate and kind != "private-key":
        raise PolicyError(f"{where}.migrate: applies to private-key secrets only")
    if kind == "aes-256" and spec.size not in (None, 32):
        raise PolicyError(f"{where}.size: an aes-256 key is 32 bytes")
    return spec


def _quorum(doc: Any, where: str, creator: str | None) -> Quorum:
    if isinstance(doc, list):
        doc = {"signers": doc}
    doc = _mapping(doc, where, {"signers", "require_at_least"})
    raw = _strings(doc, "signers", where)
    fingerprints = []
    for i, item in enumerate(raw):
        if item == "CREATOR":
            if creator is None:
                raise PolicyError(f"{where}.signers[{i}]: CREATOR needs a client certificate")
            item = creator
        if not _hex(64).match(item):
            raise PolicyError(f"{where}.signers[{i}]: not a 64-hex-digit key fingerprint")
        fingerprints.append(item)
    need = _int(doc, "require_at_least", where, 1, 64, default=1)
    if fingerprints and need > len(fingerprints):
        raise PolicyError(
            f"{where}.require_at_least: {need} exceeds the {len(fingerprints)} listed signers"
        )
    return Quorum(tuple(fingerprints), need)


def _placeholders_resolve(session: Session) -> None:
    known: dict[str, str] = {s.name: s.kind for s in session.secrets}
    for imp in session.imports:
        known[imp.alias] = "imported"
    for svc in session.services:
        texts = [*svc.command, *svc.environment.values(), *(f.content for f in svc.injection_files)]
        for text in texts:
            for ref in PLACEHOLDER.findall(text):
                base, view = ref, ""
                for candidate in (".crt", ".key", ".chain", ".pub"):
                    if ref.endswith(candidate):
                        base, view = ref[: -len(candidate)], candidate
                if base not in known:
                    raise PolicyError(
                        f"services.{svc.name}: $$SC::{ref}$$ names no secret or import"
                    )
                kind = known[base]
                if kind != "imported" and view not in SECRET_VIEWS[kind]:
                    views = ", ".join(f"$$SC::{base}{v}$$" for v in SECRET_VIEWS[kind])
                    raise PolicyError(f"services.{svc.name}: {kind} secret {base} offers {views}")


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (which plain YAML lets the last one win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise PolicyError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_policy(text: str | bytes, *, creator: str | None = None) -> Session:
    """Parse and validate a policy; `creator` is the fingerprint CREATOR stands for."""
    try:
        doc = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}") from exc
    allowed = {
        "name",
        "version",
        "predecessor",
        "services",
        "secrets",
        "imports",
        "security",
        "access_policy",
    }
    doc = _mapping(doc, "policy", allowed)
    try:
        canonical.encode(doc)
    except FormatError as exc:
        raise PolicyError(f"policy{str(exc)[1:]} (quote numbers that are not integers)") from exc
    name = _str(doc, "name", "policy", required=True, pattern=NAME)
    version = _str(doc, "version", "policy") or "0.3"
    if version != "0.3":
        raise PolicyError(f"policy.version: {version!r} is not supported (0.3)")
    predecessor = _str(doc, "predecessor", "policy", pattern=_hex(64))
    services = tuple(
        _service(s, f"services[{i}]") for i, s in enumerate(_list(doc, "services", "policy"))
    )
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise PolicyError("services: service names must be unique")
    secrets = tuple(
        _secret(s, f"secrets[{i}]") for i, s in enumerate(_list(doc, "secrets", "policy"))
    )
    secret_names = [s.name for s in secrets]
    if len(set(secret_names)) != len(secret_names):
        raise PolicyError("secrets: secret names must be unique")
    for s in secrets:
        if s.kind == "x509":
            issuer = next((c for c in secrets if c.name == s.issuer), None)
            if issuer is None or issuer.kind != "x509-ca":
                raise PolicyError(
                    f"secrets.{s.name}.issuer: {s.issuer!r} is not an x509-ca secret here"
                )
    imports = []
    for i, item in enumerate(_list(doc, "imports", "policy")):
        where = f"imports[{i}]"
        imp = _mapping(item, where, {"session", "secret", "as"})
        secret = _str(imp, "secret", where, required=True, pattern=NAME)
        alias = _str(imp, "as", where, pattern=NAME) or secret
        if alias in secret_names:
            raise PolicyError(f"{where}.as: {alias!r} collides with a secret of this policy")
        imports.append(
            Import(_str(imp, "session", where, required=True, pattern=NAME), secret, alias)
        )
    security = _mapping(doc.get("security") or {}, "security", {"attestation"})
    attestation = _mapping(
        security.get("attestation") or {}, "security.attestation", {"tolerate", "ignore_advisories"}
    )
    tolerate = _strings(attestation, "tolerate", "security.attestation")
    for t in tolerate:
        if t not in TOLERANCES:
            raise PolicyError(
                f"security.attestation.tolerate: {t!r} is not one of {', '.join(TOLERANCES)}"
            )
    ignore = attestation.get("ignore_advisories", [])
    ignore = (
        ("*",)
        if ignore == "*"
        else _strings(attestation, "ignore_advisories", "security.attestation")
    )
    access = _mapping(doc.get("access_policy") or {}, "access_policy", {"read", "update"})
    default = {"signers": ["CREATOR"]} if creator else {"signers": []}
    session = Session(
        name=name,
        version=version,
        predecessor=predecessor,
        services=services,
        secrets=secrets,
        imports=tuple(imports),
        tolerate=frozenset(tolerate),
        ignore_advisories=frozenset(ignore),
        read=_quorum(access.get("read", default), "access_policy.read", creator),
        update=_quorum(access.get("update", default), "access_policy.update", creator),
        document=doc,
    )
    _placeholders_resolve(session)
    return session
