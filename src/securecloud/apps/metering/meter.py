"""The meter's side of the protocol: handshake, sealing reports, checking replies.

A `MeterSession` holds one meter's key, counters and session; it does no I/O,
so the simulator and the tests drive it with plain bytes. The meter never
reuses an invocation counter: the simulator persists a floor above every
counter it may have used before it uses it (see simulator.CounterLease).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from securecloud.apps.metering import frames
from securecloud.crypto import suite1


class MeterProtocolError(Exception):
    pass


@dataclass
class MeterSession:
    meter_id: int
    key: ec.EllipticCurvePrivateKey
    authenticator_key: ec.EllipticCurvePublicKey
    next_invocation: int = 1
    next_report: int = 1
    session_id: bytes | None = None
    keys: suite1.SessionKeys | None = None
    last_command: int = 0
    _static: bytes | None = field(default=None, repr=False)
    _hello: bytes | None = field(default=None, repr=False)
    _data_header: bytes = field(default=b"", repr=False)  # of this session's DATA frames

    @property
    def system_title(self) -> bytes:
        return frames.system_title(self.meter_id)

    def hello(self, meter_time: int) -> bytes:
        unsigned = frames.Hello(
            self.meter_id,
            self.system_title,
            os.urandom(16),
            meter_time,
            self.next_invocation,
            self.next_report,
            bytes(64),
        )
        signature = suite1.sign_raw(self.key, unsigned.signed_part())
        self._hello = frames.Hello(*[*unsigned._fields()[:-1], signature]).encode()
        return self._hello

    def accept(self, accept: frames.Accept) -> None:
        """Check the authenticator's signature over our HELLO; then derive the session."""
        if self._hello is None:
            raise MeterProtocolError("ACCEPT without a HELLO")
        suite1.verify_raw(self.authenticator_key, accept.signed_part(self._hello), accept.signature)
        if self._static is None:
            self._static = suite1.static_secret(self.key, self.authenticator_key)
        self.session_id = accept.session_id
        self.keys = suite1.session_keys(self._static, accept.session_id, self.meter_id)
        self._data_header = frames.data_header(self.meter_id, accept.session_id)
        # After a meter reset the platform may know higher counters than we do.
        self.next_invocation = max(self.next_invocation, accept.last_invocation + 1)
        self._hello = None

    def seal(self, report: bytes) -> tuple[int, bytes]:
        """(invocation counter, DATA frame) for one encoded report (Reading.encode())."""
        if self.keys is None or self.session_id is None:
            raise MeterProtocolError("no session: handshake first")
        invocation = self.next_invocation
        self.next_invocation += 1
        sealed = suite1.encrypt_frame(
            self.keys, self.system_title, invocation, self._data_header, report
        )
        return invocation, frames.Data(self.meter_id, self.session_id, invocation, sealed).encode()

    def check_ack(self, ack: frames.Ack) -> None:
        if self.keys is None or ack.session_id != self.session_id:
            raise MeterProtocolError("acknowledgement for another session")
        suite1.check_ack_tag(self.keys, ack.authenticated_part(), ack.tag)

    def check_command(self, command: frames.Command) -> bool:
        """True when the command is authentic and newer than the last one executed."""
        if self.keys is None or command.session_id != self.session_id:
            return False
        try:
            suite1.check_ack_tag(self.keys, command.authenticated_part(), command.tag)
        except Exception:
            return False
        if command.sequence <= self.last_command:
            return False
        self.last_command = command.sequence
        return True
