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


_LEAF_PREFIX = hashlib.sha256(b"\x00")


def leaf_hashes(records, record_size: int, skip: int = 0) -> list[bytes]:
    """The leaf hash of every record in `records` (a bytes-like of records back to
    back, `record_size` bytes each, whose leaf data is all but the first `skip` bytes):
    the hashed 0x00 prefix is copied for each, no concatenation (10 % cheaper a leaf)."""
    if len(records) % record_size:
        raise ValueError("records are cut short")
    view = memoryview(records)
    copy, out = _LEAF_PREFIX.copy, []
    append = out.append
    for start in range(skip, len(view), record_size):
        h = copy()
        h.update(view[start : start - skip + record_size])
        append(h.digest())
    return out


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _parents(level: list[bytes]) -> list[bytes]:
    """The interior nodes over pairs of `level` (an odd last node has no parent here);
    hashlib bound locally: this loop is most of the cost of building a tree."""
    sha256 = hashlib.sha256
    return [
        sha256(b"\x01" + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=False)
    ]


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 root, level by level without keeping the levels: a lone last node
    moves up unchanged, which gives the same root as splitting at powers of two."""
    level = list(leaf_hashes)
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        parents = _parents(level)
        if len(level) % 2:
            parents.append(level[-1])
        level = parents
    return level[0]


def chunked_root(hashes: bytes, per_chunk: int) -> bytes:
    """The RFC 6962 root over `hashes` (32-byte hashes back to back) taken `per_chunk`
    at a time: leaf i of the tree is the data hashes[i * per_chunk : (i + 1) *
    per_chunk] concatenated (the last chunk may be shorter).

    Commits to every hash and its position as the plain root does, for one SHA-256 call
    per chunk instead of one per hash (Python pays about 0.45 us a call whatever the
    size). One hash's inclusion is shown by the other hashes of its chunk and the
    chunk's audit path (`MerkleTree.inclusion_proof` over the chunks)."""
    if len(hashes) % HASH_SIZE:
        raise ValueError("hashes must be a whole number of 32-byte hashes")
    if per_chunk < 1:
        raise ValueError("per_chunk must be at least 1")
    step = per_chunk * HASH_SIZE
    return merkle_root([leaf_hash(hashes[i : i + step]) for i in range(0, len(hashes), step)])


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
            self._levels.append(_parents(self._levels[-1]))

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

    def range_proof(self, lo: int, hi: int) -> list[bytes]:
        """What proves the leaves lo..hi-1 together: the roots of the largest subtrees
        outside the range, left to right (at most about 2 log2 n hashes, where
        separate inclusion proofs would take (hi - lo) log2 n)."""
        if not 0 <= lo < hi <= self.size:
            raise ValueError(f"leaf range {lo}..{hi - 1} outside 0..{self.size - 1}")
        out: list[bytes] = []
        stack = [(0, self.size)]
        while stack:
            a, b = stack.pop()
            if b <= lo or a >= hi:
                out.append(self._mth(a, b))
            elif not (lo <= a and b <= hi):
                k = _largest_power_of_two_below(b - a)
                stack += [(a + k, b), (a, a + k)]  # left first
        return out

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


class RangeProof:
    """Leaves lo..lo+len-1 of a tree of `size` leaves, with the range proof of the
    rest (MerkleTree.range_proof). `root` is what they prove; `inclusion_proof`
    gives the RFC 9162 audit path of any leaf in the range, for verifiers that
    check readings one by one."""

    def __init__(
        self,
        size: int,
        lo: int,
        leaf_hashes: Sequence[bytes],
        proof: Sequence[bytes],
        paths: bool = True,
    ):
        """`paths`: keep every node for inclusion_proof (costs a dict entry per node)."""
        hi = lo + len(leaf_hashes)
        self.paths = paths
        if not 0 <= lo < hi <= size:
            raise ProofError(f"leaf range {lo}..{hi - 1} outside a tree of {size}")
        self.size, self.lo, self.hi = size, lo, hi
        self._known: dict[tuple[int, int], bytes] = {}
        given = iter(proof)
        self.root = self._walk(0, size, leaf_hashes, given)
        if next(given, None) is not None:
            raise ProofError("range proof is too long")

    def _walk(self, a: int, b: int, leaves: Sequence[bytes], given) -> bytes:
        if b <= self.lo or a >= self.hi:
            h = next(given, None)
            if h is None:
                raise ProofError("range proof is too short")
        elif self.lo <= a and b <= self.hi and ((b - a) & (b - a - 1)) == 0:
            h = self._complete(a, b, leaves)
        else:
            k = _largest_power_of_two_below(b - a)
            h = node_hash(self._walk(a, a + k, leaves, given), self._walk(a + k, b, leaves, given))
        self._known[(a, b)] = h
        return h

    def _complete(self, a: int, b: int, leaves: Sequence[bytes]) -> bytes:
        """A complete subtree inside the range, level by level (no recursion)."""
        level = list(leaves[a - self.lo : b - self.lo])
        width = 1
        if self.paths:
            self._known.update({(a + i, a + i + 1): h for i, h in enumerate(level)})
        while len(level) > 1:
            width *= 2
            level = _parents(level)
            if self.paths:
                self._known.update(
                    {(a + i * width, a + (i + 1) * width): h for i, h in enumerate(level)}
                )
        return level[0]

    def inclusion_proof(self, index: int) -> list[bytes]:
        if not self.paths:
            raise ValueError("this range was verified without keeping its paths")
        if not self.lo <= index < self.hi:
            raise ValueError(f"leaf {index} outside the range {self.lo}..{self.hi - 1}")
        proof: list[bytes] = []
        lo, hi = 0, self.size
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if index < lo + k:
                proof.append(self._known[(lo + k, hi)])
                hi = lo + k
            else:
                proof.append(self._known[(lo, lo + k)])
                lo = lo + k
        proof.reverse()
        return proof
