"""The FragmentStore interface: where the gateway keeps opaque fragments.

A store holds bytes under fragment ids (hex strings); it never sees names or
plaintext. `put` returns only once the fragment is durable. Backends:
`packstore.PackStore` (a local directory), `node.HttpFragmentStore` (a storage
node process over HTTP), `s3store.S3FragmentStore` (an S3-compatible store).
"""

from __future__ import annotations

import re
from typing import Protocol

FRAGMENT_ID = re.compile(r"^[0-9a-f]{8,128}$")


class FragmentStore(Protocol):
    name: str

    def put(self, fragment_id: str, data: bytes) -> None: ...

    def get(self, fragment_id: str) -> bytes | None: ...

    def delete(self, fragment_id: str) -> None: ...

    def list(self, after: str = "", limit: int = 1000) -> list[str]: ...

    def close(self) -> None: ...
