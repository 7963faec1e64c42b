"""HAProxy as the production SNI router: its map, kept current through the runtime API.

The config and the Lua action live in deploy/haproxy/. The Routing Manager
calls `RouteMap.set` when it allocates an instance and `remove` when the
instance stops, so HAProxy routes a consumer's later connections from the map
without asking anyone; a miss runs the Lua action, which asks the manager.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

log = logging.getLogger("securecloud.portal.haproxy")
DEPLOY = Path(__file__).resolve().parents[4] / "deploy" / "haproxy"


class RouteMap:
    def __init__(self, socket_path: Path, map_path: Path):
        self.socket_path, self.map_path = socket_path, map_path

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def set(self, name: str, address: str) -> None:
        try:  # delete first: `add map` would add a second entry for the same key
            self.command(f"del map {self.map_path} {name};add map {self.map_path} {name} {address}")
        except OSError as exc:
            log.warning("haproxy map: cannot set %s: %s", name, exc)

    def remove(self, name: str) -> None:
        try:
            self.command(f"del map {self.map_path} {name}")
        except OSError as exc:
            log.warning("haproxy map: cannot remove %s: %s", name, exc)

    def entries(self) -> dict[str, str]:
        out = {}
        for line in self.command(f"show map {self.map_path}").splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[1]] = parts[2]
        return out


def start_haproxy(
    directory: Path, bind: str, manager_url: str, domain: str, config: Path | None = None
) -> tuple[subprocess.Popen, RouteMap]:
    """A haproxy process with the shipped config (foreground, `-db`), its map empty."""
    directory.mkdir(parents=True, exist_ok=True)
    map_path, socket_path = directory / "routes.map", directory / "haproxy.sock"
    map_path.write_text("")
    env = {
        **os.environ,
        "PORTAL_BIND": bind,
        "PORTAL_MAP": str(map_path),
        "PORTAL_SOCKET": str(socket_path),
        "PORTAL_LUA": str(DEPLOY / "route.lua"),
        "PORTAL_MANAGER": manager_url,
        "PORTAL_DOMAIN": domain,
    }
    log_file = (directory / "haproxy.log").open("ab")
    process = subprocess.Popen(
        [
            shutil.which("haproxy") or "/usr/sbin/haproxy",
            "-db",
            "-f",
            str(config or DEPLOY / "haproxy.cfg"),
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return process, RouteMap(socket_path, map_path)
