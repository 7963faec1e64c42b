"""The SNI of real ClientHellos (made by the ssl module), however they are cut up."""

import asyncio
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securecloud.apps.portal.clienthello import (
    MAX_HELLO,
    HelloError,
    handshake_bytes,
    read_hello,
    server_name,
)

# a letter first: a name of digits and dots is an IP address, for which TLS sends no SNI
LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


def client_hello(name: str | None) -> bytes:
    """The first flight of a real TLS client for `name` (None: no SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no trust store: only the hello
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def refragment(records: bytes, sizes: list[int]) -> bytes:
    """The same handshake bytes in records of the given sizes (RFC 8446 §5.1 allows it)."""
    payload, _ = handshake_bytes(records)
    out, at, i = bytearray(), 0, 0
    while at < len(payload):
        size = max(1, sizes[i % len(sizes)]) if sizes else len(payload)
        chunk = payload[at : at + size]
        out += bytes([22, 3, 1]) + len(chunk).to_bytes(2, "big") + chunk
        at, i = at + len(chunk), i + 1
    return bytes(out)


async def _read(segments: list[bytes], deadline: float = 2.0) -> bytes:
    reader = asyncio.StreamReader()
    for segment in segments:
        reader.feed_data(segment)
    reader.feed_eof()
    return await read_hello(reader, deadline)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(LABEL, min_size=2, max_size=4),
    sizes=st.lists(st.integers(1, 300), max_size=5),
    cuts=st.lists(st.integers(1, 200), max_size=8),
    trailing=st.binary(max_size=40),
)
def test_the_server_name_survives_any_records_and_segments(labels, sizes, cuts, trailing):
    name = ".".join(labels)
    data = refragment(client_hello(name), sizes)
    segments, at = [], 0
    for cut in cuts:
        segments.append(data[at : at + cut])
        at += cut
    segments.append(data[at:] + trailing)  # what follows the hello is forwarded as it is
    got = asyncio.run(_read([s for s in segments if s]))
    assert got.startswith(data)  # every byte read is kept for forwarding
    assert server_name(got) == name


def test_a_hello_without_sni_has_no_name():
    assert server_name(client_hello(None)) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "record type 71"),
        (bytes([22, 2, 0, 0, 5]) + b"hello", "not a TLS record"),
        (bytes([22, 3, 1, 0, 4, 2, 0, 0, 0]), "expected ClientHello"),
        (bytes([22, 3, 1]) + (MAX_HELLO + 1).to_bytes(2, "big"), "record length"),
    ],
)
def test_what_is_not_a_client_hello_is_refused(data, message):
    with pytest.raises(HelloError, match=message):
        asyncio.run(_read([data]))


def test_a_hello_cut_short_is_refused():
    data = client_hello("c1.consumers.portal.local")
    with pytest.raises(HelloError, match="closed before"):
        asyncio.run(_read([data[:-10]]))


def test_a_hello_that_never_ends_is_capped():
    """A record that claims 16 KiB of handshake, never finished: the cap stops it."""
    header = bytes([22, 3, 1]) + (MAX_HELLO).to_bytes(2, "big")
    body = bytes([1]) + (MAX_HELLO * 4).to_bytes(3, "big")
    records = header + body + bytes(MAX_HELLO - len(body))
    records += bytes([22, 3, 1, 0, 10]) + bytes(10)
    with pytest.raises(HelloError, match="no complete ClientHello"):
        asyncio.run(_read([records]))


def test_a_slow_client_meets_the_deadline():
    async def slow():
        reader = asyncio.StreamReader()
        reader.feed_data(client_hello("c1.consumers.portal.local")[:20])
        return await read_hello(reader, 0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(slow())


def test_a_truncated_extension_block_is_an_error_not_a_crash():
    data = bytearray(client_hello("c1.consumers.portal.local"))
    payload_start = 5 + 4 + 2 + 32
    session_len = data[payload_start]
    at = payload_start + 1 + session_len
    suites = int.from_bytes(data[at : at + 2], "big")
    at += 2 + suites
    at += 1 + data[at]
    data[at : at + 2] = (0xFFFF).to_bytes(2, "big")  # extensions claim more than there is
    with pytest.raises(HelloError, match="truncated"):
        server_name(bytes(data))
