"""The authenticator's work on a batch of frames: decode -> verify -> check -> sign -> store.

Trusted code (it holds the authenticator key and the regulator-registered
signing key). `process` turns uplink frames into replies and a signed batch;
`store` writes the batch to the KVS and only then are the replies released;
if the write fails, every state change of the batch is undone and each frame
gets a NACK "unavailable", so the meter sends it again. Nothing is
acknowledged that is not in the KVS.

Per meter it keeps the highest invocation counter taken (replay protection),
the highest report counter stored, the counters still missing below it and the
last energy register (plausibility). A duplicate is acknowledged (it is
stored) and counted; a gap is recorded as missing until a late report fills
it; an implausible reading is stored in the batch's quarantine with its
reason and acknowledged as QUARANTINED, never silently dropped.

Accepted readings also go to an in-memory table per (day, group) that is
flushed as segments (store.py) when it grows past `flush_bytes`, and then the
counters are checkpointed. After a restart, the state comes from the last
checkpoint plus the batches written after it (replayed into the table).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from securecloud.apps.metering import frames, store
from securecloud.apps.metering.ownership import Ownership
from securecloud.apps.metering.reading import decode_many, implausible_many, register_implausible
from securecloud.apps.metering.registry import Registry
from securecloud.crypto import MerkleTree, sign, suite1
from securecloud.crypto.errors import CryptoError

log = logging.getLogger("securecloud.metering.authenticator")
MAX_CLOCK_OFFSET_S = 300


class Storage(Protocol):
    def put(self, bucket: str, key: str, data: bytes) -> dict: ...
    def get(self, bucket: str, key: str) -> bytes: ...
    def list(
        self, bucket: str, prefix: str = "", start_after: str = "", limit: int = 1000
    ) -> list[dict]: ...


@dataclass(slots=True)
class MeterState:
    last_invocation: int = 0
    last_report: int = 0
    last_energy: int | None = None
    missing: set[int] | None = None
    quarantined_counters: set[int] | None = None  # so a resend is answered QUARANTINED
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    rejected: int = 0

    def to_list(self) -> list:
        return [
            self.last_invocation,
            self.last_report,
            self.last_energy,
            sorted(self.missing or ()),
            sorted(self.quarantined_counters or ()),
            self.accepted,
            self.duplicates,
            self.quarantined,
            self.rejected,
        ]

    @classmethod
    def from_list(cls, v: list) -> MeterState:
        return cls(v[0], v[1], v[2], set(v[3]) or None, set(v[4]) or None, *v[5:9])

    def copy(self) -> MeterState:
        return MeterState(
            self.last_invocation,
            self.last_report,
            self.last_energy,
            set(self.missing) if self.missing else None,
            set(self.quarantined_counters) if self.quarantined_counters else None,
            self.accepted,
            self.duplicates,
            self.quarantined,
            self.rejected,
        )

    @property
    def missing_count(self) -> int:
        return len(self.missing) if self.missing else 0


@dataclass
class Outcome:
    """What one call of `process` produced; replies are released after `store`."""

    replies: list[list[bytes]]
    leaves: list[bytes] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)
    undo: dict[int, MeterState | None] = field(default_factory=dict)
    invocations: dict[int, int] = field(default_factory=dict)  # meter -> highest taken
    # (frame index, the ACK's authenticated fields, keys): tagged once the batch is stored
    pending_acks: list[tuple[int, bytes, suite1.SessionKeys]] = field(default_factory=list)


@dataclass(frozen=True)
class Detached:
    table: dict[tuple, list[bytes]]
    spans: dict[tuple, list[store.Range]]
    seq: int  # every batch up to this one is in `table` or in earlier segments
    state: bytes | None  # checkpoint to write after the segments


def _checked(plains: list[bytes], records: list) -> zip:
    """(counter, clock offset s, energy Wh, implausible_many's reason) of each report,
    all checked in one pass; `records` are the meters' registry records."""
    reports = decode_many(plains)
    return zip(
        reports["counter"].tolist(),
        store.clock_offsets(reports["timestamp"]).tolist(),
        reports["energy"].tolist(),
        implausible_many(reports, [record.supply for record in records]),
        strict=True,
    )


class Authenticator:
    def __init__(
        self,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        signing_key,
        registry: Registry,
        storage: Storage,
        flush_bytes: int = 16 << 20,
        ownership: Ownership | None = None,
    ):
        self.name = name
        self.key = key
        self.signing_key = signing_key
        self.registry = registry
        self.storage = storage
        self.flush_bytes = flush_bytes
        self.ownership = ownership or Ownership()
        self.meters: dict[int, MeterState] = {}
        self.seq = 0  # last batch written
        self.checkpoint_seq = 0  # every batch <= this is in segments
        self.counts: Counter[str] = Counter()
        self.command_seq = 0
        self.commands: dict[int, int] = {}  # meter -> pending load command
        self._statics: dict[int, bytes] = {}
        self._sessions: dict[tuple[int, bytes], suite1.SessionKeys] = {}
        self._table: dict[tuple, list[bytes]] = defaultdict(list)  # (day, group) -> records
        self._spans: dict[tuple, list[store.Range]] = defaultdict(list)  # their batch ranges
        self._roots: dict[int, dict] = {}  # seq -> signed root, until its readings are written
        self._table_bytes = 0

    # -- keys ------------------------------------------------------------------------
    def _session(self, meter_id: int, record, session_id: bytes) -> suite1.SessionKeys:
        keys = self._sessions.get((meter_id, session_id))
        if keys is None:
            static = self._statics.get(meter_id)
            if static is None:
                static = self._statics[meter_id] = suite1.static_secret(self.key, record.verify_key)
            if len(self._sessions) > 200_000:
                self._sessions.clear()
            keys = self._sessions[(meter_id, session_id)] = suite1.session_keys(
                static, session_id, meter_id
            )
        return keys

    # -- processing ------------------------------------------------------------------
    def process(self, batch: list[bytes], now: int | None = None) -> Outcome:
        """Open each frame (decode, check, decrypt), check the values of all its
        reports at once, then take the reports in frame order."""
        now = int(time.time()) if now is None else now
        out = Outcome(replies=[[] for _ in batch])
        opened = []
        for i, frame in enumerate(batch):
            try:
                data = self._open(i, frame, now, out)
            except frames.FrameError as exc:
                self._refuse(out, i, frame, exc.reason)
                continue
            if data is not None:
                opened.append(data)
        if not opened:
            return out
        fields = _checked(
            [plain for *_rest, plain in opened], [record for _i, _m, record, *_r in opened]
        )
        for (i, message, record, keys, state, plain), report in zip(opened, fields, strict=True):
            self._answer(i, message, record, keys, state, plain, report, out)
        return out

    def _refuse(self, out: Outcome, i: int, frame: bytes, reason: str) -> None:
        self.counts[f"rejected:{reason}"] += 1
        meter_id = frames.meter_id_of(frame) or 0
        state = self.meters.get(meter_id)
        if state is not None:
            self._touch(out, meter_id)
            state.rejected += 1
        out.replies[i].append(
            frames.Nack(
                meter_id & 0xFFFFFFFF, frames.invocation_of(frame), frames.NACK_CODES[reason]
            ).encode()
        )

    def _touch(self, out: Outcome, meter_id: int) -> MeterState:
        state = self.meters.get(meter_id)
        if meter_id not in out.undo:
            out.undo[meter_id] = state.copy() if state is not None else None
        if state is None:
            state = self.meters[meter_id] = MeterState()
        return state

    def _open(self, i: int, frame: bytes, now: int, out: Outcome) -> tuple | None:
        """A DATA frame's (i, message, record, keys, state, plaintext), its invocation
        counter taken; None for a HELLO (answered here)."""
        message = frames.decode_uplink(frame)
        if not self.ownership.owns(message.meter_id):
            raise frames.FrameError("not-owner", f"meter {message.meter_id} is another's")
        record = self.registry.get(message.meter_id)
        if record is None:
            raise frames.FrameError("unknown-meter", f"meter {message.meter_id}")
        if record.revoked:
            raise frames.FrameError("revoked-meter", f"meter {message.meter_id}")
        if isinstance(message, frames.Hello):
            self._hello(i, frame, message, record, now, out)
            return None
        keys = self._session(message.meter_id, record, message.session_id)
        state = self.meters.get(message.meter_id)
        if state is not None and message.invocation <= state.last_invocation:
            raise frames.FrameError("replay", f"invocation counter {message.invocation}")
        try:
            plain = suite1.decrypt_frame(
                keys,
                frames.system_title(message.meter_id),
                message.invocation,
                frame[: frames.DATA_HEADER_SIZE],  # = message.header(), already checked
                message.sealed,
            )
        except CryptoError as exc:
            raise frames.FrameError("auth-failed", str(exc)) from exc
        state = self._touch(out, message.meter_id)
        state.last_invocation = message.invocation
        out.invocations[message.meter_id] = message.invocation
        return i, message, record, keys, state, plain

    def _answer(self, i, message, record, keys, state, plain, report, out) -> None:
        """Take an opened report and queue its ACK (and any pending load command)."""
        counter = report[0]
        status = self._take(message.meter_id, state, report, plain, message.invocation, record, out)
        ack = frames.ack_fields(
            message.meter_id, message.session_id, message.invocation, counter, status
        )
        out.pending_acks.append((i, ack, keys))
        command = self.commands.pop(message.meter_id, None)
        if command is not None:
            self.command_seq += 1
            unsigned = frames.Command(
                message.meter_id, message.session_id, self.command_seq, command, bytes(16)
            )
            tag = suite1.ack_tag(keys, unsigned.authenticated_part())
            out.replies[i].append(dataclasses.replace(unsigned, tag=tag).encode())
            self.counts["commands_sent"] += 1

    def _take(self, meter_id, state, report, plain, invocation, record, out) -> int:
        """`report`: (counter, clock offset s, energy Wh, implausible_many's reason)."""
        counter, offset, energy_wh, static_reason = report
        late = state.missing is not None and counter in state.missing
        if counter <= state.last_report and not late:
            state.duplicates += 1
            self.counts["duplicates"] += 1
            if state.quarantined_counters and counter in state.quarantined_counters:
                return frames.QUARANTINED  # stored, but in quarantine: say so again
            return frames.DUPLICATE
        if abs(offset) > MAX_CLOCK_OFFSET_S:
            reason = "clock-offset"
        elif static_reason is not None:
            reason = static_reason
        else:
            previous = (
                None
                if late or state.last_energy is None
                else (state.last_report, state.last_energy)
            )
            reason = register_implausible(counter, energy_wh, record.supply, previous)
        if reason is not None:
            state.quarantined += 1
            self.counts[f"quarantined:{reason}"] += 1
            out.quarantined.append(
                {
                    "meter": meter_id,
                    "invocation": invocation,
                    "counter": counter,
                    "reason": reason,
                    "report": plain.hex(),
                }
            )
            self._advance(state, counter)
            state.quarantined_counters = (state.quarantined_counters or set()) | {counter}
            if late:
                state.missing.discard(counter)
            return frames.QUARANTINED
        if late:
            state.missing.discard(counter)
            if not state.missing:
                state.missing = None
        else:
            self._advance(state, counter)
            state.last_energy = energy_wh
        state.accepted += 1
        self.counts["accepted"] += 1
        out.leaves.append(meter_id.to_bytes(4, "big") + plain)
        return frames.STORED

    def _advance(self, state: MeterState, counter: int) -> None:
        if counter > state.last_report + 1:  # counters start at 1
            gap = range(state.last_report + 1, counter)
            state.missing = (state.missing or set()) | set(gap)
        if counter > state.last_report:
            state.last_report = counter

    def _hello(self, i, frame, hello: frames.Hello, record, now: int, out: Outcome) -> None:
        try:
            suite1.verify_raw(record.verify_key, hello.signed_part(), hello.signature)
        except CryptoError as exc:
            raise frames.FrameError("bad-signature", str(exc)) from exc
        if hello.system_title != frames.system_title(hello.meter_id):
            raise frames.FrameError("malformed", "system title does not match the meter id")
        state = self.meters.get(hello.meter_id) or MeterState()
        unsigned = frames.Accept(
            hello.meter_id,
            os.urandom(8),
            now,
            state.last_invocation,
            state.last_report,
            bytes(64),
        )
        signature = suite1.sign_raw(self.key, unsigned.signed_part(frame))
        out.replies[i].append(dataclasses.replace(unsigned, signature=signature).encode())
        self.counts["handshakes"] += 1

    # -- storing ---------------------------------------------------------------------
    def store(self, out: Outcome, now: float | None = None) -> None:
        """Write the batch; on success release acknowledgements, else undo and NACK."""
        if out.invocations:
            try:
                self._write_batch(out, time.time() if now is None else now)
            except Exception as exc:
                log.warning("batch write failed; frames will be sent again: %s", exc)
                self._undo(out)
                return
        for i, ack, keys in out.pending_acks:
            out.replies[i].insert(0, frames.finish_ack(ack, suite1.ack_tag(keys, ack)))

    def _undo(self, out: Outcome) -> None:
        for meter_id, before in out.undo.items():
            if before is None:
                self.meters.pop(meter_id, None)
            else:
                self.meters[meter_id] = before
        for i, ack, _keys in out.pending_acks:
            meter_id, invocation = frames.ack_identity(ack)
            out.replies[i] = [
                frames.Nack(meter_id, invocation, frames.NACK_CODES["unavailable"]).encode()
            ]
        self.counts["store_failures"] += 1

    def _write_batch(self, out: Outcome, created: float) -> None:
        seq = self.seq + 1
        leaves = store.order_leaves(out.leaves)  # one range per segment
        tree = MerkleTree.from_leaves(leaves)
        header = {
            "authenticator": self.name,
            "seq": seq,
            "size": len(leaves),
            "root": tree.root().hex(),
            "created": int(created),
            "quarantine": out.quarantined,
            "invocations": {str(m): n for m, n in out.invocations.items()},
        }
        header["signature"] = sign(self.signing_key, store.batch_statement(header)).hex()
        self.storage.put(
            store.BUCKET, store.batch_key(self.name, seq), store.encode_batch(header, leaves)
        )
        self.seq = seq
        self._remember(header, tree, leaves)

    def _remember(self, header: dict, tree: MerkleTree, leaves: list[bytes]) -> None:
        """File a stored batch's readings under their (day, group) slots; the leaves
        are in store.order_leaves order, so each slot takes one range of records,
        proved by one range proof."""
        seq = header["seq"]
        self._roots[seq] = store.signed_root(header)
        records = store.encode_records(seq, leaves)
        for slot, lo, hi in store.leaf_slots(leaves):
            chunk = records[lo * store.RECORD_SIZE : hi * store.RECORD_SIZE]
            self._table[slot].append(chunk)  # records back to back: segments join them
            self._table_bytes += len(chunk)
            self._close(slot, seq, lo, hi, tree)

    def _close(self, slot: tuple, seq: int, lo: int, hi: int, tree: MerkleTree) -> None:
        proof = tuple(tree.range_proof(lo, hi))
        self._spans[slot].append(store.Range(seq, lo, hi, proof))
        self._table_bytes += 32 * len(proof)

    @property
    def flush_due(self) -> bool:
        return self._table_bytes >= self.flush_bytes

    def detach(self, checkpoint: bool) -> Detached:
        """Hand the table over for writing and start a new one (cheap: the caller holds
        the processing lock only for this); with `checkpoint`, also the counters as of
        now, to be written once the segments are."""
        detached = Detached(
            dict(self._table),
            dict(self._spans),
            self.seq,
            self._state_doc(self.seq) if checkpoint else None,
        )
        self._table = defaultdict(list)
        self._spans = defaultdict(list)
        self._table_bytes = 0
        return detached

    def write(self, detached: Detached, parallel: int = 4, attempts: int = 5) -> int:
        """Write detached segments (several puts at once), then the checkpoint. A put
        is tried `attempts` times; if it still fails the error propagates and the
        caller must `reattach` the table (its readings are safe in the batches)."""
        items = sorted(detached.table.items())

        roots = self._roots

        def put(item) -> None:
            (day, group), records = item
            key = store.segment_key(day, group, self.name, detached.seq)
            spans = detached.spans[(day, group)]
            data = store.encode_segment(records, [roots[s.seq] for s in spans], spans)
            for attempt in range(attempts):
                try:
                    self.storage.put(store.BUCKET, key, data)
                    return
                except Exception as exc:
                    if attempt == attempts - 1:
                        raise
                    log.warning("segment %s: put failed (%s); trying again", key, exc)
                    time.sleep(0.2 * 2**attempt)

        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(put, items))
        # Roots of batches now all in segments are not needed again (the table
        # being filled holds only later batches). list() copies atomically.
        for seq in [s for s in list(roots) if s <= detached.seq]:
            roots.pop(seq, None)
        if detached.state is not None:
            self.storage.put(store.BUCKET, store.state_key(self.name), detached.state)
            self.checkpoint_seq = max(self.checkpoint_seq, detached.seq)
        self.counts["segments"] += len(items)
        return len(items)

    def reattach(self, detached: Detached) -> None:
        """Put a table whose write failed back, to be written with the next flush."""
        for slot, records in detached.table.items():
            self._table[slot][:0] = records
            self._spans[slot][:0] = detached.spans[slot]
            self._table_bytes += sum(map(len, records))
        self.counts["segment_write_failures"] += 1

    def flush(self) -> int:
        """Write the table as segments, then checkpoint; returns the segments written."""
        detached = self.detach(checkpoint=True)
        try:
            return self.write(detached)
        except Exception:
            self.reattach(detached)
            raise

    def _state_doc(self, checkpoint_seq: int) -> bytes:
        # Plain JSON (C encoder): a checkpoint of 65,000 meters is written while
        # batches wait, and nothing signs it.
        return json.dumps(
            {
                "authenticator": self.name,
                "checkpoint_seq": checkpoint_seq,  # batches up to this are in segments
                "command_seq": self.command_seq,
                "counts": dict(self.counts),
                "meters": {str(m): s.to_list() for m, s in self.meters.items()},
            },
            separators=(",", ":"),
        ).encode()

    def restore(self) -> int:
        """Load the checkpoint, then replay the batches written after it; returns how many."""
        try:
            doc = json.loads(self.storage.get(store.BUCKET, store.state_key(self.name)))
        except Exception as exc:  # no checkpoint yet: a new authenticator
            if getattr(exc, "status", None) != 404:
                raise
            doc = None
        if doc is not None:
            self.checkpoint_seq = self.seq = doc["checkpoint_seq"]
            self.command_seq = doc["command_seq"]
            self.counts = Counter(doc["counts"])
            self.meters = {int(m): MeterState.from_list(v) for m, v in doc["meters"].items()}
        replayed = 0
        start = store.batch_key(self.name, self.seq)
        while True:
            listed = self.storage.list(store.BUCKET, f"batches/{self.name}/", start, 1000)
            if not listed:
                break
            for item in listed:
                header, leaves = store.decode_batch(self.storage.get(store.BUCKET, item["key"]))
                self._replay(header, leaves)
                replayed += 1
            start = listed[-1]["key"]
        return replayed

    def _replay(self, header: dict, leaves: list[bytes]) -> None:
        out = Outcome(replies=[])
        meter_ids = [int.from_bytes(leaf[:4], "big") for leaf in leaves]
        records = [self.registry.get(meter_id) for meter_id in meter_ids]
        fields = _checked([leaf[4:] for leaf in leaves], records)
        for meter_id, record, leaf, report in zip(meter_ids, records, leaves, fields, strict=True):
            state = self.meters.setdefault(meter_id, MeterState())
            self._take(meter_id, state, report, leaf[4:], 0, record, out)
        for q in header["quarantine"]:
            state = self.meters.setdefault(q["meter"], MeterState())
            state.quarantined += 1
            self.counts[f"quarantined:{q['reason']}"] += 1
            self._advance(state, q["counter"])
            state.quarantined_counters = (state.quarantined_counters or set()) | {q["counter"]}
        for meter, invocation in header["invocations"].items():
            state = self.meters.setdefault(int(meter), MeterState())
            state.last_invocation = max(state.last_invocation, invocation)
        self.seq = header["seq"]
        self._remember(header, MerkleTree.from_leaves(leaves), leaves)

    # -- status ----------------------------------------------------------------------
    def status(self, meter_id: int | None = None) -> dict:
        if meter_id is not None:
            state = self.meters.get(meter_id)
            if state is None:
                return {"meter": meter_id, "known": False}
            return {
                "meter": meter_id,
                "known": True,
                "accepted": state.accepted,
                "duplicates": state.duplicates,
                "missing": state.missing_count,
                "missing_counters": sorted(state.missing or ())[:100],
                "quarantined": state.quarantined,
                "rejected": state.rejected,
                "last_report": state.last_report,
            }
        quarantined = {
            k.split(":", 1)[1]: v for k, v in self.counts.items() if k.startswith("quarantined:")
        }
        rejected = {
            k.split(":", 1)[1]: v for k, v in self.counts.items() if k.startswith("rejected:")
        }
        return {
            "authenticator": self.name,
            "meters": len(self.meters),
            "accepted": self.counts["accepted"],
            "duplicates": self.counts["duplicates"],
            "missing": sum(s.missing_count for s in self.meters.values()),
            "quarantined": sum(quarantined.values()),
            "quarantined_by_reason": quarantined,
            "rejected_by_reason": rejected,
            "handshakes": self.counts["handshakes"],
            "batches": self.seq,
            "checkpoint": self.checkpoint_seq,
            "segments": self.counts["segments"],
            "store_failures": self.counts["store_failures"],
        }
