"""The gateway's storage logic: versioned, quorum-written, verified, repaired.

Write: take the object's lock, assign version = current + 1, encrypt, encode,
place fragment i on the i-th ranked node, put all fragments in parallel. If
fewer than the policy's write quorum are durable, delete what was written and
answer 503: the index was not touched, so nothing is visible. Otherwise commit
the new version to the index (durable), then delete the previous version's
fragments.

Read: the version comes from the index; fragments are fetched (replicas
first, then the K data shares, then parity), each checked by its MAC and its
identity (object, version, index), so a node that corrupts, substitutes or
replays an older fragment is never served. Missing or invalid fragments are
rewritten from what was read (read repair).

Delete: a tombstone version (empty, replicated) is written, the index entry
removed, the old fragments deleted.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from prometheus_client import Counter

from securecloud.services.kvs.codec import (
    Fragment,
    KvsKeys,
    ObjectMeta,
    decrypt_object,
    encrypt_object,
    make_fragments,
    open_meta,
    reassemble,
    seal_meta,
)
from securecloud.services.kvs.coder import ErasureCoder
from securecloud.services.kvs.errors import (
    BadRequest,
    FragmentInvalid,
    KvsError,
    NotFound,
    PreconditionFailed,
    QuorumLost,
)
from securecloud.services.kvs.fragments import FragmentStore
from securecloud.services.kvs.index import Index
from securecloud.services.kvs.packstore import PackStore
from securecloud.services.kvs.placement import place
from securecloud.services.kvs.policy import Policy, default_policy, parse_policy

FRAGMENT_EVENTS = Counter("securecloud_kvs_fragments_total", "Fragment events", ["event"])
MAX_KEY_BYTES = 1024
# names the native API and the operations endpoints use, and the multipart staging bucket
RESERVED_BUCKETS = {
    "v1",
    "v1-admin",
    "v1-batch",
    "healthz",
    "metrics",
    "docs",
    "redoc",
    "securecloud-mpu",
}


@dataclass(frozen=True)
class BatchOp:
    key: str
    data: bytes = b""
    delete: bool = False
    policy: str | None = None
    if_match: int | None = None
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class FragmentHealth:
    index: int
    node: str
    state: str  # ok, missing, invalid, unreachable


def check_name(bucket: str, key: str | None = None) -> None:
    if (
        not (3 <= len(bucket) <= 63)
        or not all(c.islower() or c.isdigit() or c in "-." for c in bucket)
        or bucket[0] in "-."
        or bucket[-1] in "-."
    ):
        raise BadRequest(
            f"bucket {bucket!r}: 3-63 lowercase letters, digits, '-' or '.'", reason="bad-bucket"
        )
    if key is not None and (not key or len(key.encode()) > MAX_KEY_BYTES):
        raise BadRequest(f"key: must be 1..{MAX_KEY_BYTES} bytes of UTF-8", reason="bad-key")


class Gateway:
    def __init__(
        self,
        keys: KvsKeys,
        stores: Sequence[FragmentStore],
        index: Index,
        coder: ErasureCoder,
        threads: int = 32,
    ):
        self.keys = keys
        self.stores = {s.name: s for s in stores}
        self.nodes = [s.name for s in stores]
        self.index = index
        self.coder = coder
        # every fragment is on this machine's disk (the embedded default): reads never wait
        # on a network
        self.local_reads = all(isinstance(s, PackStore) for s in stores)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kvs-io")
        # Old versions are deleted in the background by their own thread, which hands the
        # fragment deletes to the I/O pool. Were retirements queued on the I/O pool itself,
        # a batch replacing more objects than it has threads would fill every thread with a
        # task waiting on work queued behind it, and no write would ever finish again.
        self._retirer = ThreadPoolExecutor(1, thread_name_prefix="kvs-retire")
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()

    def _lock(self, object_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks[object_id]

    # -- buckets --------------------------------------------------------------
    def create_bucket(self, bucket: str, internal: bool = False) -> bool:
        check_name(bucket)
        if bucket in RESERVED_BUCKETS and not internal:
            raise BadRequest(f"bucket {bucket!r} is a reserved name", reason="bad-bucket")
        return self.index.create_bucket(bucket)

    def _bucket(self, bucket: str) -> None:
        check_name(bucket)
        if bucket not in self.index.buckets:
            raise NotFound(f"no bucket {bucket!r}", reason="no-such-bucket")

    # -- fragments ------------------------------------------------------------
    def _write_all(self, objects: list[tuple[str, int, list[Fragment]]]) -> list[list[int]]:
        """Put every fragment of every (object id, version, fragments) on its node and
        return, per object, the indices that are durable. A node that takes many at once
        (`put_many`: a pack store) gets them in one call, so that they share its fsyncs;
        for other nodes every fragment is its own request, all in parallel."""
        by_node: dict[str, list[tuple[int, int, str, Fragment]]] = defaultdict(list)
        for n, (object_id, version, fragments) in enumerate(objects):
            targets = place(object_id, self.nodes, len(fragments))
            for i, fragment in enumerate(fragments):
                fid = self.keys.fragment_id(object_id, version, i)
                by_node[targets[i]].append((n, i, fid, fragment))
        tasks = []
        for node, puts in by_node.items():
            if hasattr(self.stores[node], "put_many"):
                tasks.append((node, puts))
            else:
                tasks += [(node, [put]) for put in puts]

        def put(task) -> bool:
            node, puts = task
            try:
                blobs = [(fid, fragment.encode(self.keys)) for _, _, fid, fragment in puts]
                if len(blobs) == 1:
                    self.stores[node].put(*blobs[0])
                else:
                    self.stores[node].put_many(blobs)
                return True
            except Exception:  # an unreachable or failing node: counted against the quorum
                FRAGMENT_EVENTS.labels("write-failed").inc(len(puts))
                return False

        durable: list[list[int]] = [[] for _ in objects]
        for (_, puts), ok in zip(tasks, self._pool.map(put, tasks), strict=True):
            if ok:
                for n, i, _, _ in puts:
                    durable[n].append(i)
        return [sorted(indices) for indices in durable]

    def _delete_fragments(self, object_id: str, version: int, count: int) -> None:
        targets = place(object_id, self.nodes, count)

        def delete(i: int) -> None:
            try:
                self.stores[targets[i]].delete(self.keys.fragment_id(object_id, version, i))
            except Exception:  # left behind: scrub removes fragments of old versions
                FRAGMENT_EVENTS.labels("delete-failed").inc()

        list(self._pool.map(delete, range(count)))

    def _fetch(self, object_id: str, version: int, index: int, node: str) -> Fragment | str:
        """The verified fragment, or why not: missing, invalid, unreachable."""
        try:
            blob = self.stores[node].get(self.keys.fragment_id(object_id, version, index))
        except Exception:
            return "unreachable"
        if blob is None:
            return "missing"
        try:
            return Fragment.decode(self.keys, blob, object_id, version, index)
        except FragmentInvalid:
            FRAGMENT_EVENTS.labels("invalid").inc()
            return "invalid"

    def _read_fragments(self, object_id: str, meta: ObjectMeta) -> tuple[list[Fragment], list[int]]:
        """Enough verified fragments to rebuild the ciphertext, and the indices seen bad."""
        policy = parse_policy(meta.policy, len(self.nodes))
        targets = place(object_id, self.nodes, policy.fragments)
        bad: list[int] = []
        for i in range(policy.replicas):
            got = self._fetch(object_id, meta.version, i, targets[i])
            if isinstance(got, Fragment):
                return [got], bad
            bad.append(i)
        if not policy.coded:
            raise QuorumLost(f"{meta.bucket}/{meta.key}: no replica readable", reason="unreadable")
        coded = list(range(policy.replicas, policy.fragments))
        found: list[Fragment] = []
        first, rest = coded[: policy.k], coded[policy.k :]
        for batch in (first, rest):
            results = self._pool.map(
                lambda i: (i, self._fetch(object_id, meta.version, i, targets[i])), batch
            )
            for i, got in results:
                if isinstance(got, Fragment):
                    found.append(got)
                else:
                    bad.append(i)
            if len(found) >= policy.k:
                return found, bad
        raise QuorumLost(
            f"{meta.bucket}/{meta.key}: only {len(found)} of {policy.k} needed fragments readable",
            reason="unreadable",
        )

    def _repair(
        self,
        object_id: str,
        meta: ObjectMeta,
        ciphertext: bytes,
        sealed_meta: bytes,
        indices: list[int],
    ) -> None:
        policy = parse_policy(meta.policy, len(self.nodes))
        fragments = make_fragments(
            self.coder, policy, object_id, meta.version, ciphertext, sealed_meta
        )
        targets = place(object_id, self.nodes, len(fragments))
        for i in indices:
            try:
                self.stores[targets[i]].put(
                    self.keys.fragment_id(object_id, meta.version, i),
                    fragments[i].encode(self.keys),
                )
                FRAGMENT_EVENTS.labels("repaired").inc()
            except Exception:
                FRAGMENT_EVENTS.labels("repair-failed").inc()

    # -- objects ---------------------------------------------------------------
    def _store_versions(self, versions: list[tuple[str, ObjectMeta, Policy, bytes]]) -> None:
        """Write (object id, meta, policy, ciphertext) versions; unless every one reaches its
        write quorum, delete what was written of all of them and raise QuorumLost."""
        made = [
            (
                object_id,
                meta.version,
                make_fragments(
                    self.coder,
                    policy,
                    object_id,
                    meta.version,
                    ciphertext,
                    seal_meta(self.keys, object_id, meta),
                ),
            )
            for object_id, meta, policy, ciphertext in versions
        ]
        short = []
        for (_, meta, policy, _), durable in zip(versions, self._write_all(made), strict=True):
            need_replicas, need_coded = policy.write_quorum()
            replicas = sum(1 for i in durable if i < policy.replicas)
            if replicas < need_replicas or len(durable) - replicas < need_coded:
                short.append(
                    f"{meta.bucket}/{meta.key}: only {len(durable)} of {policy.fragments} "
                    f"fragments stored; {policy} needs {need_replicas or need_coded} durable"
                )
        if short:
            for object_id, version, fragments in made:
                self._delete_fragments(object_id, version, len(fragments))
            raise QuorumLost(f"{'; '.join(short[:3])}: nothing was written")

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        policy: str | None = None,
        if_match: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> ObjectMeta:
        self._bucket(bucket)
        check_name(bucket, key)
        chosen = (
            parse_policy(policy, len(self.nodes))
            if policy
            else default_policy(len(data), len(self.nodes))
        )
        object_id = self.keys.object_id(bucket, key)
        with self._lock(object_id):
            current = self.index.get(bucket, key)
            current_version = current.version if current else 0
            if if_match is not None and if_match != current_version:
                raise PreconditionFailed(
                    f"{bucket}/{key} is at version {current_version}, not {if_match}"
                )
            # after a delete, versions continue above the tombstone's
            version = (
                current_version + 1
                if current
                else (self.index.tombstones.get((bucket, key), 0) + 1)
            )
            meta, ciphertext = encrypt_object(
                self.keys, bucket, key, version, data, chosen, content_type
            )
            self._store_versions([(object_id, meta, chosen, ciphertext)])
            self.index.put(meta)
            if current is not None:
                self._retire(object_id, current)
        return meta

    def _retire(self, object_id: str, old: ObjectMeta) -> None:
        count = parse_policy(old.policy, len(self.nodes)).fragments
        self._retirer.submit(self._delete_fragments, object_id, old.version, count)

    def head(self, bucket: str, key: str) -> ObjectMeta:
        self._bucket(bucket)
        check_name(bucket, key)
        meta = self.index.get(bucket, key)
        if meta is None:
            raise NotFound(f"no object {bucket}/{key}", reason="no-such-key")
        return meta

    def get(self, bucket: str, key: str) -> tuple[ObjectMeta, bytearray]:
        """The object's current version; the data is the buffer it was decrypted into."""
        meta = self.head(bucket, key)
        object_id = self.keys.object_id(bucket, key)
        fragments, bad = self._read_fragments(object_id, meta)
        ciphertext = reassemble(self.coder, fragments)
        data = decrypt_object(self.keys, meta, ciphertext)
        if bad:
            self._repair(object_id, meta, ciphertext, fragments[0].meta, bad)
        return meta, data

    def delete(self, bucket: str, key: str) -> ObjectMeta:
        meta = self.head(bucket, key)
        object_id = self.keys.object_id(bucket, key)
        with self._lock(object_id):
            tombstone = replace(
                meta,
                version=meta.version + 1,
                size=0,
                deleted=True,
                policy=str(Policy(replicas=min(3, len(self.nodes)))),
            )
            self._store_versions(
                [(object_id, tombstone, Policy(replicas=min(3, len(self.nodes))), b"")]
            )
            self.index.delete(tombstone)
            self._retire(object_id, meta)
        return tombstone

    def batch(self, bucket: str, operations: list[BatchOp]) -> list[ObjectMeta]:
        """Puts and deletes that become visible together or not at all.

        Every fragment of every operation is written first; only then is one
        index record committed. A failure (or a crash) before that record is
        durable leaves nothing visible; the fragments written so far belong to
        versions nothing refers to.
        """
        self._bucket(bucket)
        if not operations or len(operations) > 1000:
            raise BadRequest("a batch holds 1..1000 operations", reason="bad-batch")
        keys = [op.key for op in operations]
        if len(set(keys)) != len(keys):
            raise BadRequest("a batch may name each key once", reason="bad-batch")
        for op in operations:
            check_name(bucket, op.key)
        ids = {op.key: self.keys.object_id(bucket, op.key) for op in operations}
        locks = [self._lock(ids[k]) for k in sorted(keys, key=lambda k: ids[k])]
        for lock in locks:
            lock.acquire()
        try:
            return self._batch_locked(bucket, operations, ids)
        finally:
            for lock in reversed(locks):
                lock.release()

    def _batch_locked(self, bucket, operations, ids) -> list[ObjectMeta]:
        plans = []
        for op in operations:
            current = self.index.get(bucket, op.key)
            version_now = current.version if current else 0
            if op.if_match is not None and op.if_match != version_now:
                raise PreconditionFailed(
                    f"{bucket}/{op.key} is at version {version_now}, not {op.if_match}"
                )
            version = (
                version_now + 1 if current else (self.index.tombstones.get((bucket, op.key), 0) + 1)
            )
            if op.delete:
                if current is None:
                    raise NotFound(f"no object {bucket}/{op.key}", reason="no-such-key")
                policy = Policy(replicas=min(3, len(self.nodes)))
                meta = replace(current, version=version, size=0, deleted=True, policy=str(policy))
                plans.append((op, current, meta, policy, b""))
                continue
            policy = (
                parse_policy(op.policy, len(self.nodes))
                if op.policy
                else default_policy(len(op.data), len(self.nodes))
            )
            meta, ciphertext = encrypt_object(
                self.keys, bucket, op.key, version, op.data, policy, op.content_type
            )
            plans.append((op, current, meta, policy, ciphertext))
        # every fragment of every operation at once: puts to one node share its fsyncs
        self._store_versions([(ids[op.key], m, policy, c) for op, _, m, policy, c in plans])
        self.index.commit_batch(
            [m for op, _, m, _, _ in plans if not op.delete],
            [m for op, _, m, _, _ in plans if op.delete],
        )
        for op, current, _, _, _ in plans:
            if current is not None:
                self._retire(ids[op.key], current)
        return [meta for _, _, meta, _, _ in plans]

    def list(
        self,
        bucket: str,
        prefix: str = "",
        start_after: str = "",
        end: str | None = None,
        limit: int = 1000,
    ) -> list[ObjectMeta]:
        self._bucket(bucket)
        return list(self.index.scan(bucket, prefix, start_after, end, limit))

    def set_policy(self, bucket: str, key: str, policy_text: str) -> ObjectMeta:
        """Re-encode the object's ciphertext under another policy, without decrypting it."""
        policy = parse_policy(policy_text, len(self.nodes))
        meta = self.head(bucket, key)
        object_id = self.keys.object_id(bucket, key)
        with self._lock(object_id):
            fragments, _ = self._read_fragments(object_id, meta)
            ciphertext = reassemble(self.coder, fragments)
            moved = replace(meta, version=meta.version + 1, policy=str(policy))
            self._store_versions([(object_id, moved, policy, ciphertext)])
            self.index.put(moved)
            self._retire(object_id, meta)
        return moved

    def _check_all(self, object_id: str, meta: ObjectMeta) -> tuple[list[Fragment], list[int]]:
        policy = parse_policy(meta.policy, len(self.nodes))
        targets = place(object_id, self.nodes, policy.fragments)
        results = list(
            self._pool.map(
                lambda i: (i, self._fetch(object_id, meta.version, i, targets[i])),
                range(policy.fragments),
            )
        )
        valid = [got for _, got in results if isinstance(got, Fragment)]
        return valid, [i for i, got in results if not isinstance(got, Fragment)]

    def scrub(self, sample: float = 1.0) -> dict:
        """Check every fragment of (a random `sample` of) the objects; rewrite the missing
        or invalid ones. A node replaced by an empty one is refilled this way."""
        checked = fragments = repaired = 0
        unreadable: list[str] = []
        for bucket in sorted(self.index.buckets):
            for meta in list(self.index.buckets[bucket].values()):
                if sample < 1.0 and random.random() >= sample:
                    continue
                object_id = self.keys.object_id(bucket, meta.key)
                with self._lock(object_id):
                    current = self.index.get(bucket, meta.key)
                    if current is None:
                        continue
                    valid, bad = self._check_all(object_id, current)
                    checked += 1
                    fragments += len(valid) + len(bad)
                    if not bad:
                        continue
                    try:
                        ciphertext = reassemble(self.coder, valid)
                    except KvsError:
                        unreadable.append(f"{bucket}/{meta.key}")
                        continue
                    self._repair(object_id, current, ciphertext, valid[0].meta, bad)
                    repaired += len(bad)
        return {
            "objects": checked,
            "fragments": fragments,
            "repaired": repaired,
            "unreadable": unreadable,
        }

    def rebuild_index(self) -> dict:
        """Rebuild the index from the sealed metadata in the fragments on the nodes: for each
        object, its highest version among fragments that verify (a tombstone: deleted).
        Run it while no writes arrive: it replaces the index whole."""
        latest: dict[str, ObjectMeta] = {}
        scanned = 0
        for store in self.stores.values():
            after = ""
            while True:
                try:
                    ids = store.list(after, 1000)
                except Exception:  # an unreachable node: the others carry copies
                    break
                if not ids:
                    break
                for fid in ids:
                    scanned += 1
                    try:
                        fragment = Fragment.decode_any(self.keys, store.get(fid) or b"")
                    except FragmentInvalid:
                        continue
                    if fid != self.keys.fragment_id(
                        fragment.object_id, fragment.version, fragment.index
                    ):
                        continue  # stored under another id: substituted
                    meta = open_meta(self.keys, fragment.object_id, fragment.version, fragment.meta)
                    known = latest.get(fragment.object_id)
                    if known is None or meta.version > known.version:
                        latest[fragment.object_id] = meta
                after = ids[-1]
        live = [m for m in latest.values() if not m.deleted]
        gone = [m for m in latest.values() if m.deleted]
        buckets = set(self.index.buckets) | {m.bucket for m in latest.values()}
        self.index.replace_all(buckets, live, gone)
        return {"fragments_scanned": scanned, "objects": len(live), "deleted": len(gone)}

    def stat(self, bucket: str, key: str) -> tuple[ObjectMeta, list[FragmentHealth]]:
        meta = self.head(bucket, key)
        object_id = self.keys.object_id(bucket, key)
        policy = parse_policy(meta.policy, len(self.nodes))
        targets = place(object_id, self.nodes, policy.fragments)

        def check(i: int) -> FragmentHealth:
            got = self._fetch(object_id, meta.version, i, targets[i])
            return FragmentHealth(i, targets[i], "ok" if isinstance(got, Fragment) else got)

        return meta, list(self._pool.map(check, range(policy.fragments)))

    def close(self) -> None:
        self._retirer.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.index.close()
        for store in self.stores.values():
            store.close()


__all__ = ["BatchOp", "FragmentHealth", "Gateway", "KvsError", "check_name"]
