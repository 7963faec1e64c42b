"""The controller is a pure function: these tests feed it histories and read its answer."""

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securecloud.services.batch.controller import (
    ControllerState,
    decide,
    feed_forward,
    round_half_away,
)
from securecloud.services.batch.monitor import ProgressMonitor, Sample
from securecloud.services.batch.queue import QueueStats
from securecloud.services.batch.submission import ControlParameters, Gains

TRIGGER = ControlParameters(min_rep=1, max_rep=8, trigger_up=0.05, trigger_down=0.05)
PID = ControlParameters(
    schedule_strategy="pid",
    min_rep=1,
    max_rep=8,
    gains=Gains(proportional_gain=5, integral_gain=0.5, derivative_gain=0, feed_forward=False),
)


def sample(elapsed=10.0, error=0.0, replicas=2, done=0, total=100):
    return Sample(elapsed, total, done, 0, total - done, 0, replicas, 0.0, 0.0, error)


@pytest.mark.parametrize(
    ("error", "expected"),
    [(-0.10, 3), (-0.05, 3), (-0.04, 2), (0.0, 2), (0.04, 2), (0.05, 1), (0.2, 1)],
)
def test_trigger_strategy_steps_by_actuation_size_past_the_triggers(error, expected):
    decision = decide([sample(error=error)], TRIGGER, ControllerState(), 100, 100)
    assert decision.replicas == expected


def test_trigger_strategy_stays_within_min_and_max():
    assert (
        decide([sample(error=-0.5, replicas=8)], TRIGGER, ControllerState(), 100, 100).replicas == 8
    )
    assert (
        decide([sample(error=0.5, replicas=1)], TRIGGER, ControllerState(), 100, 100).replicas == 1
    )


@pytest.mark.parametrize("strategy", [TRIGGER, PID])
def test_enclave_memory_caps_the_replicas(strategy):
    decision = decide([sample(error=-0.9, replicas=2)], strategy, ControllerState(), 3, 100)
    assert decision.replicas <= 3


def test_pid_acts_on_corrections_smaller_than_one_replica():
    # Kp·e = 5 × -0.15 = -0.75: the original int() truncation made this 0 replicas.
    history = [sample(elapsed=0, replicas=2), sample(elapsed=5, error=-0.15, replicas=2)]
    state = ControllerState(last_error=0.0, last_elapsed=0.0)
    decision = decide(
        history, replace(PID, gains=replace(PID.gains, integral_gain=0)), state, 8, 100
    )
    assert decision.replicas == 3


def test_pid_integral_accumulates_small_persistent_errors():
    params = replace(PID, gains=replace(PID.gains, proportional_gain=0, integral_gain=1.0))
    state, history, replicas = ControllerState(), [sample(elapsed=0, replicas=2)], []
    for step in range(1, 8):
        history.append(sample(elapsed=step * 5.0, error=-0.04, replicas=2))
        decision = decide(history, params, state, 8, 100)
        state = decision.state
        replicas.append(decision.replicas)
    assert replicas[0] == 2 and replicas[-1] > 2  # -0.04 × 5 s per step adds up


def test_pid_does_not_wind_up_while_saturated():
    params = replace(PID, gains=replace(PID.gains, proportional_gain=1, integral_gain=1))
    state, history = ControllerState(), [sample(elapsed=0, replicas=8)]
    for step in range(1, 30):  # very late for a long time at max_rep
        history.append(sample(elapsed=step * 5.0, error=-0.5, replicas=8))
        state = decide(history, params, state, 8, 1000).state
    integral_at_saturation = state.integral
    assert integral_at_saturation > -10  # without anti-windup it would be -72.5
    history.append(sample(elapsed=150, error=0.3, replicas=8))
    recovered = decide(history, params, state, 8, 1000)
    assert recovered.replicas < 8  # once ahead, it scales down at once


def test_cooldown_holds_after_a_change():
    params = replace(TRIGGER, cooldown=20)
    first = decide([sample(elapsed=10, error=-0.2)], params, ControllerState(), 8, 100)
    assert first.replicas == 3 and first.state.last_change == 10
    held = decide([sample(elapsed=20, error=-0.2, replicas=3)], params, first.state, 8, 100)
    assert held.replicas == 3 and held.reason == "cooldown"
    later = decide([sample(elapsed=31, error=-0.2, replicas=3)], params, first.state, 8, 100)
    assert later.replicas == 4


def test_feed_forward_estimates_workers_from_measured_throughput():
    # 2 workers complete 10 items per second together: 5 items per worker-second.
    history = [sample(elapsed=t, done=10 * t, replicas=2, total=400) for t in range(0, 6)]
    # 350 items remain, 50 s left: 350 / (50 × 5) = 1.4 workers
    assert feed_forward(history, expected_time=55) == pytest.approx(1.4)
    assert feed_forward(history[:1], expected_time=55) is None
    assert feed_forward(history, expected_time=5) == math.inf


def test_pid_follows_the_feed_forward_when_on_time():
    params = replace(PID, gains=replace(PID.gains, feed_forward=True))
    history = [sample(elapsed=t, done=10 * t, replicas=2, total=400) for t in range(0, 6)]
    assert decide(history, params, ControllerState(), 8, 55).replicas == 1  # round(1.4)


@given(st.floats(-1000, 1000, allow_nan=False))
def test_rounding_is_half_away_from_zero(value):
    rounded = round_half_away(value)
    assert abs(rounded - value) <= 0.5
    if abs(value - math.trunc(value)) == 0.5:
        assert abs(rounded) > abs(value)


def test_monitor_clamps_and_keeps_zero_as_a_real_value():
    now = [100.0]
    monitor = ProgressMonitor("s", expected_time=10, clock=lambda: now[0])
    on_time = monitor.observe(QueueStats(10, 5, 0, 0, 0), replicas=1)
    assert (on_time.job_progress, on_time.time_progress, on_time.error) == (0.0, 0.0, 0.0)
    now[0] = 105.0
    half = monitor.observe(QueueStats(10, 5, 0, 5, 0), replicas=1)
    assert (half.job_progress, half.time_progress, half.error) == (0.5, 0.5, 0.0)
    now[0] = 130.0
    late = monitor.observe(QueueStats(10, 2, 0, 8, 0), replicas=1)
    assert late.time_progress == 1.0 and late.error == pytest.approx(-0.2)
    assert len(monitor.history) == 3
