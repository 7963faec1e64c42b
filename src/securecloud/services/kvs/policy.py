"""Storage policies: how many copies or fragments of an object's ciphertext exist.

    replicate:N      N full replicas; a write needs a majority, a read any one
    ec:K+M           K+M erasure-coded fragments, any K recover the object;
                     a write needs K durable fragments (K+1 when K = M, so two
                     disjoint write sets cannot both succeed)
    hybrid:R+K+M     R full replicas plus K+M fragments (the warm tier of the
                     paper is hybrid:1+6+2); reads try a replica first; a write
                     needs the erasure-coded part's quorum

Objects below the small-object threshold (128 KiB) default to replicate:3,
larger ones to ec:6+3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from securecloud.services.kvs.errors import BadRequest

SMALL_OBJECT_BYTES = 128 * 1024
_PATTERN = re.compile(r"^(?:replicate:(\d+)|ec:(\d+)\+(\d+)|hybrid:(\d+)\+(\d+)\+(\d+))$")


@dataclass(frozen=True)
class Policy:
    replicas: int = 0
    k: int = 0
    m: int = 0

    @property
    def fragments(self) -> int:
        return self.replicas + (self.k + self.m if self.k else 0)

    @property
    def coded(self) -> bool:
        return self.k > 0

    def write_quorum(self) -> tuple[int, int]:
        """(replicas needed, coded fragments needed) for a write to count as durable."""
        if not self.coded:
            return self.replicas // 2 + 1, 0
        return 0, self.k + (1 if self.k == self.m else 0)

    def __str__(self) -> str:
        if not self.coded:
            return f"replicate:{self.replicas}"
        if not self.replicas:
            return f"ec:{self.k}+{self.m}"
        return f"hybrid:{self.replicas}+{self.k}+{self.m}"


def parse_policy(text: str, nodes: int) -> Policy:
    """Parse a policy and check that `nodes` storage nodes can hold its fragments."""
    match = _PATTERN.match(text.strip())
    if not match:
        raise BadRequest(
            f"policy {text!r}: expected replicate:N, ec:K+M or hybrid:R+K+M", reason="bad-policy"
        )
    n, k, m, hr, hk, hm = (int(g) if g else 0 for g in match.groups())
    policy = Policy(replicas=n, k=k, m=m) if not hr else Policy(replicas=hr, k=hk, m=hm)
    if n == 0 and match.group(1) is not None:
        raise BadRequest("policy: replicate needs N ≥ 1", reason="bad-policy")
    if policy.coded and (policy.k < 1 or policy.m < 1 or policy.k + policy.m > 256):
        raise BadRequest(f"policy {text}: need K ≥ 1, M ≥ 1, K+M ≤ 256", reason="bad-policy")
    if policy.fragments > nodes:
        raise BadRequest(
            f"policy {text} places {policy.fragments} fragments but there are {nodes} storage "
            "nodes (each fragment must be on a different node)",
            reason="bad-policy",
        )
    return policy


def default_policy(size: int, nodes: int) -> Policy:
    if size < SMALL_OBJECT_BYTES or nodes < 9:
        return Policy(replicas=min(3, nodes))
    return Policy(k=6, m=3)
