"""The two applications: fraud detection quality and speed, billing speed.

Fraud: `securecloud.apps.fraud.evaluate` on N simulated consumers (65,000; 8,000
with --quick) with 28 (14) days of history, thieves at 8.5 % and 1 %, honest
vacations and missing readings; the baselines IsolationForest and
LocalOutlierFactor run on the same features in the same run.
`fraud_consumers_per_s` is the scoring of the evaluated day for all consumers
with the fitted model (features, SOM classes, risk), in memory.

Billing: the embedded platform (LAS, CAS, KVS, attested authenticator, an
aggregator) ingests M meters (400; 100 with --quick) for 31 days; then the
billing job bills 30 days of every meter from the KVS (every reading checked
against its batch's signed root, bills signed and stored), first in one
process (the baseline, `billing_one_process_consumers_per_s`), then with one
worker process per core as the job runs by default (`billing_consumers_per_s`);
a sample of bills is exported and audited as the regulator would.

    python bench/apps.py --out bench/results/apps.json
    python bench/apps.py --quick --out /tmp/apps-quick.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results
from securecloud.apps.billing import audit as audits
from securecloud.apps.billing import tariff as tariffs
from securecloud.apps.billing.bill import Period
from securecloud.apps.billing.job import BillingContext, bill_key, bill_meters, evidence_for
from securecloud.apps.fraud.evaluate import evaluate
from securecloud.apps.metering import store
from securecloud.apps.metering.registry import Registry
from securecloud.apps.metering.store import items
from securecloud.cli.billing import regulator_keys, utility_key
from securecloud.cli.kvs import _client
from securecloud.cli.meters import run_fleet
from securecloud.infra.supervisor import IngestPorts, Supervisor, free_port

CLI = [sys.executable, "-m", "securecloud.cli.main"]
WORKERS = os.cpu_count() or 1  # billing worker processes, bill_meters' default


def fraud(consumers: int, history: int) -> dict:
    runs = {}
    for prevalence in (0.085, 0.01):
        started = time.perf_counter()
        result = evaluate(consumers, history, prevalence, seed=1)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        print(
            f"fraud {prevalence:.1%}: AUC {result['detector']['auc']} "
            f"(IF {result['isolation_forest']['auc']}, "
            f"LOF {result['local_outlier_factor']['auc']})",
            flush=True,
        )
        runs[str(prevalence)] = {k: v for k, v in result.items() if k != "ranking"}
        for name in ("detector", "isolation_forest", "local_outlier_factor"):
            runs[str(prevalence)][name].pop("roc")
    return runs


def billing(meters: int, data_dir: Path) -> dict:
    supervisor = Supervisor(data_dir)
    ports = IngestPorts(free_port(), free_port(), free_port(), free_port())
    try:
        supervisor.up(free_port(), free_port(), None, free_port(), ports)
        subprocess.run(
            [*CLI, "meters", "provision", "--count", str(meters), "--data-dir", str(data_dir)],
            check=True,
        )
        config = {
            "targets": [f"127.0.0.1:{ports.aggregator}"],
            "start": "2026-03-01",
            "days": 31,
            "speedup": 0.0,
            "window": 16,
            "timeout": 120.0,
        }
        started = time.perf_counter()
        summary = run_fleet(data_dir / "meters", meters, config)
        ingest_s = time.perf_counter() - started
        url = f"https://127.0.0.1:{ports.api}"
        subprocess.run(
            [*CLI, "ingest", "flush", "--url", url, "--data-dir", str(data_dir)], check=True
        )
        period = Period(dt.date(2026, 3, 2), 30)
        with _client(data_dir, None) as kvs:
            registry = Registry.load(kvs)
            branca = tariffs.builtin("tarifa-branca")
            keys = regulator_keys(data_dir / "metering" / "regulator.json")
            context = BillingContext(
                kvs,
                registry,
                {"lv1": branca, "lv3": branca, "mv3": tariffs.builtin("green-a4")},
                utility_key(data_dir),
                keys,
            )
            ids = list(range(1, meters + 1))
            timed = {}
            for workers in (1, WORKERS):  # the baseline (one process), then the job's default
                started = time.perf_counter()
                bills = []
                for item in items(ids):
                    bills += bill_meters(context, item, period, int(time.time()), workers)
                timed[workers] = time.perf_counter() - started
                print(f"billing with {workers} process(es): {timed[workers]:.2f} s", flush=True)
                if workers == 1:  # so that both runs store new bills, none replaces one
                    kvs.batch(
                        store.BUCKET,
                        [{"op": "delete", "key": bill_key(period, m)} for m in ids],
                    )
            billing_s = timed[WORKERS]
            audited, audit_s = 0, 0.0
            public = [context.utility_key.public_key()]
            for meter in ids[:: max(1, len(ids) // 10)]:
                bill, evidence = evidence_for(kvs, meter, period, keys)
                began = time.perf_counter()
                tariff = context.tariffs[bill["supply"]]
                result = audits.audit(bill, evidence, tariff, public, keys)
                audit_s += time.perf_counter() - began
                assert result.ok, result.problems
                audited += 1
    finally:
        supervisor.stop_all()
    return {
        "meters": meters,
        "readings_ingested": summary["acked"].get("stored", 0),
        "ingest_s": round(ingest_s, 1),
        "bills": len(bills),
        "billing_s": round(billing_s, 2),
        "billing_consumers_per_s": round(len(bills) / billing_s, 1),
        "workers": WORKERS,
        "one_process_consumers_per_s": round(len(bills) / timed[1], 1),
        "speedup_over_one_process": round(timed[1] / billing_s, 2),
        "readings_per_bill": round(sum(b["readings"]["count"] for b in bills) / len(bills), 1),
        "bills_with_gaps": sum(1 for b in bills if b["readings"]["missing_count"]),
        "audited": audited,
        "audit_ms_per_bill": round(1000 * audit_s / max(audited, 1), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="8,000 consumers, 100 meters")
    p.add_argument("--skip-billing", action="store_true")
    args = p.parse_args()
    consumers, history = (8000, 14) if args.quick else (65000, 28)
    fraud_runs = fraud(consumers, history)
    with tempfile.TemporaryDirectory(prefix="bench-apps-") as tmp:
        bill = {} if args.skip_billing else billing(100 if args.quick else 400, Path(tmp))
    main_run = fraud_runs["0.085"]
    ours = main_run["detector"]
    results = {
        "fraud_consumers": consumers,
        "fraud_history_days": history,
        "fraud_auc": ours["auc"],
        "fraud_auc_min_attack": min(ours["auc_by_attack"].values()),
        "fraud_auc_by_attack": ours["auc_by_attack"],
        "fraud_pr_auc": ours["pr_auc"],
        "fraud_precision_at_100": ours["precision_at_100"],
        "fraud_detection_at_10pct_fpr": ours["detection_at_10pct_fpr"],
        "fraud_auc_isolation_forest": main_run["isolation_forest"]["auc"],
        "fraud_auc_local_outlier_factor": main_run["local_outlier_factor"]["auc"],
        "fraud_pr_auc_isolation_forest": main_run["isolation_forest"]["pr_auc"],
        "fraud_auc_1pct": fraud_runs["0.01"]["detector"]["auc"],
        "fraud_consumers_per_s": main_run["consumers_scored_per_s"],
        "fraud_runs": fraud_runs,
        **{k if k.startswith("billing") else f"billing_{k}": v for k, v in bill.items()},
    }
    rows = [
        ("fraud_auc", results["fraud_auc"], "target >= 0.90 (8.5 % thieves)"),
        ("fraud_auc_min_attack", results["fraud_auc_min_attack"], "target >= 0.80"),
        ("fraud_auc_isolation_forest", results["fraud_auc_isolation_forest"], "baseline"),
        ("fraud_auc_local_outlier_factor", results["fraud_auc_local_outlier_factor"], "baseline"),
        ("fraud_pr_auc", results["fraud_pr_auc"], "IsolationForest: "
         f"{results['fraud_pr_auc_isolation_forest']}"),
        ("fraud_detection_at_10pct_fpr", results["fraud_detection_at_10pct_fpr"], ""),
        ("fraud_auc_1pct", results["fraud_auc_1pct"], "1 % thieves"),
        ("fraud_consumers_per_s", results["fraud_consumers_per_s"], "target >= 1,000"),
    ]  # fmt: skip
    if bill:
        rows.append(
            (
                "billing_consumers_per_s",
                bill["billing_consumers_per_s"],
                f"30 days each, from the KVS, {results['billing_workers']} worker processes; "
                "target >= 200",
            )
        )
        rows.append(
            (
                "billing_one_process_consumers_per_s",
                results["billing_one_process_consumers_per_s"],
                f"baseline, same run; speedup {results['billing_speedup_over_one_process']}",
            )
        )
    write_results(args.out, "apps", results, rows)
    print(json.dumps({k: v for k, v in results.items() if k != "fraud_runs"}, indent=2))


if __name__ == "__main__":
    main()
