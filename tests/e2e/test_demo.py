"""`securecloud demo` runs with no external service, and cleans up."""

import subprocess
import sys


def test_demo_runs_every_step_and_cleans_up(tmp_path):
    result = subprocess.run(
        # The defaults (2,000 meters, 7 days) are `make demo`'s; a smaller fleet here.
        [sys.executable, "-m", "securecloud.cli.main", "demo", "--meters", "300", "--days", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
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
        "stopped aggregator, authenticator, kvs, cas, las",
        "demo finished",
    ):
        assert expected in out, expected
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory
