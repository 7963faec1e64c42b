"""The meter simulator: many meters, each with its own TCP connection to an aggregator.

One process runs one shard of the fleet on one event loop (a process holds at
most ~19,000 sockets here, so 65,000 meters take four processes). Every meter
handshakes, then sends each report when it is due in simulated time (`speedup`
x real time; 0 = as fast as acknowledgements come back), keeps at most
`window` frames in flight, and sends a frame again, with a new invocation
counter, when it is refused as "unavailable" or not acknowledged within
`timeout` seconds.

Faults, drawn per meter and day from the seed: offline windows (reports held
and sent late when it comes back, or, with `p_buffer_lost`, lost for good: a
gap the platform records as missing), a constant clock offset within
+-`max_drift_s`, and duplicate transmissions (`p_duplicate` per report).

Counters survive restarts: before a run uses invocation counters it persists a
floor `LEASE` above them (state-<shard>.json), so a crash skips counters and
never reuses one. Report counters and energy registers are saved at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from securecloud.apps.metering import frames
from securecloud.apps.metering.fleet import Fleet
from securecloud.apps.metering.meter import MeterProtocolError, MeterSession
from securecloud.apps.metering.model import consumer_for, day_reports
from securecloud.apps.metering.reading import INTERVAL_S, READINGS_PER_DAY
from securecloud.apps.metering.theft import kind_for
from securecloud.crypto.errors import CryptoError
from securecloud.runtime.durable import atomic_write
from securecloud.runtime.gcpause import watch_pauses

LEASE = 1_000_000
RESEND_ON = frozenset({"unavailable", "auth-failed", "replay"})
GIVE_UP_ON = frozenset({"revoked-meter", "unknown-meter", "bad-signature"})


@dataclass(frozen=True)
class SimConfig:
    targets: tuple[str, ...]  # aggregator host:port
    start: dt.date = dt.date(2026, 3, 2)
    days: int = 1
    speedup: float = 0.0
    window: int = 4
    timeout: float = 20.0
    p_offline: float = 0.01
    p_buffer_lost: float = 0.3
    p_duplicate: float = 0.002
    max_drift_s: int = 60
    thieves: float = 0.0  # share of meters that tamper with their readings (theft.kind_for)
    theft_days: int = 1  # ... on the last this many days


@dataclass
class ShardResult:
    meters: int = 0
    generated: int = 0
    sent: int = 0
    acked: Counter = field(default_factory=Counter)  # by status
    nacks: Counter = field(default_factory=Counter)
    commands: Counter = field(default_factory=Counter)  # load commands carried out
    resent: int = 0
    handshakes: int = 0
    lost_by_fault: int = 0
    connect_errors: int = 0
    elapsed_s: float = 0.0
    gc_pause_s: float = 0.0  # time the cyclic garbage collector held this process
    acked_counters: dict[int, list[int]] = field(default_factory=dict)  # meter -> ranges


class SimMeter(asyncio.Protocol):
    def __init__(self, shard: Shard, session: MeterSession, target: tuple[str, int]):
        self.shard, self.session, self.target = shard, session, target
        self.consumer = consumer_for(shard.fleet.seed, session.meter_id, shard.fleet.large_share)
        self.rng = np.random.default_rng([shard.fleet.seed, session.meter_id, 2])
        self.drift = int(self.rng.integers(-shard.config.max_drift_s, shard.config.max_drift_s + 1))
        self.queue: list = []  # reports ready, in counter order
        self.pending: dict[int, tuple] = {}  # invocation -> (report, sent at)
        self.transport = None
        self.buffer = bytearray()
        self.connected = False
        self.days_done = 0
        self.queue_pos = 0
        self.finished = False
        self.energy = float(self.rng.uniform(0, 5e6))
        self.acked: set[int] = set()
        self.load_on = True
        self.hello_sent = 0.0
        self.theft = kind_for(
            shard.fleet.seed,
            session.meter_id,
            shard.config.thieves,
            self.consumer.kind == "large",
        )

    # -- readings -----------------------------------------------------------------
    def resume(self, state: dict | None) -> None:
        """Continue the report counter and the energy register of an earlier run."""
        self.next_report = state["next_report"] if state else 1
        self.energy = state["energy"] if state else self.energy

    def next_day(self) -> bool:
        """Queue the next simulated day's reports; False when all days are queued.
        Days are made one at a time, so a load command changes the days after it."""
        cfg = self.shard.config
        if self.days_done >= cfg.days:
            return False
        day = cfg.start + dt.timedelta(days=self.days_done)
        self.days_done += 1
        theft = None
        if self.days_done > cfg.days - cfg.theft_days:
            theft = self.theft
        reports, due, self.energy = day_reports(
            self.consumer,
            day,
            self.next_report,
            self.energy,
            self.rng,
            self.drift,
            self.load_on,
            theft,
        )
        self.next_report += READINGS_PER_DAY
        if self.rng.random() < cfg.p_offline:  # offline for 1-16 intervals
            first = int(self.rng.integers(0, READINGS_PER_DAY))
            last = min(READINGS_PER_DAY, first + int(self.rng.integers(1, 17)))
            if self.rng.random() < cfg.p_buffer_lost:
                self.shard.result.lost_by_fault += last - first
                del reports[first:last], due[first:last]
            else:
                due[first:last] = [due[last - 1] + INTERVAL_S] * (last - first)
        del self.queue[: self.queue_pos]  # what was sent and acknowledged
        self.queue_pos = 0
        before = len(self.queue)
        for report, when in zip(reports, due, strict=True):
            self.queue.append((report, when))
            if self.rng.random() < cfg.p_duplicate:
                self.queue.append((report, when))
        self.shard.result.generated += len(self.queue) - before
        return True

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connected = True
        self.handshake()

    def handshake(self) -> None:
        self.session.keys = None  # frames wait until the new session is accepted
        self.hello_sent = time.monotonic()
        self.shard.result.handshakes += 1
        self.transport.write(self.session.hello(int(time.time())))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        size = frames.DOWNLINK_SIZE
        while len(self.buffer) >= size:
            frame = bytes(self.buffer[:size])
            del self.buffer[:size]
            try:
                message = frames.decode_downlink(frame)
            except frames.FrameError:
                self.shard.result.nacks["bad-downlink"] += 1
                continue
            self.on_message(message)

    def on_message(self, message) -> None:
        result = self.shard.result
        if isinstance(message, frames.Accept):
            try:
                self.session.accept(message)
            except (MeterProtocolError, CryptoError):
                result.nacks["bad-accept"] += 1
                return
            self._requeue_pending()
            self.pump()
        elif isinstance(message, frames.Ack):
            entry = self.pending.get(message.invocation)
            if entry is None:
                return
            try:
                self.session.check_ack(message)
            except (MeterProtocolError, CryptoError):
                result.nacks["forged-ack"] += 1
                return
            del self.pending[message.invocation]
            result.acked[frames.ACK_STATUS.get(message.status, "?")] += 1
            if message.status in (frames.STORED, frames.DUPLICATE):
                self.acked.add(message.report)
            self.pump()
        elif isinstance(message, frames.Nack):
            result.nacks[message.reason_name] += 1
            entry = self.pending.pop(message.invocation, None)
            if message.reason_name == "crc":
                return  # the connection is being closed; connection_lost resends
            if message.reason_name in GIVE_UP_ON:  # the platform will not take this meter
                self.queue_pos = len(self.queue)
                self.days_done = self.shard.config.days
                self.pending.clear()
                self.transport.close()
                self.shard.done(self)
                return
            if entry is not None and message.reason_name in RESEND_ON:
                self.queue.insert(self.queue_pos, (entry[0], 0))
                result.resent += 1
                if message.reason_name == "auth-failed":
                    self.handshake()
                    return
                self.shard.later(self, 0.2)
        elif isinstance(message, frames.Command) and self.session.check_command(message):
            self.load_on = message.command == frames.CONNECT_LOAD
            result.commands["connect" if self.load_on else "disconnect"] += 1

    def connection_lost(self, exc) -> None:
        self.connected = False
        self.transport = None
        self._requeue_pending()
        if not self.shard.stopping and not self.finished:
            self.shard.reconnect(self)

    def _requeue_pending(self) -> None:
        for _inv, (report, _t) in sorted(self.pending.items(), reverse=True):
            self.queue.insert(self.queue_pos, (report, 0))
        self.pending.clear()

    # -- sending ------------------------------------------------------------------
    def pump(self) -> None:
        """Refill the window once half of it is acknowledged, in one write: a meter with
        a backlog sends it in bursts, and the sockets carry several frames per call."""
        if not self.connected or self.session.keys is None:
            return
        window = self.shard.config.window
        if len(self.pending) > window // 2:
            return
        now = time.monotonic()
        burst = []
        while len(self.pending) < window:
            if self.queue_pos >= len(self.queue) and not self.next_day():
                break
            report, due = self.queue[self.queue_pos]
            wait = self.shard.real_time(due) - now
            if wait > 0:
                self.shard.later(self, wait)
                break
            self.queue_pos += 1
            invocation, frame = self.session.seal(report)
            self.pending[invocation] = (report, now)
            burst.append(frame)
        if burst:
            self.transport.write(b"".join(burst))
            self.shard.result.sent += len(burst)
        all_queued = self.days_done >= self.shard.config.days
        if all_queued and self.queue_pos >= len(self.queue) and not self.pending:
            self.shard.done(self)

    def check_timeouts(self, now: float) -> None:
        if self.connected and self.session.keys is None:
            if now - self.hello_sent > self.shard.config.timeout:  # HELLO or ACCEPT lost
                self.handshake()
            return
        timeout = self.shard.config.timeout
        # pending is in sending order: if its first frame is in time, all are
        if not self.pending or now - next(iter(self.pending.values()))[1] <= timeout:
            return
        expired = [inv for inv, (_r, t) in self.pending.items() if now - t > timeout]
        for inv in sorted(expired, reverse=True):
            report, _t = self.pending.pop(inv)
            self.queue.insert(self.queue_pos, (report, 0))
            self.shard.result.resent += 1
        if expired:
            self.pump()


class Shard:
    """One process's meters."""

    def __init__(self, fleet: Fleet, meter_ids: range, config: SimConfig, name: str):
        self.fleet, self.meter_ids, self.config, self.name = fleet, meter_ids, config, name
        self.result = ShardResult(meters=len(meter_ids))
        self.state_path = fleet.directory / f"state-{name}.json"
        self.stopping = False
        self._timers: list = []
        self._remaining = 0
        self._finished = asyncio.Event()
        self._t0 = time.monotonic()
        self._sim0 = int(
            dt.datetime(
                config.start.year, config.start.month, config.start.day, tzinfo=dt.UTC
            ).timestamp()
        )

    def real_time(self, sim_timestamp: int) -> float:
        if self.config.speedup <= 0 or sim_timestamp == 0:
            return 0.0
        return self._t0 + (sim_timestamp - self._sim0) / self.config.speedup

    def later(self, meter: SimMeter, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, meter.pump)

    def done(self, meter: SimMeter) -> None:
        if meter.finished:
            return
        meter.finished = True
        self._remaining -= 1
        if self._remaining == 0:
            self._finished.set()

    def reconnect(self, meter: SimMeter) -> None:
        asyncio.get_running_loop().call_later(
            random.uniform(0.1, 1.0), lambda: asyncio.ensure_future(self._connect(meter))
        )

    async def _connect(self, meter: SimMeter) -> None:
        host, port = meter.target
        for attempt in range(50):
            try:
                await asyncio.get_running_loop().create_connection(lambda: meter, host, port)
                return
            except OSError:
                self.result.connect_errors += 1
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5))
        raise ConnectionError(
            f"meter {meter.session.meter_id}: aggregator {host}:{port} unreachable"
        )

    def _load_state(self) -> dict:
        if self.state_path.exists():
            return {int(k): v for k, v in json.loads(self.state_path.read_text()).items()}
        return {}

    def _save_state(self, meters: list[SimMeter], final: bool) -> None:
        doc = {}
        for m in meters:
            doc[str(m.session.meter_id)] = {
                "invocation_floor": m.session.next_invocation + (0 if final else LEASE),
                "next_report": m.next_report,
                "energy": m.energy,
            }
        atomic_write(self.state_path, json.dumps(doc).encode())

    async def run(self, progress=None) -> ShardResult:
        state = self._load_state()
        keys = self.fleet.keys(self.meter_ids)
        targets = [t.rpartition(":") for t in self.config.targets]
        meters = []
        for meter_id in self.meter_ids:
            previous = state.get(meter_id)
            session = MeterSession(
                meter_id,
                keys[meter_id],
                self.fleet.authenticator_public,
                next_invocation=previous["invocation_floor"] if previous else 1,
            )
            host, _, port = targets[meter_id % len(targets)]
            meter = SimMeter(self, session, (host, int(port)))
            meter.resume(previous)
            meters.append(meter)
        self._save_state(meters, final=False)  # lease the counters before using them
        self._remaining = len(meters)
        self._t0 = time.monotonic()
        started = time.perf_counter()
        sem = asyncio.Semaphore(512)

        async def connect(meter):
            async with sem:
                await self._connect(meter)

        await asyncio.gather(*(connect(m) for m in meters))
        watchdog = asyncio.create_task(self._watch(meters, progress))
        stop_watching = watch_pauses(self._count_gc_pause)
        try:
            await self._finished.wait()
        finally:
            stop_watching()
        self.stopping = True
        watchdog.cancel()
        self.result.elapsed_s = time.perf_counter() - started
        for m in meters:
            if m.transport is not None:
                m.transport.close()
            self.result.acked_counters[m.session.meter_id] = _ranges(sorted(m.acked))
        self._save_state(meters, final=True)
        return self.result

    def _count_gc_pause(self, _generation: int, seconds: float) -> None:
        self.result.gc_pause_s += seconds

    async def _watch(self, meters: list[SimMeter], progress) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            if ticks % 10 == 0:  # the meters' long-lived state, out of the collector's sight
                gc.freeze()
            now = time.monotonic()
            for m in meters:
                if m.pending or (m.connected and m.session.keys is None):
                    m.check_timeouts(now)
            if progress is not None:
                progress(self.result)


