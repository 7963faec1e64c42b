"""Which meters an authenticator serves, so that a meter's counters live in one place.

partition = meter id mod P; an authenticator with shard I/N serves the meters
whose partition mod N == I. The aggregators route by partition (to a link or a
JetStream subject), and the authenticator itself refuses frames of meters it
does not serve (NACK "not-owner"): routing is the untrusted side's job, but a
misrouted or deliberately replayed frame must not reach a second set of
counters. The shard comes from the attested command line in the CAS policy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ownership:
    """Which meters one authenticator serves: partition = meter mod `partitions`,
    served when partition mod `shards` == `shard`. The default serves every meter."""

    partitions: int = 1
    shard: int = 0
    shards: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions: {self.partitions} is not a positive count")
        if not 0 <= self.shard < self.shards:
            raise ValueError(f"shard: {self.shard}/{self.shards} is not in 0..{self.shards - 1}")
        if self.shards > self.partitions:
            raise ValueError(f"shard: {self.shards} shards but only {self.partitions} partitions")

    @classmethod
    def parse(cls, partitions: int, shard: str) -> Ownership:
        """`shard` as I/N, e.g. 0/2 (the first of two authenticators)."""
        index, sep, count = shard.partition("/")
        if not sep or not index.isdigit() or not count.isdigit():
            raise ValueError(f"shard: {shard!r} is not I/N, e.g. 0/2")
        return cls(partitions, int(index), int(count))

    def partition_of(self, meter_id: int) -> int:
        return meter_id % self.partitions

    def owns(self, meter_id: int) -> bool:
        return self.partition_of(meter_id) % self.shards == self.shard

    @property
    def owned(self) -> list[int]:
        return [p for p in range(self.partitions) if p % self.shards == self.shard]
