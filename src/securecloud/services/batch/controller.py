"""The controller: a pure function from (history, parameters, state, capacity) to replicas.

Strategies (`control_parameters.schedule_strategy`):

- `default`, the trigger strategy of Asperathos: when the job is late by at
  least `trigger_up` (error ≤ -trigger_up) add `actuation_size` workers; when
  it is ahead by at least `trigger_down` remove as many.
- `pid`, a float PID around a feed-forward estimate::

      desired = base - (Kp·e + Ki·∫e dt + Kd·de/dt)

  e is the progress error (negative when late, so a late job gets more
  workers). base is the feed-forward term when throughput has been measured,
  remaining items / (time left × items per worker-second over the recent
  window), else the initial worker count. The result is rounded to the
  nearest integer, half away from zero: small corrections accumulate in the
  integral and are never truncated to zero (the original Asperathos PID did
  `int(...)`, which dropped every correction below one whole replica once its
  error became a fraction instead of a percentage). Anti-windup: the integral
  does not grow while the output is saturated in the direction it pushes.

Both respect a cooldown after a change, and clamp to
[min_rep, min(max_rep, capacity)], where capacity is how many workers the
free enclave memory holds (free MB // enclave_heap_mb).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from securecloud.services.batch.monitor import Sample
from securecloud.services.batch.submission import ControlParameters

FEED_FORWARD_WINDOW = 4  # samples used to measure throughput


@dataclass(frozen=True)
class ControllerState:
    integral: float = 0.0
    last_error: float | None = None
    last_elapsed: float | None = None
    last_change: float | None = None


@dataclass(frozen=True)
class Decision:
    replicas: int
    state: ControllerState
    reason: str
    feed_forward: float | None = None


def round_half_away(value: float) -> int:
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def bounds(params: ControlParameters, capacity: int) -> tuple[int, int]:
    upper = max(0, min(params.max_rep, capacity))
    return min(params.min_rep, upper), upper


def items_per_worker_second(history: Sequence[Sample]) -> float | None:
    """Throughput per worker over the recent window, or None before it is measurable."""
    window = list(history)[-FEED_FORWARD_WINDOW - 1 :]
    if len(window) < 2:
        return None
    work = sum(a.replicas * (b.elapsed - a.elapsed) for a, b in itertools.pairwise(window))
    done = (window[-1].done + window[-1].failed) - (window[0].done + window[0].failed)
    if work <= 0 or done <= 0:
        return None
    return done / work


def feed_forward(history: Sequence[Sample], expected_time: float) -> float | None:
    rate = items_per_worker_second(history)
    if rate is None:
        return None
    last = history[-1]
    remaining = last.total - last.done - last.failed
    time_left = expected_time - last.elapsed
    if remaining <= 0:
        return 0.0
    if time_left <= 0:
        return math.inf
    return remaining / (time_left * rate)


def decide(
    history: Sequence[Sample],
    params: ControlParameters,
    state: ControllerState,
    capacity: int,
    expected_time: float,
) -> Decision:
    last = history[-1]
    lower, upper = bounds(params, capacity)
    current = last.replicas
    if state.last_change is not None and last.elapsed - state.last_change < params.cooldown:
        held = min(max(current, lower), upper)
        return Decision(held, state, "cooldown")
    if params.schedule_strategy == "pid":
        decision = _pid(history, params, state, lower, upper, expected_time)
    else:
        decision = _trigger(last, params, state, lower, upper)
    if decision.replicas != current:
        decision = replace(decision, state=replace(decision.state, last_change=last.elapsed))
    return decision


def _trigger(last: Sample, params: ControlParameters, state, lower: int, upper: int) -> Decision:
    replicas, reason = last.replicas, "within triggers"
    if last.error < 0 and -last.error >= params.trigger_up:
        replicas, reason = last.replicas + params.actuation_size, f"late by {-last.error:.3f}"
    elif last.error > 0 and last.error >= params.trigger_down:
        replicas, reason = last.replicas - params.actuation_size, f"ahead by {last.error:.3f}"
    return Decision(min(max(replicas, lower), upper), state, reason)


def _pid(history, params, state: ControllerState, lower, upper, expected_time) -> Decision:
    gains = params.gains
    last = history[-1]
    error = last.error
    dt = last.elapsed - state.last_elapsed if state.last_elapsed is not None else 0.0
    derivative = (error - state.last_error) / dt if state.last_error is not None and dt > 0 else 0.0
    ff = feed_forward(history, expected_time) if gains.feed_forward else None
    base = history[0].replicas if ff is None else min(ff, float(upper))

    def output(integral: float) -> float:
        return base - (
            gains.proportional_gain * error
            + gains.integral_gain * integral
            + gains.derivative_gain * derivative
        )

    integral = state.integral + error * dt
    raw = output(integral)
    if (raw > upper and error < 0) or (raw < lower and error > 0):
        integral = state.integral  # saturated: integrating further would only wind up
        raw = output(integral)
    replicas = min(max(round_half_away(raw), lower), upper)
    new_state = ControllerState(integral, error, last.elapsed, state.last_change)
    ff_text = f"{ff:.2f}" if ff is not None and math.isfinite(ff) else str(ff)
    return Decision(replicas, new_state, f"pid output {raw:.2f} (ff {ff_text})", ff)
