"""Where CascaDB's objects live: the interface, and the secure KVS behind it.

CascaDB writes three kinds of objects (docs/sql.md): `manifest` (which blocks
hold the checkpointed keys), `wal/<seq>` (one committed transaction each) and
`blk/<n>` (a sorted run of keys). It needs a conditional put (to notice a
second writer) and an atomic batch (a checkpoint swaps blocks and manifest in
one step); the KVS gives both, and its encryption and erasure coding.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

from securecloud.services.kvs.client import KvsClient
from securecloud.services.kvs.errors import KvsError

POLICY = "ec:6+3"


class VersionConflict(Exception):
    """A conditional write found another version: someone else wrote first."""


@dataclass(frozen=True)
class Op:
    key: str
    data: bytes | None  # None: delete
    if_match: int | None = None  # 0: must not exist


class ObjectStore(Protocol):
    def get(self, key: str) -> tuple[bytes, int] | None: ...

    def list(self, prefix: str, start_after: str = "") -> list[str]: ...

    def batch(self, operations: list[Op]) -> None: ...


class KvsObjects:
    """A bucket of the secure KVS, reached over HTTPS with a tenant key."""

    def __init__(self, client: KvsClient, bucket: str, policy: str | None = POLICY):
        self.client, self.bucket, self.policy = client, bucket, policy

    def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            return self.client.get_versioned(self.bucket, key)
        except KvsError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        names: list[str] = []
        while True:
            found = self.client.list(self.bucket, prefix, start_after, limit=10000)
            names += [entry["key"] for entry in found]
            if len(found) < 10000:
                return names
            start_after = names[-1]

    def batch(self, operations: list[Op]) -> None:
        if len(operations) == 1 and operations[0].data is not None:
            self._put(operations[0])  # a commit's log record: the body as it is, no JSON
            return
        encoded = []
        for op in operations:
            entry: dict = {"op": "delete" if op.data is None else "put", "key": op.key}
            if op.data is not None:
                entry["data"] = op.data
                if self.policy:
                    entry["policy"] = self.policy
            if op.if_match is not None:
                entry["if_match"] = op.if_match
            encoded.append(entry)
        with _conflicts():
            self.client.batch(self.bucket, encoded)

    def _put(self, op: Op) -> None:
        with _conflicts():
            self.client.put(self.bucket, op.key, op.data, self.policy, op.if_match)


@contextlib.contextmanager
def _conflicts():
    """The KVS's 412 (a conditional write lost) as VersionConflict."""
    try:
        yield
    except KvsError as exc:
        if exc.status == 412:
            raise VersionConflict(str(exc)) from exc
        raise
