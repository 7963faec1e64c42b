"""Billing as an Asperathos job: the task attested batch workers run, and what CAS gives them.

An item is JSON: {"meters": [ids], "start": "YYYY-MM-DD", "days": N,
"tariff": name, "large_tariff": name}; `job.items` cuts the meters. The
worker's CAS session (`billing`, written by the batch manager from `policy`)
admits only the measured batch worker and injects, after attestation:

    billing/kvs.json        the KVS URL and CA, and the `billing` tenant key
                            (exported by the `kvs` session to this one)
    billing/utility.pem     the utility's bill-signing key (a P-256 private-key
                            secret that survives policy updates: regulators hold
                            its public half)
    billing/regulator.json  the regulator-registered keys readings are checked with

so the signing key and the KVS key never exist outside attested workers and
CAS. `securecloud billing submit` writes the public half to
<data dir>/billing/utility.pub.pem.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

SESSION = "billing"


def policy(data_dir: Path) -> dict:
    """The fragment of the worker's CAS session (services.batch.tasks.POLICY_GROUP)."""
    from securecloud.services.kvs.deploy import tenant_access

    access = tenant_access(data_dir, SESSION, "billing/kvs.json")
    regulator = (data_dir / "metering" / "regulator.json").read_text()
    return {
        "session": SESSION,
        "injection_files": [
            *access["injection_files"],
            {"path": "billing/utility.pem", "content": "$$SC::utility_key$$"},
            {"path": "billing/regulator.json", "content": regulator},
        ],
        "secrets": [
            {"name": "utility_key", "kind": "private-key", "algorithm": "p256", "migrate": True}
        ],
        "imports": access["imports"],
    }


def item(meters: list[int], start: dt.date, days: int, tariff: str, large_tariff: str) -> str:
    return json.dumps(
        {
            "meters": meters,
            "start": start.isoformat(),
            "days": days,
            "tariff": tariff,
            "large_tariff": large_tariff,
        }
    )


def run(payload: str) -> None:
    """Bill one item's meters (the batch task `billing`); raises on any failure, so the
    item is retried and, after max_retries, listed in the job's errors."""
    from securecloud.apps.billing import tariff as tariffs
    from securecloud.apps.billing.bill import Period
    from securecloud.apps.billing.job import BillingContext, bill_meters
    from securecloud.apps.metering.registry import Registry
    from securecloud.crypto import load_private_key_pem, load_public_key_pem
    from securecloud.services.kvs.deploy import injected_client

    doc = json.loads(payload)
    period = Period(dt.date.fromisoformat(doc["start"]), int(doc["days"]))
    regulator = json.loads(Path("billing/regulator.json").read_text())
    keys = [load_public_key_pem(p.encode()) for p in regulator["signing_keys"]]
    small = tariffs.builtin(doc.get("tariff", "tarifa-branca"))
    large = tariffs.builtin(doc.get("large_tariff", "green-a4"))
    with injected_client(Path("billing/kvs.json")) as kvs:
        context = BillingContext(
            kvs,
            Registry.load(kvs),
            {"lv1": small, "lv3": small, "mv3": large},
            load_private_key_pem(Path("billing/utility.pem").read_bytes()),
            keys,
        )
        bill_meters(context, [int(m) for m in doc["meters"]], period, int(time.time()))
