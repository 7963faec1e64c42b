"""The local executor with a real LAS and CAS: workers CAS refuses are reported, not retried."""

import time

from securecloud.infra.cas.client import CasClient
from securecloud.runtime.launcher import LaunchSpec
from securecloud.services.batch.local_executor import LocalExecutor


def test_a_worker_refused_by_attestation_is_reported_with_the_reason(platform_processes, tmp_path):
    data_dir, las, cas = platform_processes
    ca_file = data_dir / "cas" / "ca.crt"
    with CasClient(cas.url, ca_file) as anonymous:
        owner = anonymous.enroll(tmp_path / "owner")
    with CasClient(cas.url, ca_file, owner) as client:  # a policy listing other code
        client.apply(
            f'name: refused\nservices: [{{name: worker, mrenclaves: ["{"0" * 64}"]}}]\n'
            "security: {attestation: {tolerate: [simulation]}}\n"
        )

    def spec(number):
        return LaunchSpec(
            service="batch-worker",
            config_id="refused/worker",
            cas_addr=cas.url,
            cas_ca=ca_file,
            las_addr=las.url,
            ledger_dir=tmp_path / "ledger",
            workdir=tmp_path / "work",
        )

    executor = LocalExecutor(spec, tmp_path / "logs")
    assert executor.scale(1) == 1
    deadline = time.monotonic() + 30
    while executor.problem() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "wrong-measurement" in (executor.problem() or "")
    assert executor.replicas() == 0
    executor.stop()
