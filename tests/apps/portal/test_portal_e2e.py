"""The portal end to end: LAS, CAS and KVS as `securecloud up` runs them, attested
instances started by the wrapper, the embedded router (or a real HAProxy) in front."""

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import pytest

from securecloud.apps.portal.client import Credentials, PortalError, PortalSession, metrics_for
from securecloud.apps.portal.haproxy import start_haproxy
from securecloud.apps.portal.names import server_name
from securecloud.apps.portal.provision import consumer_dir, provision
from securecloud.apps.portal.service import BackgroundPortal, PortalConfig
from securecloud.cli.common import service_url
from securecloud.cli.kvs import _client
from securecloud.infra.supervisor import Supervisor, free_port

SEED_ROWS = 240  # provisioned with one hour of 15-second metrics


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("portal")
    supervisor = Supervisor(data_dir)
    supervisor.up(free_port(), free_port(), None, free_port())
    try:
        with _client(data_dir, None) as kvs:
            provision(data_dir, kvs, 6, seed_hours=1)
        yield data_dir
    finally:
        supervisor.stop_all()


def RunningPortal(data_dir, **kw) -> BackgroundPortal:
    return BackgroundPortal(
        PortalConfig(
            data_dir,
            service_url(data_dir, "cas", ""),
            service_url(data_dir, "las", ""),
            router_port=free_port(),
            manager_port=free_port(),
            wrapper_port=free_port(),
            report_interval=1.0,
            **kw,
        )
    )


def creds(data_dir, uid: str) -> Credentials:
    return Credentials.load(consumer_dir(data_dir, uid), data_dir / "portal" / "ca.crt")


def run(coro):
    return asyncio.run(coro)


async def _session(address, credentials, steps):
    session = PortalSession(address, credentials)
    try:
        return [await step(session) for step in steps]
    finally:
        await session.close()


def test_a_consumer_reads_and_writes_through_the_router_and_finds_it_next_time(data_dir):
    with RunningPortal(data_dir, mode="standby", buffer=2) as portal:
        portal.ready(2)
        me = creds(data_dir, "c000001")
        login, written, alarms, avg, _ = run(
            _session(
                portal.address,
                me,
                [
                    lambda s: s.login(),
                    lambda s: s.long_write(metrics_for(0.5, start=2_000_000_000)),
                    lambda s: s.write([{"metric": "power", "threshold": 4_000.0}]),
                    lambda s: s.query_avg(start=2_000_000_000),
                    lambda s: s.logout(),
                ],
            )
        )
        assert login["uid"] == "c000001" and written == {"written": 120}
        assert alarms == {"written": 1} and avg["count"] == 120 and avg["tension"] > 100
        # the instance left after its LOGOUT; the manager refilled the buffer
        instances = portal.ready(2)
        assert all(x["uid"] is None for x in instances)
        avg_all = run(
            _session(
                portal.address,
                me,
                [lambda s: s.login(), lambda s: s.query_avg(), lambda s: s.logout()],
            )
        )[1]
        assert avg_all["count"] == SEED_ROWS + 120  # written back to the KVS at LOGOUT


def _tls(address: str, credentials: Credentials, name: str | None) -> ssl.SSLSocket:
    host, port = address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    context = credentials.tls()
    if name is None:
        context.check_hostname = False
    return context.wrap_socket(raw, server_hostname=name)


def _raw_request(tls: ssl.SSLSocket, request: bytes) -> tuple[int, dict]:
    """Send bytes, read the answer until the instance closes the connection."""
    tls.sendall(request)
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), json.loads(body)


