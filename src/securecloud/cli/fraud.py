"""`securecloud fraud`: theft detection, and the harness that measures it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import console, fail, handle_errors, print_json

app = typer.Typer(help="Fraud detection: rank consumers by their risk of energy theft.")


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
    """Inject theft (Jokar et al. h1-h6, phasor bypass) into honest simulated consumers
    with honest anomalies, rank them, and report ROC-AUC (overall and per attack),
    PR-AUC, precision@100 and the detection rate at 10 % false positives, beside
    IsolationForest and LocalOutlierFactor on the same features."""
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
