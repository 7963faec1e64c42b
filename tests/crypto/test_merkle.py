import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.crypto import (
    MerkleTree,
    ProofError,
    RangeProof,
    chunked_root,
    leaf_hashes,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from securecloud.crypto.merkle import leaf_hash, node_hash


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written the slow recursive way as an independent oracle."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def test_known_rfc6962_vectors():
    # Roots of the CT test tree (certificate-transparency-go merkle test data), leaves 1..8.
    leaves = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ]
    tree = MerkleTree.from_leaves(leaves)
    assert tree.root(1).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert tree.root(2).hex() == "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"
    assert tree.root(3).hex() == "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"
    assert tree.root(8).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=40))
def test_root_matches_reference(leaves):
    assert MerkleTree.from_leaves(leaves).root() == reference_root(leaves)


def test_the_levelwise_root_is_the_rfc6962_root_at_every_size():
    leaves = [i.to_bytes(2, "big") for i in range(130)]
    for n in range(131):
        assert merkle_root([leaf_hash(x) for x in leaves[:n]]) == reference_root(leaves[:n])


def test_the_chunked_root_is_the_rfc6962_root_over_the_chunks_at_every_size():
    hashes = [hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(200)]
    for per_chunk in (1, 3, 96):
        for n in range(201):
            chunks = [b"".join(hashes[i : min(n, i + per_chunk)]) for i in range(0, n, per_chunk)]
            assert chunked_root(b"".join(hashes[:n]), per_chunk) == reference_root(chunks)


def test_the_chunked_root_shows_one_hash_by_its_chunk_and_the_chunk_path():
    hashes = [hashlib.sha256(bytes([i])).digest() for i in range(250)]
    root = chunked_root(b"".join(hashes), 96)
    chunks = [b"".join(hashes[i : i + 96]) for i in range(0, 250, 96)]
    # hash 130 is the 35th of chunk 1: the chunk's hashes and its audit path prove it
    assert chunks[1][34 * 32 : 35 * 32] == hashes[130]
    proof = MerkleTree.from_leaves(chunks).inclusion_proof(1)
    verify_inclusion(leaf_hash(chunks[1]), 1, len(chunks), proof, root)
    swapped = [*hashes[:130], hashes[131], hashes[130], *hashes[132:]]
    assert chunked_root(b"".join(swapped), 96) != root  # the order inside a chunk counts


def test_the_chunked_root_refuses_what_is_not_whole_hashes():
    with pytest.raises(ValueError):
        chunked_root(b"\x00" * 33, 96)
    with pytest.raises(ValueError):
        chunked_root(b"\x00" * 32, 0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.data())
def test_leaf_hashes_of_records_are_each_records_leaf_hash(size, data):
    skip = data.draw(st.integers(0, size - 1))
    records = data.draw(st.lists(st.binary(min_size=size, max_size=size), max_size=20))
    assert leaf_hashes(b"".join(records), size, skip) == [leaf_hash(r[skip:]) for r in records]
    if records and size > 1:  # a record cut short
        with pytest.raises(ValueError):
            leaf_hashes(b"".join(records)[:-1], size, skip)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=4), min_size=1, max_size=33), st.data())
def test_every_inclusion_proof_verifies_and_wrong_ones_do_not(leaves, data):
    tree = MerkleTree.from_leaves(leaves)
    size = data.draw(st.integers(1, len(leaves)))
    index = data.draw(st.integers(0, size - 1))
    proof = tree.inclusion_proof(index, size)
    root = tree.root(size)
    verify_inclusion(leaf_hash(leaves[index]), index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(leaves[index] + b"x"), index, size, proof, root)
    if size > 1:
        other = (index + 1) % size
        if leaves[other] != leaves[index] or proof != tree.inclusion_proof(other, size):
            with pytest.raises(ProofError):
                verify_inclusion(leaf_hash(leaves[index]), other, size, proof, root)
    if proof:
        with pytest.raises(ProofError):
            verify_inclusion(leaf_hash(leaves[index]), index, size, proof[:-1], root)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=4), min_size=1, max_size=33), st.data())
def test_every_consistency_proof_verifies_and_forks_do_not(leaves, data):
    tree = MerkleTree.from_leaves(leaves)
    new = data.draw(st.integers(1, len(leaves)))
    old = data.draw(st.integers(0, new))
    proof = tree.consistency_proof(old, new)
    verify_consistency(old, new, tree.root(old), tree.root(new), proof)
    if 0 < old < new:
        forked = MerkleTree.from_leaves([*leaves[: old - 1], b"forged", *leaves[old:]])
        with pytest.raises(ProofError):
            verify_consistency(old, new, forked.root(old), tree.root(new), proof)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_a_range_proves_its_leaves_and_gives_their_audit_paths(leaves, data):
    tree = MerkleTree.from_leaves(leaves)
    lo = data.draw(st.integers(0, len(leaves) - 1))
    hi = data.draw(st.integers(lo + 1, len(leaves)))
    hashes = [leaf_hash(x) for x in leaves[lo:hi]]
    proof = tree.range_proof(lo, hi)
    assert len(proof) <= 2 * max(1, len(leaves)).bit_length()
    ranged = RangeProof(len(leaves), lo, hashes, proof)
    assert ranged.root == tree.root() == reference_root(leaves)
    for i in range(lo, hi):
        assert ranged.inclusion_proof(i) == tree.inclusion_proof(i)
    changed = list(hashes)
    changed[data.draw(st.integers(0, len(changed) - 1))] = leaf_hash(b"forged")
    if changed != hashes:
        assert RangeProof(len(leaves), lo, changed, proof).root != tree.root()
    if proof:
        with pytest.raises(ProofError, match="too short"):
            RangeProof(len(leaves), lo, hashes, proof[:-1])
    with pytest.raises(ProofError, match="too long"):
        RangeProof(len(leaves), lo, hashes, [*proof, bytes(32)])
