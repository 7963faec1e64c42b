"""Encrypt, then encode: what an object becomes before any storage node sees it.

Keys (all derived from the gateway's master key, which only attested
gateways receive from CAS):
    id key    object id   = HMAC(id key, canonical [bucket, key])[:16]  (hex)
              fragment id = HMAC(id key, object id | version | index)[:20]  (hex)
    wrap key  wraps each object version's random data key
    meta key  seals the object's metadata (names, size, etag, wrapped key)
    mac key   authenticates each fragment
    index key seals the gateway's index records

Object data: the crypto stream recipe (64 KiB AES-256-GCM packages) under a
fresh data key per version, associated data = canonical [bucket, key,
version]. The ciphertext is then replicated and/or erasure-coded. Changing an
object's policy re-encodes the same ciphertext under a new object version
without decrypting it; `data_version` remembers the version it was made at.

Fragment layout::

    "SKF1" | header length (4, big-endian) | header | payload | HMAC-SHA256 (32)
    header = canonical JSON {"o": object id, "v": version, "i": index,
             "t": "r" (replica) | "e" (coded share), "r": R, "k": K, "m": M,
             "n": ciphertext length, "meta": hex of the sealed metadata}
    MAC    = HMAC(mac key, everything before it)

Storage nodes see fragment ids, lengths and ciphertext only. A node that
corrupts, substitutes, or serves an older version of a fragment is caught by
the MAC (the version and index are inside it). Every fragment carries the
sealed metadata, so the gateway's index can be rebuilt from the nodes.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import asdict, dataclass

from securecloud.crypto import (
    CryptoError,
    canonical,
    derive_key,
    mac,
    open_bytes,
    open_sealed,
    seal,
    seal_bytes,
    verify_mac,
)
from securecloud.crypto.mac import MAC_SIZE
from securecloud.services.kvs.coder import ErasureCoder
from securecloud.services.kvs.errors import FragmentInvalid, KvsError
from securecloud.services.kvs.policy import Policy

MAGIC = b"SKF1"


@dataclass(frozen=True)
class KvsKeys:
    id_key: bytes
    wrap_key: bytes
    meta_key: bytes
    mac_key: bytes
    index_key: bytes

    @classmethod
    def from_master(cls, master: bytes) -> KvsKeys:
        def derive(purpose: str) -> bytes:
            return derive_key(master, info=f"securecloud/kvs/{purpose}".encode())

        return cls(
            derive("object-id"),
            derive("wrap"),
            derive("meta"),
            derive("fragment-mac"),
            derive("index"),
        )

    def object_id(self, bucket: str, key: str) -> str:
        return mac(self.id_key, canonical.encode([bucket, key]))[:16].hex()

    def fragment_id(self, object_id: str, version: int, index: int) -> str:
        return mac(self.id_key, f"{object_id}|{version}|{index}".encode())[:20].hex()


@dataclass(frozen=True)
class ObjectMeta:
    """What the index knows of one object version; sealed into every fragment."""

    bucket: str
    key: str
    version: int
    size: int
    etag: str
    policy: str
    wrapped_key: str
    created_ms: int
    content_type: str = "application/octet-stream"
    deleted: bool = False
    data_version: int = 0  # the version whose write produced the ciphertext (its aad)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> ObjectMeta:
        return cls(**doc)


def _object_aad(bucket: str, key: str, version: int) -> bytes:
    return canonical.encode([bucket, key, version])


def encrypt_object(
    keys: KvsKeys,
    bucket: str,
    key: str,
    version: int,
    data: bytes,
    policy: Policy,
    content_type: str,
) -> tuple[ObjectMeta, bytes]:
    data_key = os.urandom(32)
    aad = _object_aad(bucket, key, version)
    ciphertext = seal_bytes(data_key, data, aad)
    wrapped = seal(keys.wrap_key, data_key, aad, key_id=b"kvs-wrap")
    meta = ObjectMeta(
        bucket,
        key,
        version,
        len(data),
        hashlib.md5(data).hexdigest(),
        str(policy),
        wrapped.hex(),
        int(time.time() * 1000),
        content_type,
        data_version=version,
    )
    return meta, ciphertext


def decrypt_object(keys: KvsKeys, meta: ObjectMeta, ciphertext: bytes | memoryview) -> bytearray:
    aad = _object_aad(meta.bucket, meta.key, meta.data_version)
    try:
        data_key = open_sealed(keys.wrap_key, bytes.fromhex(meta.wrapped_key), aad)
        return open_bytes(data_key, ciphertext, aad)
    except CryptoError as exc:
        raise FragmentInvalid(
            f"{meta.bucket}/{meta.key} v{meta.version}: ciphertext does not authenticate"
        ) from exc


def seal_meta(keys: KvsKeys, object_id: str, meta: ObjectMeta) -> bytes:
    return seal(
        keys.meta_key,
        canonical.encode(meta.to_json()),
        f"{object_id}|{meta.version}".encode(),
        key_id=b"kvs-meta",
    )


def open_meta(keys: KvsKeys, object_id: str, version: int, blob: bytes) -> ObjectMeta:
    try:
        doc = canonical.decode(open_sealed(keys.meta_key, blob, f"{object_id}|{version}".encode()))
    except CryptoError as exc:
        raise FragmentInvalid(f"object {object_id} v{version}: metadata altered") from exc
    return ObjectMeta.from_json(doc)


@dataclass(frozen=True)
class Fragment:
    object_id: str
    version: int
    index: int
    kind: str  # "r" replica, "e" coded share
    replicas: int
    k: int
    m: int
    length: int  # ciphertext length
    meta: bytes  # sealed ObjectMeta
    payload: bytes | memoryview  # a view into the fragment it was read from

    def header(self) -> dict:
        return {
            "o": self.object_id,
            "v": self.version,
            "i": self.index,
            "t": self.kind,
            "r": self.replicas,
            "k": self.k,
            "m": self.m,
            "n": self.length,
            "meta": self.meta.hex(),
        }

    def encode(self, keys: KvsKeys) -> bytes:
        header = canonical.encode(self.header())
        body = MAGIC + struct.pack(">I", len(header)) + header + self.payload
        return body + mac(keys.mac_key, body)

    @classmethod
    def decode_any(cls, keys: KvsKeys, blob: bytes) -> Fragment:
        """Verify a fragment's MAC and parse it, whatever it claims to be."""
        if len(blob) < 8 + MAC_SIZE or blob[:4] != MAGIC:
            raise FragmentInvalid("not a fragment")
        body = memoryview(blob)[:-MAC_SIZE]  # views: a fragment can be megabytes
        try:
            verify_mac(keys.mac_key, body, blob[-MAC_SIZE:])
        except CryptoError as exc:
            raise FragmentInvalid("MAC fails (corrupted or forged)") from exc
        (length,) = struct.unpack(">I", body[4:8])
        header = canonical.decode(bytes(body[8 : 8 + length]))
        return cls(
            header["o"],
            header["v"],
            header["i"],
            header["t"],
            header["r"],
            header["k"],
            header["m"],
            header["n"],
            bytes.fromhex(header["meta"]),
            body[8 + length :],
        )

    @classmethod
    def decode(
        cls, keys: KvsKeys, blob: bytes, object_id: str, version: int, index: int
    ) -> Fragment:
        """Verify a fragment and that it is the one asked for (no substitution or replay)."""
        try:
            fragment = cls.decode_any(keys, blob)
        except FragmentInvalid as exc:
            raise FragmentInvalid(f"fragment {object_id}/{version}/{index}: {exc}") from exc
        if (fragment.object_id, fragment.version, fragment.index) != (object_id, version, index):
            got = f"{fragment.object_id}/{fragment.version}/{fragment.index}"
            raise FragmentInvalid(
                f"fragment {object_id}/{version}/{index}: node returned {got} "
                "(substituted or replayed)"
            )
        return fragment


