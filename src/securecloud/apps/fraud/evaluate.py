"""The evaluation harness: inject theft into honest simulated consumers, rank, measure.

Honest consumers (`fleet.simulate`) get `history` training days and one
evaluated day. A share `prevalence` of them steal on the evaluated day, each
with one attack drawn uniformly from h1-h6 (`attacks.py`); a large consumer
who steals bypasses phases instead half the time. Honest anomalies stay
honest: vacations (the day falls to the consumer's base load) and missing
readings (intervals lost, filled by interpolation before scoring). The
detector's risk ranks everybody; the same features go to scikit-learn's
IsolationForest and LocalOutlierFactor as baselines. Reported: ROC-AUC overall
and per attack, PR-AUC, precision@100, the detection rate at a 10 %
false-positive rate, and the same for the baselines.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np

from securecloud.apps.fraud import detector
from securecloud.apps.fraud.fleet import phase_power, simulate
from securecloud.apps.metering import theft as attacks

START = dt.date(2026, 3, 2)


def _inject(fleet, history: int, prevalence: float, rng, vacation_share, missing_share):
    count = len(fleet.consumers)
    day = fleet.power[:, history].copy()
    amps = fleet.amps[:, history].copy()
    volts = fleet.volts[:, history]
    pf = fleet.pf[:, history]
    position = {int(c): k for k, c in enumerate(fleet.large)}
    thieves = rng.choice(count, max(1, round(prevalence * count)), replace=False)
    kinds = np.array([""] * count, dtype=object)
    for i in thieves:
        k = position.get(int(i))
        # large consumers bypass phases half the time (the attack their meters invite)
        bypass = k is not None and rng.random() < 0.5
        kind = "phasor" if bypass else str(rng.choice(attacks.CURVE_ATTACKS))
        kinds[i] = kind
        if kind == "phasor":
            amps[k], _factors = attacks.bypass_phases(amps[k], rng)
            day[i] = phase_power(volts[k], amps[k], pf[k])
            continue
        new = attacks.attack_curve(kind, day[i], rng)
        if k is not None:  # the phasors follow the tampered power on all phases alike
            scale = np.divide(new, day[i], out=np.zeros_like(new), where=day[i] > 0)
            amps[k] = amps[k] * scale[:, None]
        day[i] = new
    honest = np.flatnonzero(kinds == "")
    anomalies = {"vacation": 0, "missing": 0}
    for i in rng.choice(honest, round(vacation_share * count), replace=False):
        base = np.quantile(fleet.power[i, :history], 0.05)
        day[i] = base * np.exp(0.1 * rng.standard_normal(day.shape[1]))
        if i in position:
            amps[position[i]] *= (day[i] / np.maximum(fleet.power[i, history], 1e-9))[:, None]
        anomalies["vacation"] += 1
    for i in rng.choice(honest, round(missing_share * count), replace=False):
        length = int(rng.integers(1, 17))
        start = int(rng.integers(0, day.shape[1] - length))
        day[i, start : start + length] = np.nan
        anomalies["missing"] += 1
    return day, amps, volts, kinds, anomalies


def _at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    return float(np.interp(target, fpr, tpr))


def _metrics(y: np.ndarray, score: np.ndarray, kinds: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    order = np.argsort(-score, kind="stable")
    top = min(100, len(y))
    per_attack = {}
    for kind in attacks.ATTACKS:
        mask = (kinds == "") | (kinds == kind)
        if (kinds == kind).any():
            per_attack[kind] = round(float(roc_auc_score(y[mask], score[mask])), 4)
    return {
        "auc": round(float(roc_auc_score(y, score)), 4),
        "pr_auc": round(float(average_precision_score(y, score)), 4),
        "precision_at_100": round(float(y[order[:top]].mean()), 4),
        "detection_at_10pct_fpr": round(_at_fpr(fpr, tpr, 0.10), 4),
        "auc_by_attack": per_attack,
        "roc": {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()},
    }


def evaluate(
    consumers: int = 4000,
    history: int = 28,
    prevalence: float = 0.085,
    seed: int = 1,
    vacation_share: float = 0.02,
    missing_share: float = 0.05,
    large_share: float = 0.02,
) -> dict:
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor

    started = time.perf_counter()
    fleet = simulate(consumers, START, history + 1, seed, large_share)
    rng = np.random.default_rng([seed, 11])
    day, amps, volts, kinds, anomalies = _inject(
        fleet, history, prevalence, rng, vacation_share, missing_share
    )
    simulated = time.perf_counter()
    model = detector.fit(
        fleet.power[:, :history],
        fleet.large,
        fleet.amps[:, :history],
        fleet.volts[:, :history],
        seed,
    )
    fitted = time.perf_counter()
    feats = detector.features(model, day, amps, volts)
    score = detector.risk(feats)
    scored = time.perf_counter()
    y = (kinds != "").astype(int)
    X = detector.feature_matrix(feats)
    forest = -IsolationForest(random_state=seed).fit(X).score_samples(X)
    lof = LocalOutlierFactor(n_neighbors=35)
    lof.fit_predict(X)
    result = {
        "consumers": consumers,
        "history_days": history,
        "prevalence": prevalence,
        "thieves": int(y.sum()),
        "thieves_by_attack": {k: int((kinds == k).sum()) for k in attacks.ATTACKS},
        "large_consumers": len(fleet.large),
        "honest_anomalies": anomalies,
        "detector": _metrics(y, score, kinds),
        "isolation_forest": _metrics(y, forest, kinds),
        "local_outlier_factor": _metrics(y, -lof.negative_outlier_factor_, kinds),
        "seconds": {
            "simulate": round(simulated - started, 2),
            "fit": round(fitted - simulated, 2),
            "score": round(scored - fitted, 3),
        },
        "consumers_scored_per_s": round(consumers / max(scored - fitted, 1e-9), 1),
    }
    order = np.argsort(-score, kind="stable")[:20]
    result["ranking"] = [
        {
            "consumer": int(i),
            "risk": round(float(score[i]), 2),
            "thief": kinds[i] or None,
            "kind": fleet.consumers[i].kind,
        }
        for i in order
    ]
    return result
