"""A portal server instance: serves one consumer at a time, over TLS that ends here.

An attested service (`portal-instance`); CAS gives it the portal's issuing CA
(key included: see docs/cas.md, `ca: true`), the consumer CA's certificate
(to verify clients) and its KVS tenant key. It listens on a port of its own and
tells its wrapper what it does on standard output, one event per line:

    LISTENING <host>:<port>   the address routers forward to
    WAITING_LOGIN             ready for a consumer (the wrapper reports Ready)
    LOGIN <uid>               serving <uid> (Active)
    LOGOUT                    done (Stopped); the process then exits, unless --reuse

During the handshake the SNI names the consumer; the instance presents a
certificate for that UID minted on the spot (`names.ServerIdentities`) and
demands a client certificate of the same UID. While a session lives, handshakes
for any other UID are refused with an alert. LOGIN brings the consumer's
SQLCipher file from the KVS (bucket `portal`) into the instance's private
memory-backed folder and opens it with the key the client sends (the fetch starts
at the handshake, as soon as the SNI names the consumer, so it overlaps the rest of
the handshake and the LOGIN request); LOGOUT (or the session's expiry) commits,
closes, writes the file back (If-Match its version), and wipes it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import math
import secrets
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h11

from securecloud.apps.portal.database import ConsumerDatabase, WrongKey
from securecloud.apps.portal.names import (
    DOMAIN,
    BadName,
    ServerIdentities,
    uid_in_certificate,
    uid_of,
)
from securecloud.runtime.manifest import builtin_service

MANIFEST = builtin_service("portal-instance", "securecloud.apps.portal.instance:main", heap_mb=16)
BUCKET = "portal"
MAX_BODY = 4 * 1024 * 1024
MAX_ALARMS, MAX_METRICS = 100, 20_000


def database_key(uid: str) -> str:
    return f"db/{uid}.sqlite"


def event(line: str) -> None:
    """One event for the wrapper's sidecar."""
    print(line, flush=True)


class Refused(Exception):
    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class Session:
    uid: str
    token: str
    expires_at: float
    db: ConsumerDatabase
    version: int  # the KVS version the file was read at (written back with If-Match)


