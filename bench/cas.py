"""CAS attestation throughput and latency with 16 concurrent clients.

Starts a real LAS and CAS (as `securecloud up` does, TLS on loopback), enrolls
an owner, applies a policy with four generated secrets and a TLS certificate,
then runs complete attest-and-receive-secrets round trips from 16 concurrent
clients: nonce from CAS, quote from the LAS, attestation to CAS (which verifies,
writes its audit entry durably and encrypts the configuration), decryption.
Each client keeps its TLS connection (services attest once at start; the
figure with a new connection per attestation is reported too).

For context, in the same run:
- `crypto_ceiling_per_s`: the cryptographic work of one round trip done alone
  in one process (key generation, quote signature and verification, HPKE both
  ways, audit signature): what one core could do with no I/O at all;
- `https_noop_per_s`: the same three HTTP requests per round trip against
  /healthz endpoints: the transport ceiling of this machine.

Usage: python bench/cas.py --out FILE.json [--quick] [--clients 16] [--seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import summary_ms, write_results
from securecloud.crypto import canonical, decrypt_with, encrypt_to, generate_signing_key, sign
from securecloud.infra.cas.client import CasClient
from securecloud.infra.supervisor import Supervisor, free_port
from securecloud.runtime.evidence import Evidence
from securecloud.runtime.manifest import load_manifest
from securecloud.runtime.measurement import measure
from securecloud.runtime.provisioning import AttestationAttempt
from securecloud.runtime.sim import SimVerifier, sign_quote

POLICY = """
name: bench
services:
  - name: svc
    mrenclaves: ["{mrenclave}"]
    command: [serve, --token, "$$SC::token$$"]
    environment: {{DB_KEY: "$$SC::db_key$$", SIGNING: "$$SC::signing$$"}}
    injection_files:
      - {{path: tls/cert.pem, content: "$$SC::tls.crt$$"}}
      - {{path: tls/key.pem, content: "$$SC::tls.key$$"}}
secrets:
  - {{name: token, kind: ascii, size: 32}}
  - {{name: db_key, kind: aes-256}}
  - {{name: signing, kind: private-key, algorithm: ed25519}}
  - {{name: ca, kind: x509-ca}}
  - {{name: tls, kind: x509, issuer: ca, san: [svc.local]}}
