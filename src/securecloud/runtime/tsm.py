"""The `tsm` backend: evidence from Linux configfs-tsm on a confidential VM.

On a TDX or SEV-SNP guest the kernel exposes
`/sys/kernel/config/tsm/report/`. Making a directory there creates a report
request; writing 64 bytes to `inblob` sets the report data; reading `outblob`
returns the hardware-signed quote (TDX) or report (SNP); `provider` names the
TEE; `generation` counts writes, so a reader can tell that nobody else wrote
`inblob` between its write and its read.

This module produces such evidence and parses the fields CAS needs
(measurement, report data, debug) from the two documented layouts. It does
NOT yet verify the vendor certificate chain (Intel PCS / AMD KDS) that makes
the evidence trustworthy, so `TsmVerifier.verify` refuses all tsm evidence
with reason "unverified-vendor-chain" after parsing it. That is later work.
"""

from __future__ import annotations

import base64
import contextlib
import os
import struct
import uuid
from pathlib import Path

from securecloud.runtime.errors import AttestationError
from securecloud.runtime.evidence import REPORT_DATA_SIZE, Claims, Evidence

KIND = "tsm"
DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")

# TDX quote v4: 48-byte header, then the TD report body; offsets into the quote.
_TDX_HEADER = 48
_TDX_TD_ATTRIBUTES = _TDX_HEADER + 120
_TDX_MRTD = _TDX_HEADER + 136
_TDX_REPORT_DATA = _TDX_HEADER + 520
_TDX_MIN_SIZE = _TDX_HEADER + 584
# SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP ABI spec, table 22).
_SNP_POLICY = 0x08
_SNP_REPORT_DATA = 0x50
_SNP_MEASUREMENT = 0x90
_SNP_SIZE = 0x4A0
_SNP_POLICY_DEBUG = 1 << 19


class TsmAttester:
    kind = KIND

    def __init__(self, root: Path = DEFAULT_ROOT, name: str | None = None):
        self.root = Path(root)
        self.name = name or f"securecloud-{uuid.uuid4().hex[:12]}"

    def _read(self, entry: Path, field: str) -> bytes:
        try:
            return (entry / field).read_bytes()
        except OSError as exc:
            raise AttestationError(f"configfs-tsm: cannot read {field}: {exc}", "tsm") from exc

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttestationError(f"report data must be {REPORT_DATA_SIZE} bytes")
        if not self.root.is_dir():
            raise AttestationError(f"configfs-tsm not available at {self.root}", "tsm")
        entry = self.root / self.name
        entry.mkdir(exist_ok=True)
        try:
            before = int(self._read(entry, "generation").strip() or b"0")
            fd = os.open(entry / "inblob", os.O_WRONLY)
            try:
                os.write(fd, report_data)
            finally:
                os.close(fd)
            outblob = self._read(entry, "outblob")
            provider = self._read(entry, "provider").decode().strip()
            after = int(self._read(entry, "generation").strip())
        finally:
            with contextlib.suppress(OSError):  # a plain directory (tests) or already gone
                entry.rmdir()
        if after != before + 1:
            raise AttestationError(
                f"configfs-tsm generation went {before} -> {after}: another writer raced us",
                "tsm-race",
            )
        return Evidence(
            kind=KIND,
            payload={"provider": provider, "outblob": base64.b64encode(outblob).decode()},
        )


def parse_claims(evidence: Evidence) -> Claims:
    """Read measurement, report data and debug flag out of TDX or SNP evidence."""
    provider = evidence.payload.get("provider")
    try:
        blob = base64.b64decode(evidence.payload.get("outblob", ""), validate=True)
    except (ValueError, TypeError) as exc:
        raise AttestationError("tsm evidence: outblob is not base64") from exc
    if provider == "tdx_guest":
        if len(blob) < _TDX_MIN_SIZE:
            raise AttestationError(f"TDX quote of {len(blob)} bytes is too short")
        version = struct.unpack_from("<H", blob, 0)[0]
        if version != 4:
            raise AttestationError(f"TDX quote version {version} (expected 4)")
        td_attributes = struct.unpack_from("<Q", blob, _TDX_TD_ATTRIBUTES)[0]
        return Claims(
            tee="tdx",
            mrenclave=blob[_TDX_MRTD : _TDX_MRTD + 48].hex(),
            mrsigner="",
            isv_prod_id=0,
            isv_svn=0,
            debug=bool(td_attributes & 1),
            tcb_status="unverified",
            report_data=blob[_TDX_REPORT_DATA : _TDX_REPORT_DATA + 64],
            platform_id="",
        )
    if provider == "sev_guest":
        if len(blob) < _SNP_SIZE:
            raise AttestationError(f"SNP report of {len(blob)} bytes is too short")
        policy = struct.unpack_from("<Q", blob, _SNP_POLICY)[0]
        return Claims(
            tee="sev-snp",
            mrenclave=blob[_SNP_MEASUREMENT : _SNP_MEASUREMENT + 48].hex(),
            mrsigner="",
            isv_prod_id=0,
            isv_svn=struct.unpack_from("<I", blob, 4)[0],
            debug=bool(policy & _SNP_POLICY_DEBUG),
            tcb_status="unverified",
            report_data=blob[_SNP_REPORT_DATA : _SNP_REPORT_DATA + 64],
            platform_id="",
        )
    raise AttestationError(f"tsm provider {provider!r} is not supported (tdx_guest, sev_guest)")


class TsmVerifier:
    kind = KIND

    def verify(self, evidence: Evidence) -> Claims:
        claims = parse_claims(evidence)
        raise AttestationError(
            f"{claims.tee} evidence parsed, but vendor certificate chain verification is not "
            "implemented yet, so it cannot be trusted",
            "unverified-vendor-chain",
        )
