"""The CAS itself, independent of HTTP: policies, identities, attestation.

`Cas` holds the parsed policies and their secrets in memory, commits every
change to the encrypted state store, and writes an audit entry (durably)
before it answers any operation that changes state or releases secrets, and
for every refusal. The HTTP layer (`api.py`) only translates.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from prometheus_client import Counter, Histogram

from securecloud.crypto import (
    CryptoError,
    canonical,
    encrypt_to,
    fingerprint,
    generate_signing_key,
    load_private_key_pem,
    private_key_pem,
    public_key_pem,
    verify,
)
from securecloud.crypto.agreement import load_public_bytes
from securecloud.infra.cas import ca, secrets
from securecloud.infra.cas.audit import AuditLog
from securecloud.infra.cas.errors import (
    AttestationRefused,
    CasError,
    NotAuthenticated,
    NotAuthorized,
    PolicyConflict,
    PolicyError,
    SessionNotFound,
)
from securecloud.infra.cas.nonces import NonceStore
from securecloud.infra.cas.policy import PLACEHOLDER, Session, parse_policy, session_hash
from securecloud.infra.cas.state import StateStore
from securecloud.runtime.errors import AttestationError
from securecloud.runtime.evidence import Claims, Evidence, report_data_for
from securecloud.runtime.manifest import builtin_service
from securecloud.runtime.provisioning import LABEL, InjectedFile, ServiceConfig, config_aad
from securecloud.runtime.sealing import Sealer
from securecloud.runtime.sim import SimVerifier
from securecloud.runtime.tsm import TsmVerifier

log = logging.getLogger(__name__)
MANIFEST = builtin_service("cas", "securecloud.infra.cas.server:main", heap_mb=64)
APPROVAL_CONTEXT = b"securecloud/approve/v1\x00"

ATTESTATIONS = Counter(
    "securecloud_cas_attestations_total", "Attestation outcomes", ["outcome", "reason"]
)
ATTEST_SECONDS = Histogram(
    "securecloud_cas_attest_seconds",
    "Time CAS spends verifying evidence and releasing a configuration",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
POLICY_UPDATES = Counter("securecloud_cas_policy_applies_total", "Policies applied", ["outcome"])

TCB_TOLERANCE = {
    "UpToDate": set(),
    "OutOfDate": {"outdated-tcb"},
    "OutOfDateConfigurationNeeded": {"outdated-tcb", "hyperthreading"},
    "ConfigurationNeeded": {"hyperthreading"},
    "SWHardeningNeeded": {"sw-hardening-needed"},
    "ConfigurationAndSWHardeningNeeded": {"hyperthreading", "sw-hardening-needed"},
}


@dataclass(frozen=True)
class Approval:
    certificate_pem: str
    signature: str


def _redacted(record: dict) -> dict:
    """A secret as owners see it: never its value; what is public (certificates, public keys)."""
    shown = {"kind": record["kind"], "value": "<redacted>"}
    if record["kind"] in ("x509-ca", "x509"):
        shown["certificate"] = record["crt"]
    if record["kind"] == "private-key":
        shown["public_key"] = secrets.render(record, ".pub")
    return shown


class Cas:
    def __init__(
        self,
        directory: Path,
        sealer: Sealer,
        platform_keys: dict[str, object],
        *,
        nonce_ttl: float = 300.0,
        recovery_public_key=None,
        tls_san: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    ):
        self.directory = Path(directory)
        self.store = StateStore(self.directory, sealer, recovery_public_key)
        self.nonces = NonceStore(nonce_ttl)
        self.verifiers = {"sim": SimVerifier(platform_keys), "tsm": TsmVerifier()}
        self._lock = threading.RLock()
        state = self.store.load()
        if state is None:
            state = self._initial_state(tls_san)
            self.store.commit(state)
        self.state = state
        self.audit_key = load_private_key_pem(state["audit_key"].encode())
        self.ca_key = load_private_key_pem(state["ca"]["key"].encode())
        self.ca_cert = ca.load_cert(state["ca"]["crt"].encode())
        self.audit = AuditLog(self.directory / "audit.log", self.audit_key)
        head = state.get("audit_head", [0, ""])
        if self.audit.head.seq < head[0]:
            raise CasError(
                f"audit log ends at entry {self.audit.head.seq} but state saw entry {head[0]}: "
                "the log was truncated or rolled back",
                reason="audit-rollback",
                status=500,
            )
        self.sessions: dict[str, Session] = {
            name: parse_policy(canonical.encode(stored["document"]), creator=stored["creator"])
            for name, stored in state["sessions"].items()
        }
        self._write_public_files()

    # -- identity ----------------------------------------------------------
    @staticmethod
    def _initial_state(tls_san: tuple[str, ...]) -> dict:
        ca_key, ca_cert = ca.make_ca("securecloud CAS CA")
        server_key = generate_signing_key("p256")
        server_cert = ca.issue(
            ca_key,
            ca_cert,
            server_key.public_key(),
            common_name="securecloud CAS",
            san=tls_san,
            valid_days=825,
            client=False,
        )
        return {
            "format": 1,
            "sessions": {},
            "audit_key": private_key_pem(generate_signing_key("ed25519")).decode(),
            "ca": {"key": private_key_pem(ca_key).decode(), "crt": ca.cert_pem(ca_cert).decode()},
            "server": {
                "key": private_key_pem(server_key).decode(),
                "crt": ca.cert_pem(server_cert).decode(),
            },
            "audit_head": [0, ""],
        }

    def _write_public_files(self) -> None:
        (self.directory / "ca.crt").write_text(self.state["ca"]["crt"])
        (self.directory / "audit.pub").write_bytes(public_key_pem(self.audit_key.public_key()))

    @property
    def ca_pem(self) -> bytes:
        return self.state["ca"]["crt"].encode()

    @property
    def server_tls(self) -> tuple[bytes, bytes]:
        return self.state["server"]["crt"].encode(), self.state["server"]["key"].encode()

    def _commit(self) -> None:
        self.state["audit_head"] = [self.audit.head.seq, self.audit.head.hash]
        self.store.commit(self.state)

    def enroll(self, csr_pem: bytes) -> tuple[bytes, str]:
        """Issue a client certificate for the key in a CSR (proof of possession)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CasError(f"csr: not a PEM certificate signing request ({exc})") from exc
        if not csr.is_signature_valid:
            raise CasError("csr: signature does not verify (no proof of key possession)")
        fp = fingerprint(csr.public_key())
        cert = ca.issue(
            self.ca_key,
            self.ca_cert,
            csr.public_key(),
            common_name=f"owner {fp[:16]}",
            valid_days=825,
            server=False,
        )
        self.audit.append("identity.enroll", fingerprint=fp)
        return ca.cert_pem(cert), fp

    # -- policies ------------------------------------------------------------
    def _approvers(self, client_fp: str, approvals: list[Approval], new_hash: str) -> set[str]:
        approvers = {client_fp}
        for i, approval in enumerate(approvals):
            try:
                cert = x509.load_pem_x509_certificate(approval.certificate_pem.encode())
                cert.verify_directly_issued_by(self.ca_cert)
                verify(
                    cert.public_key(),
                    APPROVAL_CONTEXT + bytes.fromhex(new_hash),
                    bytes.fromhex(approval.signature),
                )
            except (ValueError, TypeError, InvalidSignature, CryptoError) as exc:
                raise NotAuthorized(
                    f"approvals[{i}]: does not verify ({exc})", reason="bad-approval"
                ) from exc
            approvers.add(fingerprint(cert.public_key()))
        return approvers

    def apply_policy(
        self, text: str, client_fp: str | None, approvals: list[Approval] | None = None
    ) -> dict:
        if client_fp is None:
            raise NotAuthenticated("applying a policy needs a client certificate (mutual TLS)")
        with self._lock:
            try:
                result = self._apply(text, client_fp, approvals or [])
            except CasError as exc:
                POLICY_UPDATES.labels("refused").inc()
                self.audit.append(
                    "policy.refused", client=client_fp, reason=exc.reason, detail=str(exc)[:500]
                )
                raise
            POLICY_UPDATES.labels("applied").inc()
            return result

    def _apply(self, text: str, client_fp: str, approvals: list[Approval]) -> dict:
        probe = parse_policy(text, creator=client_fp)
        current = self.sessions.get(probe.name)
        stored = self.state["sessions"].get(probe.name)
        creator = stored["creator"] if stored else client_fp
        new = parse_policy(text, creator=creator)
        if current is None:
            if new.predecessor is not None:
                raise SessionNotFound(
                    f"policy.predecessor: session {new.name!r} does not exist, so a new one "
                    "must not name a predecessor"
                )
        else:
            if new.predecessor is None:
                raise PolicyConflict(
                    f"session {new.name!r} exists: give predecessor: {current.hash} to update it",
                    reason="session-exists",
                )
            if new.predecessor != current.hash:
                raise PolicyConflict(
                    f"policy.predecessor: {new.predecessor} is not the current version "
                    f"{current.hash} (someone updated it since)"
                )
            approvers = self._approvers(client_fp, approvals, new.hash)
            allowed = approvers & set(current.update.fingerprints)
            if len(allowed) < current.update.require_at_least:
                raise NotAuthorized(
                    f"updating {new.name!r} needs {current.update.require_at_least} approval(s) "
                    f"from access_policy.update; got {len(allowed)}"
                )
            self._check_svn_not_lowered(current, new)
        records = self._secrets_for(new, current, stored)
        self.audit.append(
            "policy.apply",
            session=new.name,
            hash=new.hash,
            predecessor=new.predecessor or "",
            client=client_fp,
        )
        history = [*(stored or {}).get("history", []), new.hash]
        self.state["sessions"][new.name] = {
            "document": new.document,
            "creator": creator,
            "secrets": records,
            "history": history,
        }
        self.sessions[new.name] = new
        self._commit()
        return {
            "name": new.name,
            "hash": new.hash,
            "version": len(history),
            "created": current is None,
        }

    @staticmethod
    def _check_svn_not_lowered(current: Session, new: Session) -> None:
        for svc in new.services:
            old = current.service(svc.name)
            if (
                old
                and old.signer
                and svc.signer
                and old.signer.mrsigner == svc.signer.mrsigner
                and svc.signer.isv_svn_min < old.signer.isv_svn_min
            ):
                raise PolicyError(
                    f"services.{svc.name}.signer.isv_svn_min: lowering it from "
                    f"{old.signer.isv_svn_min} to {svc.signer.isv_svn_min} would re-admit "
                    "code with known vulnerabilities",
                    reason="svn-lowered",
                )

    @staticmethod
    def _secrets_for(new: Session, current: Session | None, stored: dict | None) -> dict:
        old_records = (stored or {}).get("secrets", {})
        records: dict[str, dict] = {}
        issuers: dict[str, dict] = {}
        # CAs first, so certificates they issue in this round use the kept or new CA.
        ordered = sorted(new.secrets, key=lambda s: s.kind != "x509-ca")
        for spec in ordered:
            old_spec = current.secret(spec.name) if current else None
            keep = (
                old_spec is not None
                and spec.value is None
                and old_spec.value is None
                and old_spec.generation_params() == spec.generation_params()
                and spec.name in old_records
            )
            if keep and spec.kind == "private-key":
                keep = spec.migrate and old_spec.migrate
            if keep and spec.kind == "x509":
                keep = records.get(spec.issuer) is old_records.get(spec.issuer)
            record = old_records[spec.name] if keep else secrets.generate(spec, issuers)
            records[spec.name] = record
            if spec.kind == "x509-ca":
                issuers[spec.name] = record
        return records

    def show_policy(self, name: str, client_fp: str | None) -> dict:
        if client_fp is None:
            raise NotAuthenticated("reading a policy needs a client certificate (mutual TLS)")
        session = self.sessions.get(name)
        if session is None:
            raise SessionNotFound(f"no session named {name!r}")
        if client_fp not in session.read.fingerprints:
            self.audit.append("policy.read.refused", session=name, client=client_fp)
            raise NotAuthorized(f"your key is not in access_policy.read of {name!r}")
        document = copy.deepcopy(session.document)
        for secret in document.get("secrets") or []:
            if isinstance(secret, dict) and "value" in secret:
                secret["value"] = "<redacted>"
        stored = self.state["sessions"][name]
        return {
            "name": name,
            "hash": session.hash,
            "version": len(stored["history"]),
            "creator": stored["creator"],
            "policy": document,
            "secrets": {n: _redacted(r) for n, r in stored["secrets"].items()},
        }

    # -- attestation -------------------------------------------------------------
    def new_nonce(self) -> bytes:
        return self.nonces.issue()

    def attest(
        self, config_id: str, nonce_hex: str, public_key_hex: str, evidence_doc: dict
    ) -> dict:
        """Verify evidence against the policy entry `config_id`; release its config."""
        with ATTEST_SECONDS.time():
            try:
                result = self._attest(config_id, nonce_hex, public_key_hex, evidence_doc)
            except (CasError, AttestationError) as exc:
                reason = getattr(exc, "reason", "refused")
                ATTESTATIONS.labels("refused", reason).inc()
                self.audit.append(
                    "attest.refused",
                    config_id=config_id[:200],
                    reason=reason,
                    detail=str(exc)[:500],
                )
                if isinstance(exc, CasError):
                    raise
                raise AttestationRefused(str(exc), reason=reason) from exc
            ATTESTATIONS.labels("released", "").inc()
            return result

    def _attest(self, config_id: str, nonce_hex: str, public_key_hex: str, evidence_doc) -> dict:
        session_name, _, service_name = config_id.partition("/")
        try:
            nonce, public_key = bytes.fromhex(nonce_hex), bytes.fromhex(public_key_hex)
            recipient = load_public_bytes(public_key)
        except (ValueError, CryptoError) as exc:
            raise CasError(f"nonce/public_key: {exc}", reason="invalid-request") from exc
        self.nonces.consume(nonce)
        with self._lock:  # a policy and its secrets, of the same version
            session = self.sessions.get(session_name)
            stored = self.state["sessions"].get(session_name)
        service = session.service(service_name) if session else None
        if service is None:
            raise SessionNotFound(f"config_id: no service {config_id!r}", reason="unknown-config")
        evidence = Evidence.from_json(evidence_doc)
        verifier = self.verifiers.get(evidence.kind)
        if verifier is None:
            raise AttestationRefused(
                f"evidence kind {evidence.kind!r} is not supported", reason="unsupported-evidence"
            )
        claims = verifier.verify(evidence)
        if claims.report_data != report_data_for(LABEL, nonce, public_key):
            raise AttestationRefused(
                "quote is not bound to this challenge and key (relayed or replayed evidence)",
                reason="report-data-mismatch",
            )
        self._check_tolerances(session, claims)
        self._check_identity(service, claims, config_id)
        config = self._render(session, service, stored["secrets"])
        aad = config_aad(session.name, session.hash, service.name)
        sealed = encrypt_to(recipient, canonical.encode(config.to_json()), aad)
        self.audit.append(
            "attest.released",
            config_id=config_id,
            session_hash=session.hash,
            mrenclave=claims.mrenclave,
            platform=claims.platform_id,
            tee=claims.tee,
        )
        return {
            "session": session.name,
            "session_hash": session.hash,
            "service": service.name,
            "config": sealed.hex(),
        }

    @staticmethod
    def _check_tolerances(session: Session, claims: Claims) -> None:
        tolerate = session.tolerate
        if claims.tee == "simulation" and "simulation" not in tolerate:
            raise AttestationRefused(
                "simulation quote refused: the policy does not tolerate simulation",
                reason="simulation-not-tolerated",
            )
        if claims.debug and "debug-mode" not in tolerate:
            raise AttestationRefused(
                "debug-mode code refused: not tolerated by the policy", reason="debug-not-tolerated"
            )
        needed = TCB_TOLERANCE.get(claims.tcb_status)
        if needed is None:
            raise AttestationRefused(
                f"unknown TCB status {claims.tcb_status!r}", reason="tcb-refused"
            )
        if not needed <= tolerate:
            raise AttestationRefused(
                f"platform TCB is {claims.tcb_status}: needs tolerate {sorted(needed - tolerate)}",
                reason="tcb-refused",
            )
        ignored = session.ignore_advisories
        open_advisories = [a for a in claims.advisories if a not in ignored and "*" not in ignored]
        if open_advisories:
            raise AttestationRefused(
                f"platform has advisories not ignored by the policy: {', '.join(open_advisories)}",
                reason="advisories",
            )

    @staticmethod
    def _check_identity(service, claims: Claims, config_id: str) -> None:
        if claims.mrenclave in service.mrenclaves:
            return
        signer = service.signer
        if (
            signer is not None
            and claims.mrsigner == signer.mrsigner
            and claims.isv_prod_id == signer.isv_prod_id
        ):
            if claims.isv_svn >= signer.isv_svn_min:
                return
            raise AttestationRefused(
                f"isv_svn {claims.isv_svn} is below the policy's minimum {signer.isv_svn_min}",
                reason="svn-too-low",
            )
        raise AttestationRefused(
            f"measurement {claims.mrenclave[:16]}… is not allowed for {config_id}",
            reason="wrong-measurement",
        )

    def _lookup(self, session: Session, records: dict, ref: str) -> str:
        base, view = ref, ""
        for candidate in (".crt", ".key", ".chain", ".pub"):
            if ref.endswith(candidate):
                base, view = ref[: -len(candidate)], candidate
        if base in records:
            return secrets.render(records[base], view)
        imp = next(i for i in session.imports if i.alias == base)
        exporter = self.sessions.get(imp.session)
        spec = exporter.secret(imp.secret) if exporter else None
        if spec is None or session.name not in spec.export:
            raise AttestationRefused(
                f"import {imp.session}/{imp.secret}: not exported to {session.name}",
                reason="import-not-exported",
            )
        with self._lock:
            record = self.state["sessions"][imp.session]["secrets"][imp.secret]
        return secrets.render(record, view)

    def _render(self, session: Session, service, records: dict) -> ServiceConfig:
        def fill(text: str) -> str:
            return PLACEHOLDER.sub(lambda m: self._lookup(session, records, m.group(1)), text)

        return ServiceConfig(
            session=session.name,
            session_hash=session.hash,
            service=service.name,
            command=tuple(fill(c) for c in service.command),
            environment={k: fill(v) for k, v in service.environment.items()},
            injection_files=tuple(
                InjectedFile(f.path, fill(f.content).encode()) for f in service.injection_files
            ),
        )

    def close(self) -> None:
        self.audit.close()


__all__ = ["MANIFEST", "Approval", "Cas", "session_hash"]