security: {{attestation: {{tolerate: [simulation]}}}}
"""


class Client:
    """One benchmark client: its own connections to the LAS and CAS (aiohttp: a load
    generator must cost less than the server it measures; httpx cost 3.9 ms of CPU per
    round trip here, more than CAS itself)."""

    def __init__(self, cas_url, las_url, context, reuse=True):
        self.cas_url, self.las_url, self.context, self.reuse = cas_url, las_url, context, reuse
        self.cas = self.las = None

    async def __aenter__(self):
        self.las = aiohttp.ClientSession(self.las_url)
        self.cas = self._cas_session()
        return self

    def _cas_session(self):
        connector = aiohttp.TCPConnector(ssl=self.context, force_close=not self.reuse)
        return aiohttp.ClientSession(self.cas_url, connector=connector)

    async def __aexit__(self, *exc):
        await self.cas.close()
        await self.las.close()

    async def post(self, session, path, body=None):
        async with session.post(path, json=body) as response:
            data = await response.json()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {data}")
            return data

    async def get(self, session, path):
        async with session.get(path) as response:
            response.raise_for_status()
            return await response.read()


async def one_attestation(client: Client) -> None:
    nonce = (await client.post(client.cas, "/v1/attestation/nonce"))["nonce"]
    attempt = AttestationAttempt("bench/svc", bytes.fromhex(nonce))
    quote = await client.post(
        client.las,
        "/v1/quote",
        {"service": "demo-echo", "report_data": attempt.report_data().hex()},
    )
    response = await client.post(
        client.cas, "/v1/attestation", attempt.request(Evidence.from_json(quote))
    )
    config = attempt.open_response(response)
    if not config.environment.get("DB_KEY"):
        raise RuntimeError("configuration without its secret")


async def one_noop(client: Client) -> None:
    for session in (client.cas, client.las, client.cas):
        await client.get(session, "/healthz")


async def run_clients(step, cas_url, las_url, context, clients, seconds, reuse=True):
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    async def client_loop():
        async with Client(cas_url, las_url, context, reuse) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    await step(client)
                except Exception as exc:  # counted and reported, never hidden
                    errors.append(repr(exc)[:200])
                    continue
                latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return latencies, errors, time.monotonic() - started


def crypto_ceiling(seconds: float) -> float:
    """Round trips per second of the crypto work alone, one process."""
    platform_key = generate_signing_key("ed25519")
    audit_key = generate_signing_key("ed25519")
    from securecloud.crypto import fingerprint

    verifier = SimVerifier({fingerprint(platform_key.public_key()): platform_key.public_key()})
    config = b"x" * 2500  # the size of the bench policy's rendered configuration
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        attempt = AttestationAttempt("bench/svc", bytes(32))
        body = {
            "mrenclave": "ab" * 32,
            "mrsigner": "0" * 64,
            "isv_prod_id": 0,
            "isv_svn": 0,
            "debug": False,
            "tcb_status": "UpToDate",
            "advisories": [],
            "report_data": attempt.report_data().hex(),
        }
        verifier.verify(sign_quote(platform_key, body))
        sealed = encrypt_to(attempt.key.public_key(), config, b"aad")
        sign(audit_key, canonical.encode({"entry": body}))
        decrypt_with(attempt.key, sealed, b"aad")
        done += 1
    return done / seconds


def cas_metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


async def main_async(args) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="securecloud-bench-cas-"))
    supervisor = Supervisor(data_dir)
    las, cas = supervisor.up(free_port(), free_port())
    try:
        ca_file = data_dir / "cas" / "ca.crt"
        with CasClient(cas.url, ca_file) as anonymous:
            owner = anonymous.enroll(data_dir / "owner")
        with CasClient(cas.url, ca_file, owner) as client:
            client.apply(POLICY.format(mrenclave=measure(load_manifest("demo-echo"))))
        context = ssl.create_default_context(cafile=str(ca_file))

        await run_clients(one_attestation, cas.url, las.url, context, args.clients, 2)  # warm up
        metrics_before = httpx.get(f"{cas.url}/metrics", verify=context).text
        latencies, errors, elapsed = await run_clients(
            one_attestation, cas.url, las.url, context, args.clients, args.seconds
        )
        metrics_after = httpx.get(f"{cas.url}/metrics", verify=context).text
        fresh, fresh_errors, fresh_elapsed = await run_clients(
            one_attestation, cas.url, las.url, context, args.clients, args.seconds / 3, reuse=False
        )
        noop, _, noop_elapsed = await run_clients(
            one_noop, cas.url, las.url, context, args.clients, args.seconds / 3
        )
    finally:
        supervisor.stop_all()
    fsyncs = cas_metric(metrics_after, "securecloud_cas_audit_batch_entries_count") - cas_metric(
        metrics_before, "securecloud_cas_audit_batch_entries_count"
    )
    entries = cas_metric(metrics_after, "securecloud_cas_audit_batch_entries_sum") - cas_metric(
        metrics_before, "securecloud_cas_audit_batch_entries_sum"
    )
    stats = summary_ms(latencies)
    return {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "attestations": len(latencies),
        "errors": len(errors) + len(fresh_errors),
        "error_samples": (errors + fresh_errors)[:3],
        "attest_per_s": round(len(latencies) / elapsed, 1),
        "attest_p50_ms": stats["p50_ms"],
        "attest_p99_ms": stats["p99_ms"],
        "attest_new_connection_per_s": round(len(fresh) / fresh_elapsed, 1),
        "attest_new_connection_p99_ms": summary_ms(fresh)["p99_ms"],
        "audit_entries_per_fsync": round(entries / fsyncs, 2) if fsyncs else None,
        "https_noop_per_s": round(len(noop) / noop_elapsed, 1),
        "crypto_ceiling_per_s": round(crypto_ceiling(3 if args.quick else 10), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=None, help="measured phase length")
    args = parser.parse_args()
    args.seconds = args.seconds or (15 if args.quick else 60)
    results = asyncio.run(main_async(args))
    rows = [
        ("attest_per_s", results["attest_per_s"], "target ≥ 300; complete round trips, 16 clients"),
        ("attest_p50_ms", results["attest_p50_ms"], ""),
        ("attest_p99_ms", results["attest_p99_ms"], "target ≤ 100"),
        (
            "attest_new_connection_per_s",
            results["attest_new_connection_per_s"],
            "new TLS connection to CAS per attestation",
        ),
        ("attest_new_connection_p99_ms", results["attest_new_connection_p99_ms"], ""),
        ("audit_entries_per_fsync", results["audit_entries_per_fsync"], "group commit"),
        (
            "https_noop_per_s",
            results["https_noop_per_s"],
            "same 3 requests per round trip to /healthz: transport ceiling",
        ),
        (
            "crypto_ceiling_per_s",
            results["crypto_ceiling_per_s"],
            "crypto of one round trip alone, one core",
        ),
        ("errors", results["errors"], "must be 0"),
    ]
    write_results(args.out, "CAS attestation", results, rows)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
