"""The Kubernetes Job the kubejobs executor creates, validated against the official schemas."""

import kubernetes_validate
import pytest

from securecloud.services.batch.kubernetes import (
    EPC_RESOURCE,
    KubernetesExecutor,
    job_manifest,
    parallelism_patch,
)
from securecloud.services.batch.manager import BatchConfig
from securecloud.services.batch.submission import parse_submission

SUBMISSION = parse_submission(
    {
        "plugin": "kubejobs",
        "plugin_info": {
            "cmd": ["run"],
            "img": "registry.local/securecloud:0.1",
            "init_size": 2,
            "redis_workload": ["a", "b"],
            "monitor_info": {"expected_time": 600},
            "control_parameters": {"min_rep": 1, "max_rep": 8},
            "enclave_heap_mb": 48,
        },
    }
)


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0", kubernetes_validate.latest_version()])
def test_job_manifest_is_valid_for_the_official_schema(version):
    manifest = job_manifest(
        "abc123def456",
        SUBMISSION,
        parallelism=3,
        namespace="metering",
        cas_url="https://cas:8081",
        las_url="http://las:8080",
    )
    kubernetes_validate.validate(manifest, version, strict=True)


def test_job_uses_the_work_queue_pattern_with_enclave_memory_and_no_privilege():
    manifest = job_manifest(
        "abc123def456",
        SUBMISSION,
        parallelism=3,
        namespace="metering",
        cas_url="https://cas:8081",
        las_url="http://las:8080",
    )
    spec = manifest["spec"]
    assert spec["parallelism"] == 3 and "completions" not in spec
    assert spec["activeDeadlineSeconds"] == 1200 and spec["ttlSecondsAfterFinished"] == 3600
    assert spec["backoffLimit"] >= 6
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"][EPC_RESOURCE] == "48Mi"
    assert container["resources"]["limits"][EPC_RESOURCE] == "48Mi"
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SECURECLOUD_CONFIG_ID"] == "batch-abc123def456/worker"
    assert "SECURECLOUD_BATCH_QUEUE" not in env  # the queue URL comes from CAS after attestation


def test_a_broken_manifest_is_caught_by_the_validator():
    manifest = job_manifest(
        "abc123def456",
        SUBMISSION,
        parallelism=3,
        namespace="n",
        cas_url="https://c",
        las_url="http://l",
    )
    manifest["spec"]["parallelism"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.30.0", strict=True)


class RecordingBatchApi:
    """Stands in for the Kubernetes API server, which does not exist on this machine:
    records the calls so the executor's protocol with it can be checked."""

    def __init__(self):
        self.calls = []
        self.active = 0

    def create_namespaced_job(self, namespace, body):
        self.calls.append(("create", namespace, body))
        self.active = body["spec"]["parallelism"]

    def patch_namespaced_job(self, name, namespace, body):
        self.calls.append(("patch", name, body))
        self.active = body["spec"]["parallelism"]

    def read_namespaced_job_status(self, name, namespace):
        status = type("Status", (), {"active": self.active})
        return type("Job", (), {"status": status})

    def delete_namespaced_job(self, name, namespace, propagation_policy):
        self.calls.append(("delete", name, propagation_policy))


def test_executor_creates_then_patches_parallelism_then_deletes():
    api = RecordingBatchApi()
    executor = KubernetesExecutor(
        "abc123def456", SUBMISSION, BatchConfig(namespace="metering"), "redis://r/0#job", api=api
    )
    executor.scale(2)
    executor.scale(5)
    assert executor.replicas() == 5
    executor.stop()
    kinds = [call[0] for call in api.calls]
    assert kinds == ["create", "patch", "delete"]
    assert api.calls[1][2] == parallelism_patch(5)
    kubernetes_validate.validate(api.calls[0][2], "1.30.0", strict=True)
