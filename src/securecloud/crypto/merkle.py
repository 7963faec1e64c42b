"""Merkle trees as in RFC 6962 / RFC 9162 (Certificate Transparency).

Hashes are SHA-256. A leaf hash is H(0x00 || data), an interior node is
H(0x01 || left || right); the different prefixes stop a leaf being passed off
as a node (second-preimage attack). The tree over n leaves splits at k, the
largest power of two below n, so proofs are those of RFC 9162 §2.1 and verify
with any conforming implementation. The root of the empty tree is H("").

Proofs are lists of 32-byte hashes, ordered from the leaf upwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from securecloud.crypto.errors import ProofError

HASH_SIZE = 32


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An immutable RFC 6962 tree over leaf hashes, with proofs for any prefix size."""

    def __init__(self, leaf_hashes: Sequence[bytes]):
        for h in leaf_hashes:
            if len(h) != HASH_SIZE:
                raise ValueError("leaf hashes must be 32 bytes")
        # levels[j][i] is the root of the complete subtree of 2**j leaves starting at i * 2**j.
        self._ragged: dict[tuple[int, int], bytes] = {}  # roots of incomplete right subtrees
        self._levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(self._levels[-1]) > 1:
            below = self._levels[-1]
            self._levels.append(
                [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        return cls([leaf_hash(leaf) for leaf in leaves])

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n & (n - 1) == 0 and lo % n == 0:
            return self._levels[n.bit_length() - 1][lo // n]
        cached = self._ragged.get((lo, hi))
        if cached is None:  # proofs of many leaves share these: compute each once
            k = _largest_power_of_two_below(n)
            cached = self._ragged[(lo, hi)] = node_hash(
                self._mth(lo, lo + k), self._mth(lo + k, hi)
            )
        return cached

    def root(self, size: int | None = None) -> bytes:
        """Root of the first `size` leaves (all by default)."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._mth(0, size)

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} outside 0..{self.size}")

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf `index` in the tree of the first `size` leaves."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} outside 0..{size - 1}")
        proof: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if index < lo + k:
                proof.append(self._mth(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._mth(lo, lo + k))
                lo = lo + k
        proof.reverse()
        return proof

    def all_inclusion_proofs(self) -> list[tuple[bytes, ...]]:
        """The audit path of every leaf of the whole tree, in one walk from the root
        (each subtree root is computed once, not once per leaf)."""
        if self.size == 0:
            return []
        proofs: list[tuple[bytes, ...]] = [()] * self.size
        stack = [(0, self.size, ())]  # (lo, hi, siblings from the top down)
        while stack:
            lo, hi, above = stack.pop()
            if hi - lo == 1:
                proofs[lo] = above[::-1]
                continue
            k = _largest_power_of_two_below(hi - lo)
            stack.append((lo, lo + k, (*above, self._mth(lo + k, hi))))
            stack.append((lo + k, hi, (*above, self._mth(lo, lo + k))))
        return proofs

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the tree of `old_size` leaves is a prefix of the one of `new_size`."""
        new_size = self.size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} outside 0..{new_size}")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        lo, hi, m, whole = 0, new_size, old_size, True
        while m != hi:
            k = _largest_power_of_two_below(hi - lo)
            if m - lo <= k:
                proof.append(self._mth(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._mth(lo, lo + k))
                lo, whole = lo + k, False
        if not whole:
            proof.append(self._mth(lo, hi))
        proof.reverse()
        return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash `leaf` is at `index` in the tree of `size` leaves with `root`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} outside a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if r != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree `old_root` of `old_size` is a prefix of `new_root` of `new_size`."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} larger than new size {new_size}")
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError("proof must be empty for equal sizes or an empty old tree")
        if old_size == new_size and old_root != new_root:
            raise ProofError("equal sizes but different roots")
        return
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise ProofError("consistency proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root or sr != new_root:
        raise ProofError("consistency proof does not lead to both roots")
