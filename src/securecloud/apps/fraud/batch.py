"""Fraud detection as an Asperathos job: the task attested batch workers run.

An item is JSON: {"meters": [ids], "day": "YYYY-MM-DD", "history": days}
(`store.items` cuts the meters within a segment group). The worker reads the
item's readings of the history days and the evaluated day from the KVS (every
record checked against its batch's signed root), learns the regular days and a
SOM of day shapes on the history, scores the day, and stores the item's
scores at `fraud/<day>/<first meter:010d>.json`; `ranking` merges the items
into one ranking. Its CAS session (`fraud`, from `policy`) injects after
attestation the KVS URL with the `fraud` tenant key and the regulator's keys.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

SESSION = "fraud"
PREFIX = "fraud/"


def policy(data_dir: Path) -> dict:
    """The fragment of the worker's CAS session (services.batch.tasks.POLICY_GROUP)."""
    from securecloud.services.kvs.deploy import tenant_access

    access = tenant_access(data_dir, SESSION, "fraud/kvs.json")
    regulator = (data_dir / "metering" / "regulator.json").read_text()
    return {
        "session": SESSION,
        "injection_files": [
            *access["injection_files"],
            {"path": "fraud/regulator.json", "content": regulator},
        ],
        "imports": access["imports"],
    }


def item(meters: list[int], day: dt.date, history: int) -> str:
    return json.dumps({"meters": meters, "day": day.isoformat(), "history": history})


def result_key(day: dt.date, first_meter: int) -> str:
    return f"{PREFIX}{day.isoformat()}/{first_meter:010d}.json"


def score(storage, meters: list[int], day: dt.date, history: int, public_keys) -> dict:
    """Scores of `meters` on `day`, learnt from the `history` days before it."""
    from securecloud.apps.fraud import detector
    from securecloud.apps.fraud.data import load
    from securecloud.apps.metering.registry import Registry

    registry = Registry.load(storage)
    large = [m for m in meters if (r := registry.get(m)) is not None and r.meter_class == "mv3"]
    first = day - dt.timedelta(days=history)
    curves = load(storage, meters, large, first, history + 1, public_keys)
    model = detector.fit(
        curves.power[:, :history],
        curves.large,
        curves.amps[:, :history],
        curves.volts[:, :history],
    )
    feats = detector.features(
        model, curves.power[:, history], curves.amps[:, history], curves.volts[:, history]
    )
    risk = detector.risk(feats)
    missing = np.isnan(curves.power[:, history]).sum(axis=1)
    return {
        "day": day.isoformat(),
        "history_days": history,
        "meters": curves.meters.tolist(),
        "risk": np.round(risk, 3).tolist(),
        "features": {k: np.round(v, 3).tolist() for k, v in feats.items()},
        "missing_intervals": missing.tolist(),
    }


def ranking(storage, day: dt.date) -> list[dict]:
    """Every item's scores of `day`, merged, highest risk first."""
    from securecloud.apps.metering import store

    rows: list[dict] = []
    start = ""
    prefix = f"{PREFIX}{day.isoformat()}/"
    while listed := storage.list(store.BUCKET, prefix, start, 1000):
        for entry in listed:
            doc = json.loads(storage.get(store.BUCKET, entry["key"]))
            rows += [
                {"meter": m, "risk": r, "missing_intervals": n}
                for m, r, n in zip(
                    doc["meters"], doc["risk"], doc["missing_intervals"], strict=True
                )
            ]
        start = listed[-1]["key"]
    rows.sort(key=lambda row: (-row["risk"], row["meter"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def run(payload: str) -> None:
    """Score one item (the batch task `fraud`) and store its scores in the KVS."""
    from securecloud.apps.metering import store
    from securecloud.crypto import load_public_key_pem
    from securecloud.services.kvs.deploy import injected_client

    doc = json.loads(payload)
    day = dt.date.fromisoformat(doc["day"])
    meters = sorted(int(m) for m in doc["meters"])
    regulator = json.loads(Path("fraud/regulator.json").read_text())
    keys = [load_public_key_pem(p.encode()) for p in regulator["signing_keys"]]
    with injected_client(Path("fraud/kvs.json")) as kvs:
        result = score(kvs, meters, day, int(doc["history"]), keys)
        kvs.put(store.BUCKET, result_key(day, meters[0]), json.dumps(result).encode())
