"""Secure KVS throughput: 16 concurrent clients against a real gateway with 9 local nodes.

Starts LAS, CAS and the attested KVS gateway (TLS, 9 node directories on this
disk) as `securecloud up` does, then for each object size and policy runs 16
clients putting distinct objects for a fixed time, then getting them back
(each get checks the content). In the same run:

- `raw_disk_16MiB_MBps`: 16 MiB written and fsynced straight to the same disk
  (the physical limit of a durable write here);
- Tahoe-LAFS 1.20 (the nearest pip-installable peer: client-side encryption
  plus erasure coding), a grid of 4 local storage nodes started by this script
  in its own virtual environment (`--tahoe-venv`, created if missing), 3-of-4
  encoding, 16 clients putting through its web API: `tahoe_put_1KiB_ops_s`,
  `tahoe_put_16MiB_MBps`.

Usage: python bench/kvs.py --out FILE.json [--quick] [--no-tahoe]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import summary_ms, write_results
from securecloud.infra.supervisor import Supervisor, free_port
from tahoe import TahoeGrid

SIZES = {"1KiB": 1024, "64KiB": 64 * 1024, "1MiB": 1024 * 1024, "16MiB": 16 * 1024 * 1024}
POLICIES = ["replicate:3", "ec:6+3", "hybrid:1+6+2"]
CLIENTS = 16


async def put_phase(session, url, bucket, size, policy, seconds, headers):
    payload = os.urandom(size)
    stored: list[str] = []
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def client(n):
        while time.monotonic() < deadline:
            key = f"{size}/{policy}/{n}/{next(counter)}"
            extra = {"X-Storage-Policy": policy} if policy else {}
            started = time.perf_counter()
            async with session.put(
                f"{url}/v1/{bucket}/{key}", data=payload, headers={**headers, **extra}
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"put {response.status}: {await response.text()}")
            latencies.append(time.perf_counter() - started)
            stored.append(key)

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return stored, latencies, time.monotonic() - started, payload


async def get_phase(session, url, bucket, keys, payload, seconds, headers):
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client(n):
        i = n
        while time.monotonic() < deadline:
            key = keys[i % len(keys)]
            i += CLIENTS
            started = time.perf_counter()
            async with session.get(f"{url}/v1/{bucket}/{key}", headers=headers) as response:
                body = await response.read()
                if response.status != 200 or body != payload:
                    raise RuntimeError(f"get {response.status}")
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return latencies, time.monotonic() - started


def codec_ceiling(size: int = 16 * 1024 * 1024, rounds: int = 6) -> float:
    """MB/s of the gateway's CPU work alone for one object on one core: encrypt, erasure-code
    6+3, MAC and frame the 9 fragments (no TLS, no HTTP, no disk)."""
    from securecloud.services.kvs.codec import KvsKeys, encrypt_object, make_fragments, seal_meta
    from securecloud.services.kvs.coder import ZfecCoder
    from securecloud.services.kvs.policy import Policy

    keys, coder, policy = KvsKeys.from_master(os.urandom(32)), ZfecCoder(), Policy(k=6, m=3)
    data = os.urandom(size)
    started = time.perf_counter()
    for version in range(1, rounds + 1):
        meta, ciphertext = encrypt_object(keys, "b", "k", version, data, policy, "x")
        sealed = seal_meta(keys, "ab" * 8, meta)
        for fragment in make_fragments(coder, policy, "ab" * 8, version, ciphertext, sealed):
            fragment.encode(keys)
    return size * rounds / (time.perf_counter() - started) / 1e6


def raw_disk(directory: Path, size: int = 16 * 1024 * 1024, rounds: int = 8) -> float:
    payload = os.urandom(size)
    path = directory / "raw-disk.bin"
    started = time.perf_counter()
    for _ in range(rounds):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, payload)
        os.fsync(fd)
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return size * rounds / elapsed / 1e6


async def run_matrix(url, ca, creds, matrix, seconds):
    headers = {"Authorization": f"Bearer {creds['id']}:{creds['secret']}"}
    context = ssl.create_default_context(cafile=str(ca))
    connector = aiohttp.TCPConnector(ssl=context, limit=CLIENTS * 2)
    results = {}
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.put(f"{url}/v1/bench", headers=headers) as response:
            assert response.status == 200, await response.text()
        for label, policy in matrix:
            size = SIZES[label]
            keys, put_lat, put_time, payload = await put_phase(
                session, url, "bench", size, policy, seconds, headers
            )
            get_lat, get_time = await get_phase(
                session, url, "bench", keys, payload, seconds, headers
            )
            name = f"{label}_{policy or 'default'}"
            results[name] = {
                "put_ops_s": round(len(put_lat) / put_time, 1),
                "put_MBps": round(len(put_lat) * size / put_time / 1e6, 1),
                "get_ops_s": round(len(get_lat) / get_time, 1),
                "get_MBps": round(len(get_lat) * size / get_time / 1e6, 1),
                "put_" + "p99_ms": summary_ms(put_lat)["p99_ms"],
                "get_p99_ms": summary_ms(get_lat)["p99_ms"],
            }
            print(name, results[name], file=sys.stderr)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="a run under two minutes")
    parser.add_argument("--no-tahoe", action="store_true", help="skip the Tahoe-LAFS baseline")
    parser.add_argument(
        "--tahoe-venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "securecloud-tahoe-venv",
        help="virtual environment for Tahoe-LAFS",
    )
    args = parser.parse_args()
    seconds = 5 if args.quick else 10
    matrix = [("1KiB", None), ("16MiB", None)]
    if not args.quick:
        matrix += [(label, policy) for label in SIZES for policy in POLICIES]

    data_dir = Path(tempfile.mkdtemp(prefix="securecloud-bench-kvs-"))
    supervisor = Supervisor(data_dir)
    try:
        *_, kvs = supervisor.up(free_port(), free_port(), kvs_port=free_port())
        creds = json.loads((data_dir / "kvs" / "credentials.json").read_text())
        results = asyncio.run(
            run_matrix(kvs.url, data_dir / "kvs" / "ca.crt", creds, matrix, seconds)
        )
        disk = raw_disk(data_dir)
        ceiling = codec_ceiling()
    finally:
        supervisor.stop_all()

    out = {
        "clients": CLIENTS,
        "nodes": 9,
        "phase_seconds": seconds,
        "put_1KiB_ops_s": results["1KiB_default"]["put_ops_s"],
        "get_1KiB_ops_s": results["1KiB_default"]["get_ops_s"],
        "put_16MiB_MBps": results["16MiB_default"]["put_MBps"],
        "get_16MiB_MBps": results["16MiB_default"]["get_MBps"],
        "raw_disk_16MiB_MBps": round(disk, 1),
        "codec_ceiling_16MiB_MBps": round(ceiling, 1),
        "matrix": results,
    }
    if not args.no_tahoe:
        grid_dir = Path(tempfile.mkdtemp(prefix="securecloud-tahoe-"))
        try:
            with TahoeGrid(args.tahoe_venv, grid_dir) as grid:
                out["tahoe_put_1KiB_ops_s"] = grid.put_rate(1024, seconds, CLIENTS)["ops_s"]
                out["tahoe_put_16MiB_MBps"] = grid.put_rate(16 * 1024 * 1024, seconds, CLIENTS)[
                    "MBps"
                ]
            out["put_1KiB_vs_tahoe"] = round(out["put_1KiB_ops_s"] / out["tahoe_put_1KiB_ops_s"], 1)
        except Exception as exc:  # the baseline failing must not lose our own figures
            out["tahoe_error"] = f"{type(exc).__name__}: {exc}"[:500]
    out["put_16MiB_vs_raw_disk"] = round(out["put_16MiB_MBps"] / out["raw_disk_16MiB_MBps"], 3)
    rows = [
        ("put_1KiB_ops_s", out["put_1KiB_ops_s"], "replicate:3 (default < 128 KiB)"),
        ("get_1KiB_ops_s", out["get_1KiB_ops_s"], "target ≥ 2,000"),
        ("put_16MiB_MBps", out["put_16MiB_MBps"], "ec:6+3 (default ≥ 128 KiB)"),
        ("get_16MiB_MBps", out["get_16MiB_MBps"], ""),
        ("raw_disk_16MiB_MBps", out["raw_disk_16MiB_MBps"], "write + fsync, same disk"),
        ("put_16MiB_vs_raw_disk", out["put_16MiB_vs_raw_disk"], "target ≥ 0.5"),
        (
            "codec_ceiling_16MiB_MBps",
            out["codec_ceiling_16MiB_MBps"],
            "encrypt + ec:6+3 + MAC alone, one core",
        ),
    ]
    if "tahoe_put_1KiB_ops_s" in out:
        rows += [
            ("tahoe_put_1KiB_ops_s", out["tahoe_put_1KiB_ops_s"], "Tahoe-LAFS 1.20, 4 nodes"),
            ("tahoe_put_16MiB_MBps", out["tahoe_put_16MiB_MBps"], ""),
            ("put_1KiB_vs_tahoe", out["put_1KiB_vs_tahoe"], "target ≥ 10"),
        ]
    for name, figures in results.items():
        rows.append(
            (
                name,
                f"put {figures['put_ops_s']}/s {figures['put_MBps']} MB/s, "
                f"get {figures['get_ops_s']}/s {figures['get_MBps']} MB/s",
                "",
            )
        )
    write_results(args.out, "Secure KVS", out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
