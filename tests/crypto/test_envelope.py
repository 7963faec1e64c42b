import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.crypto import (
    IntegrityError,
    envelope_key_id,
    new_key,
    open_bytes,
    open_sealed,
    open_stream,
    seal,
    seal_bytes,
    seal_stream,
)
from securecloud.crypto.errors import FormatError
from securecloud.crypto.stream import PACKAGE_SIZE, SALT_SIZE, TAG_SIZE

KEY = new_key()


@given(st.binary(max_size=4096), st.binary(max_size=64), st.binary(max_size=255))
def test_seal_round_trip_and_key_id(plaintext, aad, key_id):
    blob = seal(KEY, plaintext, aad, key_id=key_id)
    assert open_sealed(KEY, blob, aad) == plaintext
    assert envelope_key_id(blob) == key_id


@given(st.binary(min_size=1, max_size=256), st.data())
def test_any_flipped_bit_is_detected(plaintext, data):
    blob = bytearray(seal(KEY, plaintext, b"ctx", key_id=b"k1"))
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((IntegrityError, FormatError)):
        open_sealed(KEY, bytes(blob), b"ctx")


def test_seal_refuses_other_aad_and_other_key():
    blob = seal(KEY, b"reading", b"bucket/key")
    with pytest.raises(IntegrityError):
        open_sealed(KEY, blob, b"bucket/other")
    with pytest.raises(IntegrityError):
        open_sealed(new_key(), blob, b"bucket/key")


def test_seal_refuses_truncated_envelope():
    with pytest.raises(FormatError):
        open_sealed(KEY, seal(KEY, b"")[:10])


sizes = st.sampled_from([0, 1, PACKAGE_SIZE - 1, PACKAGE_SIZE, PACKAGE_SIZE + 1, 3 * PACKAGE_SIZE])


@settings(max_examples=25, deadline=None)
@given(sizes, st.lists(st.integers(1, 70_000), max_size=5), st.binary(max_size=32))
def test_stream_round_trip_whatever_the_input_pieces(size, cuts, aad):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    pieces, rest = [], payload
    for cut in cuts:
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    sealed = b"".join(seal_stream(KEY, pieces, aad))
    assert b"".join(open_stream(KEY, io.BytesIO(sealed), aad)) == payload


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 3 * PACKAGE_SIZE + 200), st.booleans())
def test_open_bytes_agrees_with_open_stream_on_whole_and_cut_streams(size, cut, whole):
    """open_bytes decrypts in place; it must accept and refuse exactly what the streaming
    reader does, including streams cut anywhere."""
    sealed = seal_bytes(KEY, os.urandom(size), b"aad")
    blob = sealed if whole else sealed[:cut]
    try:
        expected = b"".join(open_stream(KEY, io.BytesIO(blob), b"aad"))
    except (IntegrityError, FormatError) as exc:
        with pytest.raises(type(exc)):
            open_bytes(KEY, blob, b"aad")
    else:
        assert open_bytes(KEY, blob, b"aad") == expected


def _packages(sealed: bytes) -> tuple[bytes, list[bytes]]:
    header_len = 5 + SALT_SIZE
    step = PACKAGE_SIZE + TAG_SIZE
    body = sealed[header_len:]
    return sealed[:header_len], [body[i : i + step] for i in range(0, len(body), step)]


def test_stream_detects_truncation_at_a_package_boundary():
    header, packages = _packages(seal_bytes(KEY, bytes(3 * PACKAGE_SIZE + 10)))
    with pytest.raises(IntegrityError):
        open_bytes(KEY, header + b"".join(packages[:3]))


def test_stream_detects_reordering():
    header, packages = _packages(seal_bytes(KEY, bytes(3 * PACKAGE_SIZE + 10)))
    swapped = [packages[1], packages[0], *packages[2:]]
    with pytest.raises(IntegrityError):
        open_bytes(KEY, header + b"".join(swapped))


def test_stream_detects_splicing_from_another_stream():
    header_a, packages_a = _packages(seal_bytes(KEY, bytes(2 * PACKAGE_SIZE + 1)))
    _, packages_b = _packages(seal_bytes(KEY, bytes(2 * PACKAGE_SIZE + 1)))
    with pytest.raises(IntegrityError):
        open_bytes(KEY, header_a + packages_a[0] + packages_b[1] + packages_a[2])


def test_stream_detects_dropped_final_flag_on_empty_payload():
    header, _ = _packages(seal_bytes(KEY, b""))
    with pytest.raises(IntegrityError):
        open_bytes(KEY, header)