def make_fragments(
    coder: ErasureCoder,
    policy: Policy,
    object_id: str,
    version: int,
    ciphertext: bytes | memoryview,
    meta: bytes,
) -> list[Fragment]:
    """Replicas first (indices 0..R-1), then K+M coded shares."""
    ciphertext = bytes(ciphertext)  # a replica read back is a view; the coders want bytes
    common = (object_id, version)
    out = [
        Fragment(
            *common, i, "r", policy.replicas, policy.k, policy.m, len(ciphertext), meta, ciphertext
        )
        for i in range(policy.replicas)
    ]
    if policy.coded:
        shares = coder.encode(ciphertext, policy.k, policy.m)
        out += [
            Fragment(
                *common,
                policy.replicas + j,
                "e",
                policy.replicas,
                policy.k,
                policy.m,
                len(ciphertext),
                meta,
                share,
            )
            for j, share in enumerate(shares)
        ]
    return out


def reassemble(coder: ErasureCoder, fragments: list[Fragment]) -> bytes | memoryview:
    """The ciphertext from one replica or any K coded shares."""
    for fragment in fragments:
        if fragment.kind == "r":
            return fragment.payload
    if not fragments:
        raise KvsError("no fragment to reassemble from", status=503, reason="quorum-lost")
    first = fragments[0]
    shares = {f.index - first.replicas: f.payload for f in fragments if f.kind == "e"}
    if len(shares) < first.k:
        raise KvsError(
            f"only {len(shares)} of the {first.k} needed fragments are readable",
            status=503,
            reason="quorum-lost",
        )
    return coder.decode(shares, first.k, first.m, first.length)
