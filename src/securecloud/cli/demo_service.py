"""The attested service the demo launches: it reports what CAS released to it.

It never prints a secret itself, only that it arrived (its length and a short
hash), as a real service would log.
"""

import hashlib
import os
from pathlib import Path

from securecloud.runtime.manifest import builtin_service

MANIFEST = builtin_service("demo-echo", "securecloud.cli.demo_service:main", heap_mb=16)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def main(argv: list[str]) -> int:
    print(f"  [service] running after attestation, pid {os.getpid()}, arguments {argv}")
    print(f"  [service] GREETING={os.environ.get('GREETING', '<missing>')}")
    token = os.environ.get("API_TOKEN", "")
    digest = _digest(token.encode())
    print(f"  [service] API_TOKEN received: {len(token)} characters (sha256 {digest}…)")
    for name in ("token.txt", "tls/service.crt", "tls/service.key"):
        path = Path(name)
        if path.exists():
            data = path.read_bytes()
            print(f"  [service] injected file {name}: {len(data)} bytes (sha256 {_digest(data)}…)")
        else:
            print(f"  [service] injected file {name}: missing")
    return 0 if token else 1
