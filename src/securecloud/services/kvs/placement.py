"""Which storage node holds which fragment: rendezvous (highest-random-weight) hashing.

Each node gets a score per object, SHA-256(object id | node name); the nodes
in descending score order hold fragments 0, 1, 2, … So every fragment of an
object is on a different node, placement needs no table, and adding or
removing a node moves only the fragments whose top-ranked nodes changed
(about 1/N of them). Object ids are keyed hashes: node names and scores
reveal nothing about object names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def ranked_nodes(object_id: str, nodes: Sequence[str]) -> list[str]:
    def score(node: str) -> bytes:
        return hashlib.sha256(f"{object_id}|{node}".encode()).digest()

    return sorted(nodes, key=score, reverse=True)


def place(object_id: str, nodes: Sequence[str], fragments: int) -> list[str]:
    """The node of each fragment index (fragments ≤ nodes, checked by the policy)."""
    return ranked_nodes(object_id, nodes)[:fragments]
