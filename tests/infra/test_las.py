"""The LAS as a real process: quotes and sealing keys for code it measures itself."""

import httpx
import pytest

from securecloud.crypto import fingerprint, load_public_key_pem
from securecloud.runtime.errors import SealingError
from securecloud.runtime.evidence import Evidence
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.runtime.sealing import Sealer
from securecloud.runtime.sim import SimAttester, SimVerifier


@pytest.fixture(scope="module")
def las(platform_processes):
    data_dir, las, _ = platform_processes
    key = load_public_key_pem((data_dir / "las" / "platform.pub").read_bytes())
    return las.url, SimVerifier({fingerprint(key): key})


def test_quote_names_the_measured_code_and_our_report_data(las):
    url, verifier = las
    evidence = SimAttester(url, "demo-echo").evidence(b"\x05" * 64)
    claims = verifier.verify(Evidence.from_json(evidence.to_json()))
    assert claims.mrenclave == measure(load_manifest("demo-echo"))
    assert claims.report_data == b"\x05" * 64
    assert claims.tee == "simulation" and claims.tcb_status == "UpToDate"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"service": "demo-echo", "report_data": "zz"}, 422, "invalid-request"),
        ({"service": "demo-echo"}, 422, "invalid-request"),
        ({"service": "nope", "report_data": "00" * 64}, 404, "unknown-service"),
        (
            {"service": "demo-echo", "report_data": "00" * 64, "sigstruct": "{}"},
            400,
            "bad-sigstruct",
        ),
    ],
)
def test_bad_quote_requests_get_a_clear_4xx(las, body, status, reason):
    response = httpx.post(f"{las[0]}/v1/quote", json=body)
    assert response.status_code == status
    assert response.json()["reason"] == reason and response.json()["detail"]


def test_sealed_data_opens_only_for_the_same_code(las):
    url, _ = las
    echo = Sealer.from_las(url, "demo-echo")
    blob = echo.seal(b"state", b"ctx")
    assert Sealer.from_las(url, "demo-echo").unseal(blob, b"ctx") == b"state"
    with pytest.raises(SealingError):
        Sealer.from_las(url, "cas").unseal(blob, b"ctx")
    with pytest.raises(SealingError):
        echo.unseal(blob, b"other context")


def test_health_and_metrics(las):
    assert httpx.get(f"{las[0]}/healthz").json()["tee"] == "simulation"
    assert "python_info" in httpx.get(f"{las[0]}/metrics").text
