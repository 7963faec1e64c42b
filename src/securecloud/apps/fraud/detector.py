"""Risk of energy theft per consumer and day: the SecureCloud method, extended.

The method the SecureCloud papers describe: a self-organising map (`minisom`)
classifies daily consumption shapes; for each consumer and one-day window the
correlation of the day with the consumer's regular behaviour, and with its
behaviour class, is computed; a risk score ranks the consumer units.

Correlation alone cannot see a day scaled down uniformly (attack h1 keeps the
shape), nor a day flattened to its mean (h5 has no shape to correlate), so
the score also weighs:

- level: log of the day's energy against the consumer's regular daily energy;
- roughness: mean step between consecutive intervals over the mean (random
  per-interval factors make a day rough, a flattened day is smooth);
- phasors, for large consumers: per phase, the day's current against its
  regular current, corrected by the voltage; a bypass of one or two phases
  makes the phases disagree (the imbalance rises) while the voltage stays.

Every feature is turned into a z-score against the same consumer's own
history (its mean and spread over the training days), so a naturally erratic
consumer is not flagged for being erratic. The risk is the root sum of squares
of the suspicious sides of those z-scores (lower correlation, lower level,
changed roughness, a phase imbalance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOM_SHAPE = (6, 6)
FEATURES = ("corr_own", "corr_class", "level", "roughness", "phase_imbalance")
_FLOORS = {"corr_own": 0.03, "corr_class": 0.03, "level": 0.05, "roughness": 0.03}


def fill_missing(curves: np.ndarray) -> np.ndarray:
    """Missing intervals (NaN) filled by linear interpolation along the day (edges:
    the nearest reading); a day with no reading at all becomes zeros."""
    out = np.array(curves, dtype=float, copy=True)
    flat = out.reshape(-1, out.shape[-1])
    index = np.arange(flat.shape[1])
    for row in np.flatnonzero(np.isnan(flat).any(axis=1)):
        known = ~np.isnan(flat[row])
        flat[row] = np.interp(index, index[known], flat[row][known]) if known.any() else 0.0
    return out


def shapes(curves: np.ndarray) -> np.ndarray:
    """Curves divided by their own mean (the shape a SOM classifies)."""
    mean = curves.mean(axis=-1, keepdims=True)
    return np.divide(curves, mean, out=np.zeros_like(curves), where=mean > 0)


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis; 0 where either side is flat."""
    da = a - a.mean(axis=-1, keepdims=True)
    db = b - b.mean(axis=-1, keepdims=True)
    num = (da * db).sum(axis=-1)
    den = np.sqrt((da * da).sum(axis=-1) * (db * db).sum(axis=-1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)


def roughness(curves: np.ndarray) -> np.ndarray:
    mean = curves.mean(axis=-1)
    steps = np.abs(np.diff(curves, axis=-1)).mean(axis=-1)
    return np.divide(steps, mean, out=np.zeros_like(steps), where=mean > 0)


def _imbalance(amps: np.ndarray, volts: np.ndarray, regular_amps, regular_volts) -> np.ndarray:
    """Spread across phases of log(current / regular current) - log(voltage / regular):
    ~0 when all phases move together."""
    day_a, day_v = np.nanmean(amps, axis=-2), np.nanmean(volts, axis=-2)  # [..., 3]
    ratio = np.log(np.maximum(day_a, 1e-9) / regular_amps) - np.log(day_v / regular_volts)
    return ratio.max(axis=-1) - ratio.min(axis=-1)


@dataclass
class Model:
    prototypes: np.ndarray  # [units, 96] SOM weights (shapes)
    regular: np.ndarray  # [consumers, 96] mean curve of the history, W
    classes: np.ndarray  # [consumers] best-matching unit of the regular shape
    mean: dict[str, np.ndarray]  # feature -> [consumers] history mean
    spread: dict[str, np.ndarray]  # feature -> [consumers] history standard deviation
    large: np.ndarray  # indices of large consumers
    regular_amps: np.ndarray  # [large, 3]
    regular_volts: np.ndarray  # [large, 3]

    def classify(self, shape: np.ndarray) -> np.ndarray:
        distance = ((shape[:, None, :] - self.prototypes[None, :, :]) ** 2).sum(axis=-1)
        return distance.argmin(axis=1)


def fit(
    history: np.ndarray,
    large: np.ndarray,
    amps: np.ndarray,
    volts: np.ndarray,
    seed: int = 1,
    iterations: int = 3000,
    sample: int = 20000,
) -> Model:
    """Train the SOM on history shapes and learn each consumer's regular behaviour.
    history: [consumers, days, 96] W; amps, volts: [large, days, 96, 3]."""
    from minisom import MiniSom

    history = fill_missing(history)
    rng = np.random.default_rng(seed)
    all_shapes = shapes(history).reshape(-1, history.shape[-1])
    picked = all_shapes[rng.choice(len(all_shapes), min(sample, len(all_shapes)), replace=False)]
    som = MiniSom(*SOM_SHAPE, history.shape[-1], sigma=1.5, learning_rate=0.5, random_seed=seed)
    som.random_weights_init(picked)
    som.train_random(picked, iterations)
    prototypes = som.get_weights().reshape(-1, history.shape[-1])
    regular = history.mean(axis=1)
    model = Model(
        prototypes,
        regular,
        np.zeros(len(regular), int),
        {},
        {},
        large,
        np.nanmean(amps, axis=(1, 2)) if len(large) else np.zeros((0, 3)),
        np.nanmean(volts, axis=(1, 2)) if len(large) else np.zeros((0, 3)),
    )
    model.classes = model.classify(shapes(regular))
    days = history.shape[1]
    per_day = [
        _raw(
            model,
            history[:, d],
            amps[:, d] if len(large) else None,
            volts[:, d] if len(large) else None,
        )
        for d in range(days)
    ]
    for name in FEATURES:
        values = np.stack([f[name] for f in per_day], axis=1)
        model.mean[name] = values.mean(axis=1)
        model.spread[name] = np.maximum(values.std(axis=1), _FLOORS.get(name, 0.02))
    return model


def _raw(model: Model, day: np.ndarray, amps, volts) -> dict[str, np.ndarray]:
    level = np.log(
        np.maximum(day.mean(axis=-1), 1e-6) / np.maximum(model.regular.mean(axis=-1), 1e-6)
    )
    imbalance = np.zeros(len(day))
    if amps is not None and len(model.large):
        imbalance[model.large] = _imbalance(amps, volts, model.regular_amps, model.regular_volts)
    return {
        "corr_own": correlation(day, model.regular),
        "corr_class": correlation(shapes(day), model.prototypes[model.classes]),
        "level": level,
        "roughness": roughness(day),
        "phase_imbalance": imbalance,
    }


def features(model: Model, day: np.ndarray, amps=None, volts=None) -> dict[str, np.ndarray]:
    """z-scores against each consumer's history, signed so that larger is more suspicious
    (roughness counts both ways)."""
    raw = _raw(model, fill_missing(day), amps, volts)
    z = {name: (raw[name] - model.mean[name]) / model.spread[name] for name in FEATURES}
    return {
        "corr_own": -z["corr_own"],
        "corr_class": -z["corr_class"],
        "level": -z["level"],
        "roughness": np.abs(z["roughness"]),
        "phase_imbalance": z["phase_imbalance"],
    }


def risk(feats: dict[str, np.ndarray]) -> np.ndarray:
    """Root sum of squares of the suspicious sides of the z-scores."""
    total = np.zeros_like(feats["level"])
    for name in FEATURES:
        total += np.maximum(feats[name], 0.0) ** 2
    return np.sqrt(total)


def feature_matrix(feats: dict[str, np.ndarray]) -> np.ndarray:
    """The same features as columns, for the baselines (IsolationForest, LOF)."""
    return np.stack([feats[name] for name in FEATURES], axis=1)