def _ranges(values: list[int]) -> list[int]:
    """[a1, b1, a2, b2, ...]: inclusive runs of consecutive integers."""
    out: list[int] = []
    for v in values:
        if out and out[-1] == v - 1:
            out[-1] = v
        else:
            out += [v, v]
    return out


def expand(ranges: list[int]) -> set[int]:
    return {v for a, b in zip(ranges[::2], ranges[1::2], strict=True) for v in range(a, b + 1)}


def lost(summary: dict, stored: dict[int, set[int]]) -> int:
    """Reports the fleet saw acknowledged (`summary`) that are not in `stored`
    (store.stored_counters): what the platform lost. Must be 0."""
    return sum(
        len(expand(ranges) - stored.get(int(meter), set()))
        for meter, ranges in summary["acked_counters"].items()
    )


def run_shard(
    directory: str, first: int, last: int, config: dict, name: str, out: str, acked=None
) -> None:
    """Entry point of one simulator process; writes its ShardResult as JSON to `out`.
    `acked` (a shared integer, optional) follows the acknowledged reports every second."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    cfg = SimConfig(
        **{
            **config,
            "start": dt.date.fromisoformat(config["start"]),
            "targets": tuple(config["targets"]),
        }
    )
    shard = Shard(Fleet.load(Path(directory)), range(first, last + 1), cfg, name)

    def progress(result: ShardResult) -> None:
        if acked is not None:
            acked.value = sum(result.acked.values())

    result = asyncio.run(shard.run(progress))
    progress(result)
    doc = asdict(result)
    doc["acked"] = dict(result.acked)
    doc["nacks"] = dict(result.nacks)
    doc["commands"] = dict(result.commands)  # asdict() mangles Counters
    Path(out).write_text(json.dumps(doc))
