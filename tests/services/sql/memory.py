"""An ObjectStore in memory with the KVS's conditional semantics, for engine tests.

test_serve.py runs the same engine on the real KVS, as `securecloud sql serve`.
"""

from __future__ import annotations

from securecloud.services.sql.objects import Op, VersionConflict


class MemoryObjects:
    def __init__(self):
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.batches = 0
        self.fail_next_batch = False

    def get(self, key: str) -> tuple[bytes, int] | None:
        return self.objects.get(key)

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)

    def batch(self, operations: list[Op]) -> None:
        if self.fail_next_batch:  # a crash before the batch reached the store
            self.fail_next_batch = False
            raise ConnectionError("the KVS went away")
        for op in operations:
            current = self.objects.get(op.key)
            if op.if_match is not None and (current[1] if current else 0) != op.if_match:
                raise VersionConflict(op.key)
        for op in operations:
            current = self.objects.get(op.key)
            if op.data is None:
                self.objects.pop(op.key, None)
            else:
                self.objects[op.key] = (op.data, (current[1] if current else 0) + 1)
        self.batches += 1
