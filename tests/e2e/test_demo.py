"""`securecloud demo` runs the whole pipeline with no external service, writes a report
that a real browser renders with its images, and cleans up."""

import re
import shutil
import subprocess
import sys

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work, report = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("report")
    # The defaults (2,000 meters, 7 days) are `make demo`'s; a smaller fleet here.
    command = [sys.executable, "-m", "securecloud.cli.main", "demo", "--meters", "300"]
    command += ["--days", "3", "--collector", "--out", str(report)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    return result, work, report


def test_demo_runs_every_step_and_cleans_up(demo_run):
    result, work, report = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        "API_TOKEN received: 32 characters",
        "injected file tls/service.crt",
        "wrong-measurement",
        "entries verify",
        "encrypted frames sent",
        "signed batches and",
        "signature valid under the regulator-registered key",
        "300 bills",
        "300 of 300 bills verified",
        "refused (bill-signature)",
        "ROC-AUC on the ingested data",
        "verified readings exported as the head-end CSV",
        "SELECT over CascaDB:",
        "report.html",
        "stopped sql, aggregator, authenticator, kvs, cas, las",
        "demo finished",
    ):
        assert expected in out, expected
    assert list(work.iterdir()) == []  # nothing left behind in the working directory
    names = {p.name for p in report.iterdir()}
    assert {"report.html", "report.json", "ranking.png", "roc.png"} <= names


def test_the_report_renders_in_headless_chromium_with_its_images(demo_run, tmp_path):
    result, _work, report = demo_run
    assert result.returncode == 0, result.stderr
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    page = (report / "report.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, *profile, "--virtual-time-budget=10000", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    images = dom.count("<img ")
    assert images == 4
    assert f'data-images-loaded="{images}"' in dom  # every image decoded by the browser
    assert len(re.findall(r'<img [^>]*data-loaded="1"', dom)) == images
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *CHROMIUM_FLAGS, *profile, "--window-size=1200,1600",
         f"--screenshot={shot}", page],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1000 and (pixels[..., :3] < 0.5).mean() > 0.005  # not blank
