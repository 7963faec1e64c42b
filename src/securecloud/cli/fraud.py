"""`securecloud fraud`: theft detection, and the harness that measures it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import (
    DEFAULT_DATA_DIR,
    DataDir,
    console,
    fail,
    handle_errors,
    print_json,
)

app = typer.Typer(
    help="Fraud detection: rank consumers by their risk of energy theft.", no_args_is_help=True
)


@app.command()
@handle_errors
def evaluate(
    consumers: Annotated[int, typer.Option(help="Simulated consumers.", min=100)] = 4000,
    history: Annotated[
        int, typer.Option(help="Training days before the evaluated day.", min=7)
    ] = 28,
    prevalence: Annotated[
        list[float] | None,
        typer.Option(help="Share of thieves (repeatable; default 0.085 and 0.01)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (the run is reproducible).")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the full results (JSON) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure the detector on simulated consumers with injected theft.

    Injects Jokar et al.'s h1-h6 and a phase bypass into honest simulated consumers with
    honest anomalies, ranks them, and reports ROC-AUC (overall and per attack), PR-AUC,
    precision@100 and the detection rate at 10 % false positives, beside IsolationForest
    and LocalOutlierFactor on the same features."""
    from securecloud.apps.fraud.evaluate import evaluate as run

    shares = prevalence or [0.085, 0.01]
    if bad := [p for p in shares if not 0 < p < 0.5]:
        fail(f"prevalence: {bad[0]} is not between 0 and 0.5")
    results = []
    for share in shares:
        with console.status(f"evaluating {consumers:,} consumers at {share:.1%} thieves"):
            results.append(run(consumers, history, share, seed))
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
    if as_json:
        print_json([{k: v for k, v in r.items() if k != "ranking"} for r in results])
        return
    for r in results:
        console.print(
            f"[bold]{r['consumers']:,} consumers, {r['prevalence']:.1%} thieves "
            f"({r['thieves']}), {r['history_days']} days of history[/]"
        )
        for name in ("detector", "isolation_forest", "local_outlier_factor"):
            m = r[name]
            console.print(
                f"  {name:<21} ROC-AUC {m['auc']:.3f}  PR-AUC {m['pr_auc']:.3f}  "
                f"precision@100 {m['precision_at_100']:.2f}  "
                f"detection@10%FPR {m['detection_at_10pct_fpr']:.3f}"
            )
        console.print(
            "  per attack (detector): "
            + "  ".join(f"{k} {v:.3f}" for k, v in r["detector"]["auc_by_attack"].items())
        )


@app.command()
@handle_errors
def submit(
    day: Annotated[str, typer.Option(help="The day to score (YYYY-MM-DD, UTC).")],
    history: Annotated[int, typer.Option(help="Days before it to learn from.", min=1)] = 14,
    meters: Annotated[
        str | None, typer.Option(help="Meters to score: N, N-M, comma separated (default all).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Attested workers at start.", min=1)] = 1,
    deadline: Annotated[float, typer.Option(help="Seconds the job should take at most.")] = 600,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Score a day's stored readings as an Asperathos job, and wait for it.

    Attested batch workers (the `fraud` CAS session: KVS key and regulator keys from CAS)
    score groups of meters and store their scores in the KVS (fraud/<day>/); see
    `securecloud fraud ranking`. Exit 1 unless the job finished."""
    from securecloud.apps.fraud.batch import item
    from securecloud.apps.metering.registry import Registry
    from securecloud.apps.metering.store import items
    from securecloud.cli.batch import run_job
    from securecloud.cli.billing import _chosen
    from securecloud.cli.kvs import _client

    try:
        when = dt.date.fromisoformat(day)
    except ValueError:
        fail(f"day: {day!r} is not YYYY-MM-DD")
    with _client(data_dir, None) as kvs:
        chosen = _chosen(meters, Registry.load(kvs))
    work = [item(group, when, history) for group in items(chosen)]
    run = run_job(data_dir, "fraud", work, workers, deadline)
    sample = run.get("last_sample") or {}
    console.print(
        f"{run['id']} {run['status']}: {sample.get('done', 0)}/{sample.get('total', 0)} items"
    )
    if run["status"] != "finished":
        raise typer.Exit(1)


@app.command()
@handle_errors
def ranking(
    day: Annotated[str, typer.Option(help="The scored day (YYYY-MM-DD).")],
    top: Annotated[int, typer.Option(help="Rows to show.", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole ranking as JSON.")] = (
        False
    ),
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """The ranking a `fraud submit` job stored: consumer units by theft risk, highest first."""
    from securecloud.apps.fraud.batch import ranking as merged
    from securecloud.cli.kvs import _client

    try:
        when = dt.date.fromisoformat(day)
    except ValueError:
        fail(f"day: {day!r} is not YYYY-MM-DD")
    with _client(data_dir, None) as kvs:
        rows = merged(kvs, when)
    if not rows:
        fail(f"day: no scores stored for {day} (run `securecloud fraud submit --day {day}`)")
    if as_json:
        print_json(rows)
        return
    for row in rows[:top]:
        console.print(
            f"{row['rank']:>5}  meter {row['meter']:>8}  risk {row['risk']:8.2f}"
            + (
                f"  ({row['missing_intervals']} intervals missing)"
                if row["missing_intervals"]
                else ""
            )
        )
