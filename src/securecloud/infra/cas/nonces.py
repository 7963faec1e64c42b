"""Single-use attestation challenges.

A nonce is 32 random bytes, valid once and for `ttl` seconds (5 minutes by
default). It lives only in memory: a CAS restart invalidates outstanding
challenges, which costs a client one retry and never weakens freshness.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

from securecloud.infra.cas.errors import AttestationRefused, CasError


class NonceStore:
    def __init__(self, ttl: float = 300.0, capacity: int = 100_000):
        self.ttl = ttl
        self.capacity = capacity
        self._issued: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def _purge(self, now: float) -> None:
        while self._issued:
            nonce, expiry = next(iter(self._issued.items()))
            if expiry > now - self.ttl:  # keep expired ones a while to say "stale"
                break
            del self._issued[nonce]

    def issue(self) -> bytes:
        now = time.monotonic()
        nonce = os.urandom(32)
        with self._lock:
            self._purge(now)
            if len(self._issued) >= self.capacity:
                raise CasError("too many outstanding challenges", reason="busy", status=503)
            self._issued[nonce] = now + self.ttl
        return nonce

    def consume(self, nonce: bytes) -> None:
        """Accept a nonce once; refuse an unknown, used or expired one."""
        now = time.monotonic()
        with self._lock:
            expiry = self._issued.pop(nonce, None)
        if expiry is None:
            raise AttestationRefused(
                "nonce unknown or already used (replayed evidence?)", reason="nonce-reused"
            )
        if now > expiry:
            raise AttestationRefused(
                f"nonce expired ({self.ttl:.0f} s validity): ask for a new challenge",
                reason="stale-nonce",
            )
