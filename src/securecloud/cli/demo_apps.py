"""The demo's second half: billing, the regulator's audit, fraud ranking, the report.

Runs on what the ingestion stored: every reading it touches is checked against
its batch's signed root first.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

from securecloud.cli.common import console

EVALUATION_CONSUMERS = 4000


def run(
    step, data_dir: Path, kvs_url: str, meters: int, days: int, start: dt.date, thieves, out: Path
):
    """Steps 12-15. `thieves`: meter id -> attack kind (the ground truth)."""
    from securecloud.apps.billing import audit as audits
    from securecloud.apps.billing import bill as bills
    from securecloud.apps.billing import tariff as tariffs
    from securecloud.apps.billing.bill import Period
    from securecloud.apps.billing.job import BillingContext, bill_meters, load_signed
    from securecloud.apps.fraud import detector
    from securecloud.apps.fraud.data import load as load_curves
    from securecloud.apps.fraud.evaluate import evaluate
    from securecloud.apps.metering.registry import Registry
    from securecloud.apps.metering.store import items
    from securecloud.cli import report
    from securecloud.cli.billing import regulator_keys, utility_key
    from securecloud.cli.kvs import _client

    keys = regulator_keys(data_dir / "metering" / "regulator.json")
    period = Period(start + dt.timedelta(days=1), days - 1)
    ids = list(range(1, meters + 1))
    with _client(data_dir, kvs_url) as kvs:
        registry = Registry.load(kvs)
        branca = tariffs.builtin("tarifa-branca")
        green = tariffs.builtin("green-a4")
        context = BillingContext(
            kvs, registry, {"lv1": branca, "lv3": branca, "mv3": green}, utility_key(data_dir), keys
        )

        step(
            f"Bill every meter for {period.days} days from its signed readings (tarifa branca; "
            "green tariff with a demand charge above 1 kV)",
        )
        began = time.perf_counter()
        made = []
        for item in items(ids):
            made += bill_meters(context, item, period, int(time.time()))
        billing_s = time.perf_counter() - began
        total = sum(Decimal(b["total"]) for b in made)
        by_window: dict[str, float] = {}
        for b in made:
            for window, wh in b["energy_by_window_wh"].items():
                by_window[window] = by_window.get(window, 0) + wh / 1000
        console.print(
            f"   {len(made):,} bills, "
            f"{sum(b['readings']['count'] for b in made):,} signed readings, "
            f"{sum(b['readings']['missing_count'] for b in made):,} intervals missing "
            f"({sum(1 for b in made if b['readings']['missing_count'])} bills list gaps); "
            f"total {total:,} BRL in {billing_s:.1f} s"
        )

        step("Verify every bill as the regulator: verification keys, tariff and evidence only")
        began = time.perf_counter()
        signed, roots = load_signed(kvs, set(ids), period, keys, proofs=True)
        public = [context.utility_key.public_key()]
        failures = []
        for b in made:  # as `billing verify` does, minus the JSON round trip of the evidence
            chosen = bills.select(signed[b["meter"]], period)
            tariff = context.tariffs[b["supply"]]
            result = audits.check(b, chosen.readings, chosen.opening, roots, tariff, public, keys)
            if not result.ok:
                failures.append(result.to_json())
        tampered = dict(made[0], total="0.00")
        first = made[0]
        chosen = bills.select(signed[first["meter"]], period)
        evidence = audits.make_evidence(first["meter"], chosen.readings, chosen.opening, roots)
        caught = audits.audit(
            tampered, evidence, branca if first["supply"] != "mv3" else green, public, keys
        )
        console.print(
            f"   {len(made) - len(failures):,} of {len(made):,} bills verified "
            f"({time.perf_counter() - began:.1f} s); a bill altered after signing: "
            f"[green]refused ({caught.problems[0]['check']})[/]"
        )

        step(
            f"Rank consumers by theft risk on day {days} ({len(thieves)} meters tampered "
            "with that day's readings)",
        )
        large = [m for m in ids if registry.get(m).meter_class == "mv3"]
        stored = load_curves(kvs, ids, large, start, days, keys)
    history, day = stored.power[:, : days - 1], stored.power[:, days - 1]
    model = detector.fit(
        history, stored.large, stored.amps[:, : days - 1], stored.volts[:, : days - 1]
    )
    feats = detector.features(model, day, stored.amps[:, days - 1], stored.volts[:, days - 1])
    risk = detector.risk(feats)
    order = np.argsort(-risk, kind="stable")
    truth = np.array([1 if int(m) in thieves else 0 for m in stored.meters])
    from sklearn.metrics import roc_auc_score, roc_curve

    demo_auc = float(roc_auc_score(truth, risk)) if 0 < truth.sum() < len(truth) else None
    top = min(100, len(order))
    console.print(
        f"   ROC-AUC on the ingested data {demo_auc:.3f}; {int(truth[order[:top]].sum())} of the "
        f"top {top} are thieves; the top 5: "
        + ", ".join(
            f"{int(stored.meters[i])} ({thieves.get(int(stored.meters[i]), 'honest')})"
            for i in order[:5]
        )
    )
    console.print(
        f"   and the standard evaluation ({EVALUATION_CONSUMERS:,} consumers, "
        "Jokar h1-h6 + phasor bypass):"
    )
    evaluation = evaluate(EVALUATION_CONSUMERS, 14, 0.085, seed=1)
    for name in ("detector", "isolation_forest", "local_outlier_factor"):
        m = evaluation[name]
        console.print(
            f"     {name:<21} ROC-AUC {m['auc']:.3f}  PR-AUC {m['pr_auc']:.3f}  "
            f"detection@10%FPR {m['detection_at_10pct_fpr']:.3f}"
        )

    step(f"Write the report: {out / 'report.html'}")
    suspects = [
        {
            "rank": r + 1,
            "meter": int(stored.meters[i]),
            "risk": float(risk[i]),
            "thief": thieves.get(int(stored.meters[i])),
            "day": np.nan_to_num(day[i]).tolist(),
            "regular": model.regular[i].tolist(),
        }
        for r, i in enumerate(order[:8])
    ]
    fpr, tpr, _ = roc_curve(truth, risk)
    rocs = {f"demo, {meters:,} ingested meters": {"fpr": fpr, "tpr": tpr, "auc": demo_auc}}
    for name in ("detector", "isolation_forest", "local_outlier_factor"):
        m = evaluation[name]
        rocs[f"evaluation: {name}"] = {
            "fpr": m["roc"]["fpr"],
            "tpr": m["roc"]["tpr"],
            "auc": m["auc"],
        }
    samples = {}
    for kind in ("residential", "commercial", "agricultural", "large"):
        for i, m in enumerate(stored.meters):
            if registry.get(int(m)) and _kind(registry.get(int(m)).meter_class, kind):
                samples[f"meter {int(m)} ({kind})"] = np.nan_to_num(stored.power[i])
                break
    doc = {
        "summary": f"{meters:,} meters, {days} days: ingested, billed, audited and ranked.",
        "billing": {
            "period": period.to_json(),
            "bills": len(made),
            "total": str(total),
            "energy_by_window_kwh": by_window,
            "audit": {"verified": len(made) - len(failures), "failed": failures[:10]},
        },
        "fraud": {
            "thieves": {str(k): v for k, v in sorted(thieves.items())},
            "demo_auc": demo_auc,
            "top": [{k: v for k, v in s.items() if k not in ("day", "regular")} for s in suspects],
            "evaluation": {
                k: {kk: vv for kk, vv in v.items() if kk != "roc"}
                for k, v in evaluation.items()
                if k in ("detector", "isolation_forest", "local_outlier_factor")
            },
        },
        "tables": {
            "Billing and audit": [
                [
                    "bills",
                    "signed readings",
                    "missing intervals",
                    "total (BRL)",
                    "verified by the regulator",
                ],
                [
                    len(made),
                    sum(b["readings"]["count"] for b in made),
                    sum(b["readings"]["missing_count"] for b in made),
                    str(total),
                    f"{len(made) - len(failures)} of {len(made)}",
                ],
            ],
            "Top of the fraud ranking": [["rank", "meter", "risk", "truth"]]
            + [
                [s["rank"], s["meter"], f"{s['risk']:.1f}", s["thief"] or "honest"]
                for s in suspects
            ],
        },
    }
    figures = {
        "ranking": (
            "Top suspects: the evaluated day (red) against each one's regular day (grey)",
            report.ranking_figure(suspects),
        ),
        "roc": (
            "ROC curves: our ranking on the ingested meters, and the standard evaluation "
            "against IsolationForest and LOF",
            report.roc_figure(rocs),
        ),
        "billing": (
            "Billing: energy per tariff window and the distribution of bill totals",
            report.billing_figure(by_window, [float(b["total"]) for b in made], "BRL"),
        ),
        "consumption": (
            "Consumption of a few meters over the simulated days (15-minute demand)",
            report.consumption_figure(samples, days),
        ),
    }
    path = report.write(out, doc, figures)
    console.print(f"   {path} and {out / 'report.json'}")
    return doc


def _kind(meter_class: str, kind: str) -> bool:
    return {"large": meter_class == "mv3", "residential": meter_class == "lv1"}.get(
        kind, meter_class == "lv3"
    )