class Instance:
    def __init__(self, identities: ServerIdentities, store, ttl: float, reuse: bool):
        self.identities = identities
        self.store = store
        self.ttl = ttl
        self.reuse = reuse
        self.session: Session | None = None
        self.finished = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(2, "kvs")
        self._fetches: dict[str, concurrent.futures.Future] = {}

    # -- TLS -----------------------------------------------------------------
    def tls_context(self) -> ssl.SSLContext:
        base = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        base.verify_mode = ssl.CERT_REQUIRED
        base.sni_callback = self._on_sni
        return base

    def _on_sni(self, sslobj, name, _base) -> int | None:
        try:
            uid = uid_of(name, self.identities.domain)
        except BadName:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if self.session is not None and self.session.uid != uid:
            return ssl.ALERT_DESCRIPTION_ACCESS_DENIED  # busy with another consumer
        sslobj.context = self.identities.context(uid)
        if self.session is None:
            self._prefetch(uid)
        return None

    # -- HTTP ----------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        sni_uid = self.identities.uid_of_context(sslobj.context)
        peer_uid = uid_in_certificate(sslobj.getpeercert(binary_form=True))
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        request, body = None, bytearray()
        try:
            while True:
                try:
                    got = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._send(writer, conn, 400, {"error": "malformed", "detail": str(exc)})
                    return
                if got is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(got, h11.Request):
                    request, body = got, bytearray()
                elif isinstance(got, h11.Data):
                    body += got.data
                    if len(body) > MAX_BODY:
                        await self._send(
                            writer, conn, 413, {"error": "too-large", "detail": "body over 4 MiB"}
                        )
                        return
                elif isinstance(got, h11.EndOfMessage):
                    status, payload = await self._dispatch(request, bytes(body), sni_uid, peer_uid)
                    await self._send(writer, conn, status, payload)
                    if conn.our_state is h11.MUST_CLOSE or self.finished.is_set():
                        return
                    conn.start_next_cycle()
                elif isinstance(got, h11.ConnectionClosed):
                    return
        except (ConnectionError, ssl.SSLError, h11.LocalProtocolError):
            return
        finally:
            writer.close()

    async def _send(self, writer, conn, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        if conn.our_state not in (h11.SEND_RESPONSE, h11.IDLE):  # IDLE: after a bad request
            return
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _dispatch(self, request, body: bytes, sni_uid: str, peer_uid: str | None):
        try:
            if peer_uid != sni_uid:
                raise Refused(
                    403,
                    "wrong-certificate",
                    f"the client certificate names {peer_uid!r}, not {sni_uid!r}",
                )
            target = urlsplit(request.target.decode("ascii", "replace"))
            route = (request.method.decode(), target.path)
            if route == ("GET", "/healthz"):
                return 200, {"state": "active" if self.session else "ready"}
            if route == ("POST", "/v1/login"):
                return 200, await self.login(sni_uid, _json(body))
            session = self._session(request, sni_uid)
            if route == ("POST", "/v1/logout"):
                return 200, self.logout(session)
            if route == ("POST", "/v1/write"):
                return 200, {"written": session.db.write_alarms(_alarms(_json(body)))}
            if route == ("POST", "/v1/long-write"):
                return 200, {"written": session.db.write_metrics(_metrics(_json(body)))}
            if route == ("GET", "/v1/query-avg"):
                start, end = _period(parse_qs(target.query))
                return 200, session.db.averages(start, end)
            raise Refused(404, "no-such-operation", f"{route[0]} {route[1]} is not an operation")
        except Refused as exc:
            return exc.status, {"error": exc.reason, "detail": exc.detail}

    # -- operations ------------------------------------------------------------
    def _prefetch(self, uid: str) -> None:
        """The handshake named the consumer: fetch its (encrypted) file from the KVS while
        the handshake and the LOGIN request are still on their way."""
        if uid not in self._fetches:
            if len(self._fetches) >= 4:
                self._fetches.pop(next(iter(self._fetches)))
            self._fetches[uid] = self._pool.submit(
                self.store.get_with_version, BUCKET, database_key(uid)
            )

    async def login(self, uid: str, doc: dict) -> dict:
        if self.session is not None:
            raise Refused(409, "busy", f"a session for {uid} is already open on this instance")
        raw = doc.get("key")
        try:
            key = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            key = b""
        if len(key) != 32:
            raise Refused(400, "bad-request", "key: expected 64 hex digits (a raw 256-bit key)")
        self._prefetch(uid)
        try:
            data, version = await asyncio.wrap_future(self._fetches.pop(uid))
        except KeyError:
            raise Refused(404, "no-such-consumer", f"{uid} has no database") from None
        if self.session is not None:  # another LOGIN won while this one waited
            raise Refused(409, "busy", f"a session for {uid} is already open on this instance")
        path = Path(f"{uid}.sqlite")
        path.write_bytes(data)
        try:
            db = ConsumerDatabase(path, key)
        except WrongKey:
            path.unlink()
            detail = "key: it does not open this consumer's database"
            raise Refused(401, "wrong-key", detail) from None
        token = secrets.token_urlsafe(32)
        self.session = Session(uid, token, time.time() + self.ttl, db, version)
        event(f"LOGIN {uid}")
        return {"uid": uid, "token": token, "expires_at": self.session.expires_at}

    def _session(self, request, uid: str) -> Session:
        session = self.session
        if session is None or session.uid != uid:
            raise Refused(401, "no-session", "LOGIN first")
        auth = dict(request.headers).get(b"authorization", b"").decode()
        if not secrets.compare_digest(auth, f"Bearer {session.token}"):
            raise Refused(401, "bad-token", "authorization: not this session's token")
        if time.time() >= session.expires_at:
            self.logout(session)
            raise Refused(401, "session-expired", "the session expired; LOGIN again")
        return session

    def logout(self, session: Session) -> dict:
        """Commit and close, write the file back to the KVS, wipe it, say LOGOUT."""
        session.db.close()
        path = session.db.path
        self.store.put_if(BUCKET, database_key(session.uid), path.read_bytes(), session.version)
        path.unlink()
        self.session = None
        event("LOGOUT")
        if self.reuse:
            event("WAITING_LOGIN")
        else:
            self.finished.set()
        return {"logged_out": session.uid}

    def warm_up(self) -> None:
        """Pay the first-use costs before announcing Ready, not during a consumer's LOGIN:
        the first certificate minted in a process (lazy initialisation in OpenSSL and
        cryptography) and the TLS connection to the KVS gateway (kept alive after)."""
        self.identities.context("warm-up")
        self.identities.forget("warm-up")
        self.store.client.list(BUCKET, "db/", "", 1)

    async def expire(self) -> None:
        while not self.finished.is_set():
            await asyncio.sleep(0.5)
            session = self.session
            if session is not None and time.time() >= session.expires_at:
                self.logout(session)


def _json(body: bytes) -> dict:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise Refused(400, "bad-request", "body: not JSON") from None
    if not isinstance(doc, dict):
        raise Refused(400, "bad-request", "body: expected a JSON object")
    return doc


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refused(400, "bad-request", f"{field}: expected a finite number")
    return float(value)


def _alarms(doc: dict) -> list[tuple[str, float]]:
    alarms = doc.get("alarms")
    if not isinstance(alarms, list) or not 1 <= len(alarms) <= MAX_ALARMS:
        raise Refused(400, "bad-request", f"alarms: expected a list of 1..{MAX_ALARMS}")
    out = []
    for i, alarm in enumerate(alarms):
        metric = alarm.get("metric") if isinstance(alarm, dict) else None
        if metric not in ("power", "impedance", "tension"):
            raise Refused(400, "bad-request", f"alarms[{i}].metric: power, impedance or tension")
        out.append((metric, _number(alarm.get("threshold"), f"alarms[{i}].threshold")))
    return out


def _metrics(doc: dict) -> list[tuple[int, float, float, float]]:
    rows = doc.get("metrics")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_METRICS:
        raise Refused(400, "bad-request", f"metrics: expected a list of 1..{MAX_METRICS}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 4:
            raise Refused(
                400, "bad-request", f"metrics[{i}]: [timestamp, power, impedance, tension]"
            )
        stamp = row[0]
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            raise Refused(400, "bad-request", f"metrics[{i}][0]: timestamp must be an integer")
        out.append((stamp, *(_number(v, f"metrics[{i}][{j + 1}]") for j, v in enumerate(row[1:]))))
    return out


def _period(query: dict) -> tuple[int | None, int | None]:
    bounds = []
    for name in ("start", "end"):
        values = query.get(name)
        if not values:
            bounds.append(None)
            continue
        try:
            bounds.append(int(values[0]))
        except ValueError:
            raise Refused(400, "bad-request", f"{name}: expected an integer timestamp") from None
    return bounds[0], bounds[1]


class KvsFiles:
    """The consumers' database files in the KVS, with versions for If-Match writes."""

    def __init__(self, client):
        self.client = client

    def get_with_version(self, bucket: str, key: str) -> tuple[bytes, int]:
        from securecloud.services.kvs.errors import KvsError

        try:
            return self.client.get_versioned(bucket, key)
        except KvsError as exc:
            if exc.reason == "no-such-key":
                raise KeyError(key) from None
            raise

    def put_if(self, bucket: str, key: str, data: bytes, version: int) -> None:
        self.client.put(bucket, key, data, if_match=version)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portal-instance", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (port: any free)")
    p.add_argument("--domain", default=DOMAIN, help="consumers' server names end with this")
    p.add_argument("--session-ttl", type=float, default=900.0, help="session lifetime, seconds")
    p.add_argument("--reuse", action="store_true", help="serve another consumer after LOGOUT")
    return p


async def serve(args, instance: Instance) -> None:
    server = await asyncio.start_server(
        instance.handle, args.host, 0, ssl=instance.tls_context(), ssl_handshake_timeout=10
    )
    host, port = server.sockets[0].getsockname()[:2]
    event(f"LISTENING {host}:{port}")
    event("WAITING_LOGIN")
    expiry = asyncio.create_task(instance.expire())
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, instance.finished.set)
    await instance.finished.wait()
    if instance.session is not None:  # SIGTERM during a session: keep what it wrote
        instance.logout(instance.session)
    expiry.cancel()
    server.close()
    await asyncio.sleep(0.05)  # let the last response leave


def main(argv: list[str]) -> int:
    from securecloud.services.kvs.deploy import injected_client

    args = parser().parse_args(argv)
    identities = ServerIdentities(
        Path("tls/issuer.key").read_bytes(),
        Path("tls/issuer.crt").read_bytes(),
        Path("tls/consumers-ca.crt").resolve(),
        args.domain,
    )
    store = KvsFiles(injected_client(Path("kvs.json")))
    instance = Instance(identities, store, args.session_ttl, args.reuse)
    instance.warm_up()
    asyncio.run(serve(args, instance))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
