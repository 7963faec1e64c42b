"""`securecloud demo`: the trust core end to end, on this machine, then cleaned up.

Steps: start a LAS and a CAS (supervised processes, free ports, a temporary
data directory), enroll a policy owner, measure the demo service, apply a
policy with generated secrets, a CAS-issued TLS certificate and an injected
file, launch the service in enclave mode (it attests and receives them), show
a refused launch of code the policy does not list, verify the audit log, and
stop everything.
"""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from securecloud.cli.common import console, handle_errors

POLICY = """\
name: demo
version: "0.3"
services:
  - name: echo
    mrenclaves: [{mrenclave}]
    command: ["hello", "from", "CAS"]
    environment:
      GREETING: "configuration released by CAS after attestation"
      API_TOKEN: "$$SC::api_token$$"
    injection_files:
      - path: token.txt
        content: "$$SC::api_token$$"
      - path: tls/service.crt
        content: "$$SC::service_tls.crt$$"
      - path: tls/service.key
        content: "$$SC::service_tls.key$$"
    heap_mb: 16
  - name: impostor
    mrenclaves: ["{wrong}"]
secrets:
  - name: api_token
    kind: ascii
    size: 32
  - name: service_ca
    kind: x509-ca
  - name: service_tls
    kind: x509
    issuer: service_ca
    san: [echo.demo.local, 127.0.0.1]
    valid_for: 30
security:
  attestation:
    tolerate: [simulation]
access_policy:
  read: [CREATOR]
  update: [CREATOR]
"""


def _step(number: int, text: str) -> None:
    console.print(f"\n[bold cyan]{number}.[/] [bold]{text}[/]")


@handle_errors
def demo(
    keep: Annotated[
        bool, typer.Option(help="Keep the demo's data directory for inspection.")
    ] = False,
) -> None:
    """Run LAS and CAS, apply a policy and start an attested service that receives a
    generated secret, a TLS certificate and injected files; then clean up."""
    from securecloud.crypto import load_public_key_pem
    from securecloud.infra.cas.audit import verify_log
    from securecloud.infra.cas.client import CasClient
    from securecloud.infra.supervisor import Supervisor, free_port
    from securecloud.runtime.launcher import LaunchSpec, launch
    from securecloud.runtime.manifest import load_manifest
    from securecloud.runtime.measurement import measure

    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="securecloud-demo-"))
    supervisor = Supervisor(data_dir)
    console.print(
        "[bold]securecloud demo[/] — simulation mode: the full attestation protocol, "
        "[yellow]no hardware isolation[/] (see docs/threat-model.md)"
    )
    try:
        _step(1, "Start the local attestation service (LAS) and CAS")
        las, cas = supervisor.up(free_port(), free_port())
        platform = supervisor.health(las)["platform_id"]
        console.print(f"   LAS {las.url}  platform id {platform[:32]}…")
        console.print(f"   CAS {cas.url}  state sealed to CAS's measurement, audit log signed")

        _step(2, "Enroll a policy owner (client certificate issued by CAS)")
        ca_file = data_dir / "cas" / "ca.crt"
        with CasClient(cas.url, ca_file) as anonymous:
            owner = anonymous.enroll(data_dir / "identity")
        console.print(f"   owner key fingerprint {owner.fingerprint()[:32]}…")

        _step(3, "Measure the service to be trusted")
        mrenclave = measure(load_manifest("demo-echo"))
        console.print(f"   demo-echo mrenclave {mrenclave}")

        _step(4, "Apply the policy: who may run, what it receives")
        policy = POLICY.format(mrenclave=mrenclave, wrong="0" * 64)
        with CasClient(cas.url, ca_file, owner) as client:
            applied = client.apply(policy)
            shown = client.show("demo")
        console.print(f"   session demo created, hash {applied['hash'][:32]}…")
        kinds = ", ".join(f"{n} ({s['kind']})" for n, s in shown["secrets"].items())
        console.print(f"   generated secrets: {kinds} — values never leave CAS unencrypted")

        def run(config_id: str):
            spec = LaunchSpec(
                service="demo-echo",
                config_id=config_id,
                cas_addr=cas.url,
                cas_ca=ca_file,
                las_addr=las.url,
                ledger_dir=data_dir / "runtime",
                workdir=data_dir / "runtime" / "work" / config_id.replace("/", "_"),
            )
            process = launch(spec, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = process.communicate(timeout=60)
            return process.returncode, out, err

        _step(5, "Launch demo-echo in enclave mode as demo/echo")
        console.print(
            "   launcher: clean environment, no core dumps, not dumpable; the service "
            "gets its arguments, environment and files only after attestation"
        )
        code, out, err = run("demo/echo")
        console.print(out.rstrip(), markup=False)
        if code != 0:
            raise RuntimeError(f"demo-echo failed ({code}): {err}")
        console.print(
            "   [green]attested: CAS verified the quote, nonce, key binding and "
            "measurement, then released the configuration[/]"
        )

        _step(6, "Launch the same code as demo/impostor, whose policy lists other code")
        code, out, err = run("demo/impostor")
        reason = next((line for line in err.splitlines() if '"refused"' in line), err.strip())
        console.print(f"   exit {code}: {reason}", markup=False)
        if code != 3:
            raise RuntimeError("the impostor was not refused")
        console.print("   [green]refused: no secret, no argument, no file reached it[/]")

        _step(7, "Verify CAS's audit log (numbered, signed, hash-chained)")
        key = load_public_key_pem((data_dir / "cas" / "audit.pub").read_bytes())
        head = verify_log(data_dir / "cas" / "audit.log", key)
        console.print(f"   {head.seq} entries verify; head {head.hash[:32]}…")
    finally:
        _step(8, "Stop the platform and clean up")
        stopped = supervisor.stop_all()
        console.print(f"   stopped {', '.join(stopped) or 'nothing'}")
        if keep:
            console.print(f"   data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    console.print(f"\n[bold green]demo finished in {time.monotonic() - started:.1f} s[/]")
