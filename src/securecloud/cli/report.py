"""The demo's report: report.json (every figure's data) and report.html (pictures first).

The HTML is one self-contained page next to its PNG images (matplotlib, Agg).
Each image marks itself loaded (`data-loaded="1"`) when the browser has
decoded it, and the page counts them in `body[data-images-loaded]`, so a
headless browser test can tell a page that renders from one that only parses.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HOURS = np.arange(96) / 4


def consumption_figure(curves: dict[str, np.ndarray], days: int):
    """A week (or `days`) of 15-minute demand for a few consumers, in kW."""
    fig, axes = plt.subplots(len(curves), 1, figsize=(10, 1.8 * len(curves)), sharex=True)
    axes = np.atleast_1d(axes)
    x = np.arange(days * 96) / 96
    for ax, (label, curve) in zip(axes, curves.items(), strict=True):
        ax.plot(x, curve.reshape(-1) / 1000, lw=0.8)
        ax.set_ylabel("kW")
        ax.set_title(label, fontsize=9, loc="left")
    axes[-1].set_xlabel("day")
    fig.tight_layout()
    return fig


def ranking_figure(suspects: list[dict]):
    """Each top suspect's evaluated day against its regular day."""
    cols = 4
    rows = max(1, -(-len(suspects) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(suspects) :]:
        ax.axis("off")
    for ax, s in zip(axes.flat, suspects, strict=False):
        ax.plot(HOURS, np.asarray(s["regular"]) / 1000, color="grey", lw=1, label="regular")
        ax.plot(HOURS, np.asarray(s["day"]) / 1000, color="crimson", lw=1, label="evaluated day")
        truth = s["thief"] or "honest"
        ax.set_title(
            f"#{s['rank']} meter {s['meter']}  risk {s['risk']:.1f}  ({truth})", fontsize=8
        )
        ax.set_xticks([0, 6, 12, 18, 24])
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.supylabel("kW", fontsize=8)
    fig.tight_layout()
    return fig


def roc_figure(curves: dict[str, dict]):
    """ROC curves: name -> {"fpr", "tpr", "auc"}."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.axvline(0.10, ls="--", lw=0.7, color="grey")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("detection rate")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def billing_figure(by_window: dict[str, float], totals: list[float], currency: str):
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.bar(list(by_window), [v / 1000 for v in by_window.values()], color="steelblue")
    a.set_ylabel("MWh")
    a.set_title("energy billed per tariff window", fontsize=9)
    b.hist(totals, bins=40, color="darkseagreen")
    b.set_xlabel(currency)
    b.set_title("bill totals", fontsize=9)
    fig.tight_layout()
    return fig


def write(out: Path, doc: dict, figures: dict[str, tuple[str, object]]) -> Path:
    """Write the PNGs, report.json and report.html into `out`; returns the HTML path.
    figures: file stem -> (caption, matplotlib figure), in the order to show them."""
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for stem, (caption, fig) in figures.items():
        fig.savefig(out / f"{stem}.png", dpi=110)
        plt.close(fig)
        images.append((stem, caption))
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str))
    pictures = "\n".join(
        f'<figure><img src="{stem}.png" alt="{html.escape(caption)}" '
        'onload="this.dataset.loaded=1; count()" onerror="this.dataset.loaded=0">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for stem, caption in images
    )
    tables = "\n".join(_table(title, rows) for title, rows in doc.get("tables", {}).items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>securecloud demo report</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222 }}
figure {{ margin: 1.5em 0 }} img {{ max-width: 100% }}
figcaption {{ font-size: 0.9em; color: #555 }}
table {{ border-collapse: collapse; margin: 1em 0 }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; font-size: 0.9em; text-align: left }}
.note {{ font-size: 0.85em; color: #666 }}
</style>
<script>
function count() {{
  document.body.dataset.imagesLoaded =
    document.querySelectorAll('img[data-loaded="1"]').length;
}}
</script></head>
<body data-images-loaded="0">
<h1>securecloud demo report</h1>
<p class="note">{html.escape(doc.get("summary", ""))}</p>
{pictures}
{tables}
<p class="note">Simulation mode: the attestation protocol ran with a software quoting key;
no hardware protected these processes. Data: report.json.</p>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path


def _table(title: str, rows: list[list]) -> str:
    head, *body = rows
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    lines = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{cells}</tr>{lines}</table>"
