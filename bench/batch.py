"""Asperathos: meeting a deadline with fewer enclave worker-seconds than static allocation.

The job: N CPU-bound items (the `spin` task burns a given CPU time); items in
the second half cost three times those of the first, so the rate changes in
the middle of the run. On this 2-core machine throughput saturates at two
workers: more workers only share the cores, while each holds its enclave
memory for as long as it lives. That is the situation the controller exists
for (scarce trusted capacity), and the one a static allocation gets wrong.

Runs, each on attested workers through a real LAS, CAS and batch manager:
  (a) static: min_rep = max_rep = init_size = MAX_REP for the whole job;
  (b) the controller, PID strategy with feed-forward, tolerance 5 %;
  (c) full runs only: the controller with the default trigger strategy.
The deadline is 1.6 × the job's CPU work divided by the 2 cores: one worker
alone would miss it, six finish far ahead of it.

And `queue_items_per_s`: lease + complete throughput of the Redis work queue
(a real redis-server started here), 4 threads leasing 100 items at a time.

Usage: python bench/batch.py --out FILE.json [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results
from securecloud.infra.supervisor import Supervisor, free_port
from securecloud.services.batch.client import BatchClient
from securecloud.services.batch.queue import open_queue

MAX_REP = 6
CORES = 2


def submission(items, expected, strategy, static=False):
    control = {
        "schedule_strategy": strategy,
        "min_rep": MAX_REP if static else 1,
        "max_rep": MAX_REP,
        "actuation_size": 1,
        "trigger_up": 0.05,
        "trigger_down": 0.05,
        "check_interval": 1,
        "cooldown": 2,
        "heuristic_options": {
            "proportional_gain": 4,
            "integral_gain": 0.02,
            "derivative_gain": 0,
            "feed_forward": True,
        },
    }
    return {
        "plugin": "local",
        "plugin_info": {
            "entry_point": "spin",
            "init_size": MAX_REP if static else 1,
            "redis_workload": items,
            "control_parameters": control,
            "monitor_info": {"expected_time": expected},
            "enclave_heap_mb": 8,
            "lease_seconds": 120,
        },
    }


def run_job(client, document, label, log_dir: Path):
    run_id = client.submit(document)["id"]
    started = time.monotonic()
    while client.status(run_id)["status"] in ("queued", "running"):
        time.sleep(1)
        if sys.stderr.isatty():
            print(f"\r{label}: {time.monotonic() - started:5.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    (log_dir / f"batch-{label.split()[-1].strip('()')}.log").write_text(
        "\n".join(client.log(run_id)) + "\n"
    )
    return client.report(run_id)


def queue_throughput(seconds_budget: float) -> float:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not installed (make bench installs it)")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="securecloud-bench-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{port}/0#bench"
        queue = open_queue(url)
        total = 200_000 if seconds_budget > 20 else 60_000
        queue.push(str(n) for n in range(total))
        done = []

        def worker(name):
            q = open_queue(url)
            count = 0
            while items := q.lease(name, count=100, lease_seconds=60):
                count += q.complete(items)
            done.append(count)
            q.close()

        threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        assert sum(done) == total and queue.stats().done == total
        queue.close()
        return total / elapsed
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="a run under two minutes")
    args = parser.parse_args()
    count, cost = (160, 0.08) if args.quick else (400, 0.12)
    items = [f"{cost:.3f}"] * (count // 2) + [f"{3 * cost:.3f}"] * (count // 2)
    cpu_work = sum(float(i) for i in items)
    deadline = round(1.6 * cpu_work / CORES, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="securecloud-bench-batch-"))
    supervisor = Supervisor(data_dir)
    *_, batch = supervisor.up(free_port(), free_port(), free_port())
    try:
        token = (data_dir / "batch" / "api-token").read_text().strip()
        with BatchClient(batch.url, token) as client:
            static = run_job(
                client,
                submission(items, deadline, "default", static=True),
                "static",
                args.out.parent,
            )
            pid = run_job(
                client, submission(items, deadline, "pid"), "controller (pid)", args.out.parent
            )
            trigger = (
                None
                if args.quick
                else run_job(
                    client,
                    submission(items, deadline, "default"),
                    "controller (default)",
                    args.out.parent,
                )
            )
    finally:
        supervisor.stop_all()
    queue_rate = queue_throughput(10 if args.quick else 30)

    results = {
        "items": count,
        "cpu_work_s": round(cpu_work, 1),
        "deadline_s": deadline,
        "max_rep": MAX_REP,
        "deadline_met": pid["deadline_met"],
        "finish_vs_deadline": pid["finish_vs_deadline"],
        "worker_seconds_ratio": round(pid["worker_seconds"] / static["worker_seconds"], 3),
        "controller_worker_seconds": pid["worker_seconds"],
        "controller_replicas_max": pid["replicas_max"],
        "controller_error_min": pid["error_min"],
        "static_worker_seconds": static["worker_seconds"],
        "static_finish_vs_deadline": static["finish_vs_deadline"],
        "queue_items_per_s": round(queue_rate),
    }
    if trigger is not None:
        results.update(
            {
                "trigger_deadline_met": trigger["deadline_met"],
                "trigger_finish_vs_deadline": trigger["finish_vs_deadline"],
                "trigger_worker_seconds_ratio": round(
                    trigger["worker_seconds"] / static["worker_seconds"], 3
                ),
            }
        )
    rows = [
        ("deadline_met", results["deadline_met"], "controller (pid), tolerance 5 %"),
        ("finish_vs_deadline", results["finish_vs_deadline"], "≤ 1.05"),
        (
            "worker_seconds_ratio",
            results["worker_seconds_ratio"],
            "controller / static; target ≤ 0.7",
        ),
        ("static_finish_vs_deadline", results["static_finish_vs_deadline"], f"{MAX_REP} workers"),
        ("controller_replicas_max", results["controller_replicas_max"], ""),
        ("queue_items_per_s", results["queue_items_per_s"], "Redis lease+complete; target ≥ 5,000"),
    ]
    if trigger is not None:
        rows += [
            ("trigger_deadline_met", results["trigger_deadline_met"], "default strategy"),
            ("trigger_finish_vs_deadline", results["trigger_finish_vs_deadline"], ""),
            ("trigger_worker_seconds_ratio", results["trigger_worker_seconds_ratio"], ""),
        ]
    write_results(args.out, "Asperathos batch", results, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