def test_bad_input_is_refused_and_the_instance_keeps_serving_its_consumer(data_dir):
    with RunningPortal(data_dir, mode="standby", buffer=2) as portal:
        portal.ready(2)
        me, other = creds(data_dir, "c000002"), creds(data_dir, "c000003")
        session = PortalSession(portal.address, me)

        async def scenario():
            await session.login()
            before = await session.query_avg()
            problems = {}
            # SNI of another consumer straight at the instance serving c000002: the
            # handshake is refused (an alert; asyncio may close before flushing it)
            instance = next(x for x in portal.instances() if x["uid"] == "c000002")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.to_thread(_tls, instance["address"], other, server_name("c000003"))
            # the certificate names the consumer in CN and SAN
            tls = _tls(portal.address, me, server_name("c000002"))
            cert = tls.getpeercert()
            assert dict(x[0] for x in cert["subject"])["commonName"] == "c000002"
            assert cert["subjectAltName"] == (("DNS", server_name("c000002")),)
            status, doc = _raw_request(tls, b"NOT HTTP AT ALL\r\n\r\n")
            problems["malformed"] = (status, doc["error"])
            tls.close()
            # another consumer's certificate with this consumer's name
            intruder = PortalSession(portal.address, replace(other, uid="c000002"))
            try:
                await intruder.login()
            except PortalError as exc:
                problems["wrong-cert"] = (exc.status, exc.reason)
            await intruder.close()
            # a second client for the busy UID reaches the same instance and is refused
            twin = PortalSession(portal.address, me)
            try:
                await twin.login()
            except PortalError as exc:
                problems["second-client"] = (exc.status, exc.reason)
            twin.token = "forged"
            try:
                await twin.query_avg()
            except PortalError as exc:
                problems["bad-token"] = (exc.status, exc.reason)
            await twin.close()
            # requests that name a wrong field
            for name, call in (
                ("bad-metric", session.write([{"metric": "colour", "threshold": 1}])),
                ("bad-row", session.long_write([[1, 2, 3]])),
                ("nan", session.write([{"metric": "power", "threshold": "NaN"}])),
            ):
                try:
                    await call
                except PortalError as exc:
                    problems[name] = (exc.status, exc.reason, str(exc))
            after = await session.query_avg()
            await session.logout()
            await session.close()
            return before, after, problems

        before, after, problems = run(scenario())
        assert problems["malformed"] == (400, "malformed")
        assert problems["wrong-cert"] == (403, "wrong-certificate")
        assert problems["second-client"] == (409, "busy")
        assert problems["bad-token"] == (401, "bad-token")
        assert problems["bad-metric"][:2] == (400, "bad-request")
        assert "alarms[0].metric" in problems["bad-metric"][2]
        assert "metrics[0]" in problems["bad-row"][2]
        assert "alarms[0].threshold" in problems["nan"][2]
        assert before == after  # nothing refused was written
        # a hello without a consumer's name never reaches an instance
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _tls(portal.address, me, "localhost").getpeercert()


def test_isolation_when_an_instance_serves_consumers_one_after_another(data_dir):
    """With --reuse one instance serves c000004 then c000005: the second sees only its
    own data; with its own certificate it cannot claim the first one's name."""
    with RunningPortal(data_dir, mode="standby", buffer=1, reuse=True) as portal:
        portal.ready(1)
        first, second = creds(data_dir, "c000004"), creds(data_dir, "c000005")
        marker = metrics_for(0.25, start=2_100_000_000)
        run(
            _session(
                portal.address,
                first,
                [lambda s: s.login(), lambda s: s.long_write(marker), lambda s: s.logout()],
            )
        )
        used = portal.wait(lambda xs: len(xs) >= 1 and all(x["state"] == "ready" for x in xs))
        seen = run(
            _session(
                portal.address,
                second,
                [
                    lambda s: s.login(),
                    lambda s: s.query_avg(start=2_100_000_000),
                    lambda s: s.query_avg(),
                    lambda s: s.logout(),
                ],
            )
        )
        assert {x["id"] for x in used} & {x["id"] for x in portal.instances()}  # reused
        assert seen[1]["count"] == 0 and seen[2]["count"] == SEED_ROWS
        with pytest.raises(PortalError, match="wrong-certificate"):
            run(_session(portal.address, replace(second, uid="c000004"), [lambda s: s.login()]))


def test_a_restarted_routing_manager_learns_active_sessions_from_the_wrappers(data_dir):
    with RunningPortal(data_dir, mode="standby", buffer=1) as portal:
        portal.ready(1)
        session = PortalSession(portal.address, creds(data_dir, "c000006"))

        async def scenario():
            await session.login()
            serving = next(x for x in portal.instances() if x["uid"] == "c000006")

            # the manager loses its state, as a restarted one starts with none
            def forget() -> int:
                known = len(portal.portal.table.instances)
                portal.portal.table.instances.clear()
                return known

            assert await asyncio.to_thread(portal.call, forget) >= 1
            rebuilt = await asyncio.to_thread(
                portal.wait, lambda xs: any(x["uid"] == "c000006" for x in xs), 10
            )
            assert next(x for x in rebuilt if x["uid"] == "c000006")["id"] == serving["id"]
            # a new connection of the consumer goes back to its instance
            twin = PortalSession(portal.address, session.credentials)
            twin.token = session.token
            result = await twin.query_avg()
            await twin.close()
            await session.logout()
            await session.close()
            return result

        assert run(scenario())["count"] == SEED_ROWS


