"""Fraud detection: the attacks do what the literature defines, and the detector
ranks thieves above honest consumers (including honest anomalies) on a fixed seed."""

import numpy as np
import pytest

from securecloud.apps.fraud import detector
from securecloud.apps.fraud.evaluate import evaluate
from securecloud.apps.metering import theft as attacks


def test_each_attack_changes_the_day_as_defined():
    rng = np.random.default_rng(0)
    x = 100 + 50 * np.sin(np.linspace(0, 2 * np.pi, 96)) + rng.random(96)
    h1 = attacks.attack_curve("h1", x, rng)
    assert (h1 / x).min() >= 0.1 and np.allclose(h1 / x, (h1 / x)[0]) and (h1 / x)[0] <= 0.8
    h2 = attacks.attack_curve("h2", x, rng)
    zeros = np.flatnonzero(h2 == 0)
    assert len(zeros) >= 16 and np.all(np.diff(zeros) == 1)
    assert np.array_equal(h2[h2 > 0], x[h2 > 0])
    h3 = attacks.attack_curve("h3", x, rng)
    assert np.all((h3 / x >= 0.1) & (h3 / x <= 0.8)) and np.std(h3 / x) > 0
    h4 = attacks.attack_curve("h4", x, rng)
    assert np.all((h4 >= 0.1 * x.mean()) & (h4 <= 0.8 * x.mean()))
    assert np.allclose(attacks.attack_curve("h5", x, rng), x.mean())
    assert np.array_equal(attacks.attack_curve("h6", x, rng), x[::-1])
    with pytest.raises(ValueError, match="attack"):
        attacks.attack_curve("h9", x, rng)
    amps = np.ones((96, 3))
    metered, factors = attacks.bypass_phases(amps, rng)
    assert 1 <= (factors < 1).sum() <= 2 and np.allclose(metered, amps * factors)


def test_missing_intervals_are_filled_and_flat_days_have_no_correlation():
    day = np.array([[1.0, np.nan, 3.0, np.nan], [np.nan] * 4])
    assert np.allclose(detector.fill_missing(day), [[1, 2, 3, 3], [0, 0, 0, 0]])
    assert detector.correlation(np.ones(4), np.arange(4.0)) == 0.0


def test_detector_ranks_thieves_above_honest_consumers_and_above_lof():
    result = evaluate(consumers=1500, history=14, prevalence=0.085, seed=3)
    ours = result["detector"]
    assert result["thieves"] == round(0.085 * 1500)
    assert result["honest_anomalies"]["vacation"] > 0 and result["honest_anomalies"]["missing"] > 0
    assert ours["auc"] >= 0.9 and min(ours["auc_by_attack"].values()) >= 0.8
    assert ours["auc"] > result["local_outlier_factor"]["auc"]
    assert ours["detection_at_10pct_fpr"] >= 0.8
    # a detector that only looks at correlation misses the uniform reduction (h1)
    assert ours["auc_by_attack"]["h1"] >= 0.85


def test_correlation_alone_is_blind_to_a_uniform_reduction():
    rng = np.random.default_rng(1)
    x = 100 + 50 * np.sin(np.linspace(0, 2 * np.pi, 96))
    assert detector.correlation(attacks.attack_curve("h1", x, rng), x) == pytest.approx(1.0)


def test_thieves_are_chosen_deterministically_and_tamper_with_what_the_meter_reports():
    import datetime as dt

    from securecloud.apps.metering.model import consumer_for, day_reports
    from securecloud.apps.metering.reading import Reading

    chosen = [attacks.kind_for(1, m, 0.1, False) for m in range(2000)]
    assert chosen == [attacks.kind_for(1, m, 0.1, False) for m in range(2000)]
    share = sum(k is not None for k in chosen) / len(chosen)
    assert 0.08 < share < 0.12 and "phasor" not in chosen
    assert {attacks.kind_for(1, m, 1.0, True) for m in range(200)} >= {"phasor", "h1"}
    assert attacks.kind_for(1, 5, 0.0, False) is None
    consumer = consumer_for(1, 3)
    day = dt.date(2026, 3, 4)

    def energy(theft):
        blobs, _t, end = day_reports(
            consumer, day, 1, 0.0, np.random.default_rng(7), 0, True, theft
        )
        return end, [Reading.decode(b) for b in blobs]

    honest, _ = energy(None)
    reversed_end, reversed_day = energy("h6")
    zeroed_end, zeroed = energy("h2")
    assert zeroed_end < honest and any(r.total_active == 0 for r in zeroed)
    assert reversed_day[0].total_active > 0 and abs(reversed_end - honest) < 0.5 * honest
