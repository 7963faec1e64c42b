"""The two interfaces every TEE backend implements.

An `Attester` runs next to the attested code and turns 64 bytes of report data
into evidence; a `Verifier` runs at the relying party (CAS) and turns evidence
into claims or raises AttestationError. A new TEE is a new module with one of
each, nothing else changes.
"""

from __future__ import annotations

from typing import Protocol

from securecloud.runtime.evidence import Claims, Evidence


class Attester(Protocol):
    kind: str

    def evidence(self, report_data: bytes) -> Evidence: ...


class Verifier(Protocol):
    kind: str

    def verify(self, evidence: Evidence) -> Claims: ...