def test_on_demand_starts_an_instance_at_login_and_expired_sessions_keep_their_writes(
    data_dir,
):
    with RunningPortal(data_dir, mode="on-demand", session_ttl=3.0, claim_timeout=2.0) as portal:
        assert portal.instances() == []
        me = creds(data_dir, "c000001")
        session = PortalSession(portal.address, me)

        async def scenario():
            await session.login()  # waits for a cold start
            await session.long_write(metrics_for(0.05, start=2_200_000_000))
            await asyncio.sleep(4.0)  # the session expires: committed, written back, gone
            with pytest.raises(PortalError) as refused:
                await session.query_avg()
            await session.close()
            return refused.value

        refused = run(scenario())
        assert refused.status in (0, 401)  # the connection closed, or the token is unknown
        portal.wait(lambda xs: xs == [])  # on-demand keeps no idle instance
        found = run(
            _session(
                portal.address,
                me,
                [lambda s: s.login(), lambda s: s.query_avg(start=2_200_000_000)],
            )
        )
        assert found[1]["count"] == 12


def test_trivial_mode_keeps_one_instance_per_consumer(data_dir):
    with RunningPortal(data_dir, mode="trivial", consumers=3) as portal:
        portal.ready(3)
        run(
            _session(
                portal.address,
                creds(data_dir, "c000002"),
                [lambda s: s.login(), lambda s: s.query_avg(), lambda s: s.logout()],
            )
        )
        portal.ready(3)  # the one that served is replaced
        assert len(portal.instances()) == 3


def test_haproxy_routes_by_sni_with_its_map_and_asks_the_manager_on_a_miss(data_dir, tmp_path):
    port = free_port()
    with RunningPortal(
        data_dir,
        mode="standby",
        buffer=1,
        haproxy_socket=tmp_path / "haproxy" / "haproxy.sock",
        haproxy_map=tmp_path / "haproxy" / "routes.map",
    ) as portal:
        process, routes = start_haproxy(
            tmp_path / "haproxy",
            f"127.0.0.1:{port}",
            portal.config.manager_url,
            "consumers.portal.local",
        )
        try:
            deadline = time.monotonic() + 20
            while not (tmp_path / "haproxy" / "haproxy.sock").exists():
                assert process.poll() is None, (tmp_path / "haproxy" / "haproxy.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            portal.ready(1)
            me = creds(data_dir, "c000003")
            session = PortalSession(f"127.0.0.1:{port}", me)

            async def scenario():
                await session.login()  # a miss: Lua asks the manager, which fills the map
                entries = routes.entries()
                again = PortalSession(f"127.0.0.1:{port}", me)
                again.token = session.token
                avg = await again.query_avg()  # a hit: from the map
                await again.close()
                await session.logout()
                await session.close()
                return entries, avg

            entries, avg = run(scenario())
            serving = entries.get(server_name("c000003"))
            assert serving is not None and avg["count"] == SEED_ROWS
            portal.wait(lambda xs: all(x["address"] != serving for x in xs))
            deadline = time.monotonic() + 10
            while server_name("c000003") in routes.entries():  # released at LOGOUT
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(10)


def test_the_cli_serves_and_a_type1_client_pushes_metrics(data_dir):
    port, manager, wrapper = free_port(), free_port(), free_port()
    cli = [sys.executable, "-m", "securecloud.cli.main"]
    serve = subprocess.Popen(
        [*cli, "portal", "serve", "--mode", "standby", "--buffer", "1", "--port", str(port),
         "--manager-port", str(manager), "--wrapper-port", str(wrapper),
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, serve.stdout.read().decode()
            try:
                listed = httpx.get(f"http://127.0.0.1:{manager}/v1/instances").json()
                if any(x["state"] == "ready" for x in listed["instances"]):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        done = subprocess.run(
            [*cli, "portal", "client", "--port", str(port), "--sni", "c000005", "--mode",
             "type1", "--hours", "0.5", "--csv", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert lines[0] == "operation,latency_ms,status,uid"
        assert [line.split(",")[0] for line in lines[1:]] == ["LOGIN", "LONG_WRITE", "LOGOUT"]
        assert all(line.split(",")[2] == "200" for line in lines[1:])
        bad = subprocess.run(
            [*cli, "portal", "client", "--port", str(port), "--sni", "nobody",
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode == 1 and "keydir" in bad.stderr
    finally:
        serve.terminate()
        assert serve.wait(30) == 0
