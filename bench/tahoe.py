"""A local Tahoe-LAFS grid for comparison: introducer, 4 storage nodes, 1 client.

Tahoe-LAFS is installed into its own virtual environment (it is a baseline, not
a dependency of securecloud). Every node is a `tahoe run` process on
loopback; the client encodes 3-of-4 (happy 4). Uploads go through the
client's web API (`PUT /uri`, immutable files), as an application would.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import aiohttp
import httpx

from securecloud.infra.supervisor import free_port

VERSION = "tahoe-lafs==1.20.*"


def ensure_tahoe(venv_dir: Path) -> Path:
    tahoe = venv_dir / "bin" / "tahoe"
    if not tahoe.exists():
        print(f"installing {VERSION} into {venv_dir}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        subprocess.run([str(venv_dir / "bin" / "pip"), "install", "-q", VERSION], check=True)
    return tahoe


class TahoeGrid:
    def __init__(self, venv_dir: Path, base: Path, storage_nodes: int = 4):
        self.tahoe = ensure_tahoe(venv_dir)
        self.base = base
        self.storage_nodes = storage_nodes
        self.processes: list[subprocess.Popen] = []
        self.web = ""

    def _run(self, *args: str) -> None:
        subprocess.run([str(self.tahoe), *args], check=True, capture_output=True, timeout=120)

    def _start(self, directory: Path) -> None:
        log = open(directory.with_suffix(".log"), "wb")  # noqa: SIM115 - lives with the process
        self.processes.append(
            subprocess.Popen(
                [str(self.tahoe), "run", "--allow-stdin-close", str(directory)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def __enter__(self) -> TahoeGrid:
        introducer = self.base / "introducer"
        port = free_port()
        self._run(
            "create-introducer",
            f"--port=tcp:{port}:interface=127.0.0.1",
            f"--location=tcp:127.0.0.1:{port}",
            str(introducer),
        )
        self._start(introducer)
        furl_file = introducer / "private" / "introducer.furl"
        for _ in range(300):
            if furl_file.exists():
                break
            time.sleep(0.1)
        furl = furl_file.read_text().strip()
        shares = [
            "--shares-needed=3",
            f"--shares-happy={self.storage_nodes}",
            f"--shares-total={self.storage_nodes}",
        ]
        for i in range(self.storage_nodes):
            port = free_port()
            node = self.base / f"storage-{i}"
            self._run(
                "create-node",
                f"--port=tcp:{port}:interface=127.0.0.1",
                f"--location=tcp:127.0.0.1:{port}",
                f"--introducer={furl}",
                "--webport=none",
                f"--nickname=storage-{i}",
                *shares,
                str(node),
            )
            self._start(node)
        web = free_port()
        client = self.base / "client"
        self._run(
            "create-client",
            f"--introducer={furl}",
            f"--webport=tcp:{web}:interface=127.0.0.1",
            *shares,
            str(client),
        )
        self._start(client)
        self.web = f"http://127.0.0.1:{web}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                servers = httpx.get(f"{self.web}/?t=json", timeout=2).json().get("servers", [])
                connected = [
                    s
                    for s in servers
                    if str(s.get("connection_status", "")).lower().startswith("connected")
                ]
                if len(connected) >= self.storage_nodes:
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("the Tahoe-LAFS grid did not connect in 120 s")

    def put_rate(self, size: int, seconds: float, clients: int) -> dict:
        return asyncio.run(self._put_rate(size, seconds, clients))

    async def _put_rate(self, size: int, seconds: float, clients: int) -> dict:
        import os

        payload = os.urandom(size)
        done = 0
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

            async def client():
                nonlocal done
                while time.monotonic() < deadline:
                    # a distinct file each time (Tahoe deduplicates identical content)
                    body = payload[:-8] + os.urandom(8)
                    async with session.put(f"{self.web}/uri", data=body) as response:
                        if response.status not in (200, 201):
                            raise RuntimeError(f"tahoe put {response.status}")
                        await response.read()
                    done += 1

            started = time.monotonic()
            await asyncio.gather(*(client() for _ in range(clients)))
            elapsed = time.monotonic() - started
        return {"ops_s": round(done / elapsed, 1), "MBps": round(done * size / elapsed / 1e6, 1)}

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.base, ignore_errors=True)
