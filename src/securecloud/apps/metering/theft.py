"""Energy theft as the literature simulates it: what a tampered meter does to its day.

Jokar, Arianpoo and Leung (IEEE Trans. Smart Grid 7(1), 2016) define six
false-data injections on a day's readings x_t (t = 1..96 here):

    h1  x_t * a,          a ~ U(0.1, 0.8)           (scaled down)
    h2  x_t * b_t,        b_t = 0 in a random window of at least 4 hours, else 1
    h3  x_t * g_t,        g_t ~ U(0.1, 0.8) per interval
    h4  g_t * mean(x),    g_t ~ U(0.1, 0.8) per interval
    h5  mean(x)           (a flat day with the right total: a smoothing tamper)
    h6  x_{97 - t}        (the day reversed: shifts load into cheap hours)

`phasor` is the bypass of a large (three-phase, > 1 kV) consumer: one or two
phases' current is partly diverted around the meter's current transformer, so
the metered current and power of those phases fall by a factor ~ U(0.3, 0.8)
while the voltage stays. Every attack returns new arrays; inputs are not changed.

The meter simulator tampers with the days of the meters `kind_for` names (the
demo's thieves); the fraud harness applies the same attacks to curves.
"""

from __future__ import annotations

import numpy as np

CURVE_ATTACKS = ("h1", "h2", "h3", "h4", "h5", "h6")
ATTACKS = (*CURVE_ATTACKS, "phasor")


def attack_curve(kind: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[-1]
    if kind == "h1":
        return x * rng.uniform(0.1, 0.8)
    if kind == "h2":
        length = int(rng.integers(16, n))  # 4 hours or more
        start = int(rng.integers(0, n - length + 1))
        out = x.copy()
        out[start : start + length] = 0.0
        return out
    if kind == "h3":
        return x * rng.uniform(0.1, 0.8, n)
    if kind == "h4":
        return rng.uniform(0.1, 0.8, n) * x.mean()
    if kind == "h5":
        return np.full_like(x, x.mean())
    if kind == "h6":
        return x[::-1].copy()
    raise ValueError(f"attack: {kind!r} is not one of {', '.join(CURVE_ATTACKS)}")


def bypass_phases(amps: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(metered currents [96, 3] with one or two phases partly bypassed, the factor per
    phase)."""
    factors = np.ones(3)
    phases = rng.choice(3, size=int(rng.integers(1, 3)), replace=False)
    factors[phases] = rng.uniform(0.3, 0.8, len(phases))
    return amps * factors, factors


def kind_for(seed: int, meter_id: int, share: float, large: bool) -> str | None:
    """The attack this meter carries out, or None for an honest meter: deterministic in
    (seed, meter id), so the simulator and whoever checks the ranking agree."""
    if share <= 0:  # no thieves: no generator per meter either
        return None
    rng = np.random.default_rng([seed, meter_id, 5])
    if rng.random() >= share:
        return None
    if large and rng.random() < 0.5:
        return "phasor"
    return str(rng.choice(CURVE_ATTACKS))
