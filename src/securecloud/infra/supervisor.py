"""Run the embedded platform's services as supervised background processes.

`up` starts each service (`securecloud <group> serve ...`) in its own process
group, records {pid, url, log} under <data dir>/run/<name>.json and waits for
its /healthz; `status` reads those records and probes each service; `down`
sends SIGTERM (services finish in-flight work and exit), then SIGKILL after a
grace period. Logs go to <data dir>/logs/<name>.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from securecloud.runtime.processes import alive

LAS_PORT = 8080
CAS_PORT = 8081
BATCH_PORT = 8082
KVS_PORT = 8083


@dataclass(frozen=True)
class IngestPorts:
    """Authenticator API and link, aggregator meters and metrics ports."""

    api: int = 8084
    link: int = 4810
    aggregator: int = 4800
    aggregator_metrics: int = 8085


class SupervisorError(Exception):
    pass


@dataclass(frozen=True)
class Running:
    name: str
    pid: int
    url: str
    log: str
    ca: str | None = None
    started: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Supervisor:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir).resolve()
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"

    def _record(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def running(self) -> list[Running]:
        if not self.run_dir.exists():
            return []
        records = [Running(**json.loads(p.read_text())) for p in self.run_dir.glob("*.json")]
        return sorted(records, key=lambda r: r.started)

    def health(self, service: Running, timeout: float = 2.0) -> dict | None:
        verify: ssl.SSLContext | bool = True
        if service.ca:
            verify = ssl.create_default_context(cafile=service.ca)
        try:
            response = httpx.get(f"{service.url}/healthz", verify=verify, timeout=timeout)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, OSError):
            return None

    def start(
        self, name: str, args: list[str], url: str, ca: Path | None = None, timeout: float = 30.0
    ) -> Running:
        for existing in self.running():
            if existing.name == name and alive(existing.pid):
                raise SupervisorError(
                    f"{name} already runs (pid {existing.pid}); `securecloud down` first"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "securecloud.cli.main", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        service = Running(
            name, process.pid, url, str(log_path), str(ca) if ca else None, time.time()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SupervisorError(f"{name} exited with {process.returncode}:\n{tail}")
            if ca is not None and not ca.exists():
                time.sleep(0.1)
                continue
            if self.health(service, timeout=1.0) is not None:
                self._record(name).write_text(json.dumps(asdict(service)))
                return service
            time.sleep(0.1)
        _terminate(process.pid)
        raise SupervisorError(
            f"{name} did not become healthy within {timeout:.0f} s (see {log_path})"
        )

    def stop(self, name: str, grace: float = 15.0) -> bool:
        record = self._record(name)
        if not record.exists():
            return False
        service = Running(**json.loads(record.read_text()))
        _terminate(service.pid, grace)
        record.unlink(missing_ok=True)
        return True

    def stop_all(self) -> list[str]:
        stopped = []
        for service in reversed(self.running()):
            if self.stop(service.name):
                stopped.append(service.name)
        return stopped

    def up(
        self,
        las_port: int = LAS_PORT,
        cas_port: int = CAS_PORT,
        batch_port: int | None = None,
        kvs_port: int | None = None,
        ingest: IngestPorts | None = None,
    ) -> list[Running]:
        """Start the embedded platform: LAS, then CAS (which needs the LAS), then the
        batch manager, the KVS gateway and the ingestion (authenticator, then an
        aggregator linked to it; needs the KVS) when their ports are given."""
        data = str(self.data_dir)
        las_url, cas_url = f"http://127.0.0.1:{las_port}", f"https://127.0.0.1:{cas_port}"
        las_args = ["las", "serve", "--data-dir", data, "--port", str(las_port)]
        started = [self.start("las", las_args, las_url)]
        try:
            cas_args = ["cas", "serve", "--data-dir", data, "--port", str(cas_port)]
            started.append(
                self.start(
                    "cas",
                    [*cas_args, "--las", las_url],
                    cas_url,
                    ca=self.data_dir / "cas" / "ca.crt",
                )
            )
            if batch_port is not None:
                batch_args = ["batch", "serve", "--data-dir", data, "--port", str(batch_port)]
                started.append(
                    self.start(
                        "batch",
                        [*batch_args, "--cas", cas_url, "--las", las_url],
                        f"http://127.0.0.1:{batch_port}",
                    )
                )
            if kvs_port is not None:
                started.append(self.start_kvs(kvs_port, cas_url, las_url))
            if ingest is not None and kvs_port is not None:
                started += self.start_ingest(
                    ingest, cas_url, las_url, f"https://127.0.0.1:{kvs_port}"
                )
        except SupervisorError:
            self.stop_all()
            raise
        return started

    def start_kvs(self, port: int, cas_url: str, las_url: str) -> Running:
        args = ["kvs", "serve", "--data-dir", str(self.data_dir), "--port", str(port)]
        return self.start(
            "kvs",
            [*args, "--cas", cas_url, "--las", las_url],
            f"https://127.0.0.1:{port}",
            ca=self.data_dir / "kvs" / "ca.crt",
            timeout=60,
        )

    def start_sql(
        self,
        port: int,
        http_port: int,
        cas_url: str,
        las_url: str,
        kvs_url: str,
        cache_mb: int = 64,
    ) -> Running:
        """CascaDB (`sql serve`): PostgreSQL protocol on `port`, HTTPS on `http_port`."""
        args = ["sql", "serve", "--data-dir", str(self.data_dir), "--port", str(port)]
        args += ["--http-port", str(http_port), "--cas", cas_url, "--las", las_url]
        args += ["--kvs-url", kvs_url, "--cache-mb", str(cache_mb)]
        return self.start(
            "sql",
            args,
            f"https://127.0.0.1:{http_port}",
            ca=self.data_dir / "sql" / "ca.crt",
            timeout=60,
        )

    def start_authenticator(
        self,
        ports: IngestPorts,
        cas_url: str,
        las_url: str,
        kvs_url: str,
        name: str = "authenticator",
        extra: tuple[str, ...] = (),
    ) -> Running:
        """`extra`: more `ingest authenticator serve` options (--name, --nats, --shard)."""
        args = ["ingest", "authenticator", "serve", "--data-dir", str(self.data_dir)]
        args += ["--port", str(ports.link), "--api-port", str(ports.api)]
        args += ["--cas", cas_url, "--las", las_url, "--kvs-url", kvs_url, *extra]
        return self.start(
            name,
            args,
            f"https://127.0.0.1:{ports.api}",
            ca=self.data_dir / "metering" / "ca.crt",
            timeout=60,
        )

    def start_ingest(
        self, ports: IngestPorts, cas_url: str, las_url: str, kvs_url: str
    ) -> list[Running]:
        """The attested authenticator, then one aggregator linked to it."""
        authenticator = self.start_authenticator(ports, cas_url, las_url, kvs_url)
        data = str(self.data_dir)
        agg_args = ["ingest", "aggregator", "serve", "--data-dir", data]
        agg_args += [
            "--port",
            str(ports.aggregator),
            "--metrics-port",
            str(ports.aggregator_metrics),
        ]
        agg_args += ["--authenticator", f"127.0.0.1:{ports.link}"]
        aggregator = self.start(
            "aggregator", agg_args, f"http://127.0.0.1:{ports.aggregator_metrics}"
        )
        return [authenticator, aggregator]


def _terminate(pid: int, grace: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
