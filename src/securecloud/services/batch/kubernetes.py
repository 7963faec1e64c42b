"""The Kubernetes executor: a batch/v1 Job in the work-queue pattern.

The Job has no `completions`: its pods drain the queue and exit when it is
empty (the fine-parallel work-queue pattern); the controller changes
`spec.parallelism`. `activeDeadlineSeconds` is the hard stop
(`hard_stop_factor` × expected_time), `backoffLimit` bounds pod failures,
`ttlSecondsAfterFinished` cleans up. Each pod requests its enclave heap as the
extended resource `sgx.intel.com/epc` (Intel's SGX device plugin), so the
scheduler only places it where enclave memory is free; nothing is privileged.

Each pod runs the same bootstrap as a local worker (`python -I -m
securecloud.runtime.enclave`): it attests to CAS with config id
`batch-<id>/worker` and receives the queue URL and task only then.

There is no cluster on our machines: the tests validate the generated
manifests against the official schemas (kubernetes-validate); docs/batch.md
gives the procedure for a real cluster.
"""

from __future__ import annotations

import math
import time

from securecloud.services.batch.submission import Submission

HARD_STOP_FACTOR = 2.0
EPC_RESOURCE = "sgx.intel.com/epc"


def job_name(run_id: str) -> str:
    return f"securecloud-batch-{run_id}"


def job_manifest(
    run_id: str,
    submission: Submission,
    *,
    parallelism: int,
    namespace: str,
    cas_url: str,
    las_url: str,
    image: str | None = None,
) -> dict:
    heap = f"{submission.enclave_heap_mb}Mi"
    env = [
        {"name": "SECURECLOUD_SERVICE", "value": "batch-worker"},
        {"name": "SECURECLOUD_CONFIG_ID", "value": f"batch-{run_id}/worker"},
        {"name": "SECURECLOUD_CAS_ADDR", "value": cas_url},
        {"name": "SECURECLOUD_CAS_CA", "value": "/etc/securecloud/cas/ca.crt"},
        {"name": "SECURECLOUD_LAS_ADDR", "value": las_url},
        {"name": "SECURECLOUD_ATTESTER", "value": "sim"},
        {"name": "SECURECLOUD_WORKDIR", "value": "/tmp"},
        {"name": "SECURECLOUD_ENCLAVE_LEDGER", "value": "/tmp/ledger"},
        {"name": "SECURECLOUD_HEAP_MB", "value": str(submission.enclave_heap_mb)},
    ]
    container = {
        "name": "worker",
        "image": image or submission.image,
        "command": ["python", "-I", "-m", "securecloud.runtime.enclave"],
        "env": env,
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi", EPC_RESOURCE: heap},
            "limits": {"memory": "512Mi", EPC_RESOURCE: heap},
        },
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [
            {"name": "cas-ca", "mountPath": "/etc/securecloud/cas", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(run_id),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "securecloud-batch",
                "securecloud.io/submission": run_id,
            },
        },
        "spec": {
            "parallelism": parallelism,
            "activeDeadlineSeconds": math.ceil(submission.expected_time * HARD_STOP_FACTOR),
            "backoffLimit": max(6, submission.max_retries * submission.control.max_rep),
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": {"securecloud.io/submission": run_id}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "volumes": [
                        {"name": "cas-ca", "configMap": {"name": "securecloud-cas-ca"}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    }


def parallelism_patch(replicas: int) -> dict:
    return {"spec": {"parallelism": replicas}}


def create(manager, run) -> KubernetesExecutor:
    """Factory of the `kubejobs` executor plugin."""
    return KubernetesExecutor(run.id, run.submission, manager.config, manager.queue_url(run))


class KubernetesExecutor:
    """Creates the Job, patches its parallelism, reads its active pods, deletes it at the end."""

    def __init__(self, run_id: str, submission: Submission, config, queue_url: str, api=None):
        self.run_id, self.submission, self.config = run_id, submission, config
        self.namespace = config.namespace
        self._api = api
        self._created = False
        self._replicas = 0
        self._since = time.monotonic()
        self._seconds = 0.0

    @property
    def api(self):
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.BatchV1Api()
        return self._api

    def _account(self) -> None:
        now = time.monotonic()
        self._seconds += self._replicas * (now - self._since)
        self._since = now

    def scale(self, target: int) -> int:
        self._account()
        if not self._created:
            manifest = job_manifest(
                self.run_id,
                self.submission,
                parallelism=target,
                namespace=self.namespace,
                cas_url=self.config.cas_url,
                las_url=self.config.las_url,
            )
            self.api.create_namespaced_job(self.namespace, manifest)
            self._created = True
        else:
            self.api.patch_namespaced_job(
                job_name(self.run_id), self.namespace, parallelism_patch(target)
            )
        self._replicas = target
        return target

    def pids(self) -> set[int]:
        return set()  # pods, not local processes

    def problem(self) -> str | None:
        return None  # failing pods are retried by the Job up to backoffLimit

    def replicas(self) -> int:
        if not self._created:
            return 0
        status = self.api.read_namespaced_job_status(job_name(self.run_id), self.namespace).status
        return int(status.active or 0)

    def worker_seconds(self) -> float:
        self._account()
        return self._seconds

    def stop(self) -> None:
        self._account()
        if self._created:
            self.api.delete_namespaced_job(
                job_name(self.run_id), self.namespace, propagation_policy="Foreground"
            )
            self._replicas = 0
