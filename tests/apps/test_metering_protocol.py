"""Meter frames and the suite-1 recipe: layouts, test vectors, tampering, fuzzing."""

import contextlib
import dataclasses
import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.apps.metering import frames
from securecloud.apps.metering.meter import MeterSession
from securecloud.apps.metering.model import consumer_for, day_readings
from securecloud.apps.metering.reading import (
    LOW_VOLTAGE,
    LOW_VOLTAGE_3P,
    PHASE_FIELDS,
    SIZE,
    Reading,
    decode_many,
    implausible_many,
    register_implausible,
)
from securecloud.crypto import suite1
from securecloud.crypto.errors import IntegrityError, SignatureError

METER_SCALAR = bytes.fromhex("11" * 32)
AUTH_SCALAR = bytes.fromhex("22" * 32)


def test_crc_is_crc16_arc_as_in_nbr14522():
    assert frames.crc(b"123456789") == 0xBB3D  # the catalogued check value of CRC-16/ARC


def test_frame_sizes_are_fixed():
    assert frames.Nack(7, 1, 4).encode().__len__() == frames.DOWNLINK_SIZE
    data = frames.Data(7, bytes(8), 1, bytes(frames.SEALED_SIZE)).encode()
    assert len(data) == frames.UPLINK_SIZE == 258
    assert SIZE == 121


def _report(counter=1) -> Reading:
    consumer = consumer_for(1, 7)
    reports, _ = day_readings(consumer, dt.date(2026, 3, 2), counter, 0.0, np.random.default_rng(0))
    return reports[0]


def test_vector_session_keys_and_sealed_report_are_reproducible():
    """Fixed keys and session id give fixed key material: the vector in docs/protocol.md."""
    meter = suite1.meter_key_from_scalar(METER_SCALAR)
    auth = suite1.meter_key_from_scalar(AUTH_SCALAR)
    z_meter = suite1.static_secret(meter, auth.public_key())
    z_auth = suite1.static_secret(auth, meter.public_key())
    assert z_meter == z_auth
    keys = suite1.session_keys(z_meter, bytes(range(8)), 7)
    tag = suite1.ack_tag(keys, b"ack")
    assert z_meter.hex() == VECTOR["static"]
    assert tag.hex() == VECTOR["ack_tag"]
    sealed = suite1.encrypt_frame(keys, frames.system_title(7), 1, b"hdr", bytes(SIZE))
    assert sealed[-16:].hex() == VECTOR["gcm_tag_of_zero_report"]


VECTOR = {  # also in docs/protocol.md
    "static": "bed6d21881d25a78633c935bec53bd59b4b30ec337cbfcf2490fd760a37def49",
    "ack_tag": "8fe005081818368fcab6281353d00ee9",
    "gcm_tag_of_zero_report": "fe94c040f8d878e3f240859820701b69",
}


def test_handshake_then_report_round_trip_and_tamper_detection():
    meter_key, auth_key = suite1.generate_meter_key(), suite1.generate_meter_key()
    session = MeterSession(7, meter_key, auth_key.public_key())
    hello_frame = session.hello(1000)
    hello = frames.decode_uplink(hello_frame)
    suite1.verify_raw(meter_key.public_key(), hello.signed_part(), hello.signature)
    accept = frames.Accept(7, b"\x01" * 8, 1001, 0, 0, bytes(64))
    signed = frames.Accept(
        *[*accept._fields()[:-1], suite1.sign_raw(auth_key, accept.signed_part(hello_frame))]
    )
    session.accept(frames.decode_downlink(signed.encode()))
    invocation, frame = session.seal(_report().encode())
    data = frames.decode_uplink(frame)
    z = suite1.static_secret(auth_key, meter_key.public_key())
    keys = suite1.session_keys(z, data.session_id, 7)
    plain = suite1.decrypt_frame(
        keys, frames.system_title(7), invocation, data.header(), data.sealed
    )
    assert Reading.decode(plain) == Reading.decode(_report().encode())
    flipped = bytearray(data.sealed)
    flipped[5] ^= 1
    with pytest.raises(IntegrityError):
        suite1.decrypt_frame(
            keys, frames.system_title(7), invocation, data.header(), bytes(flipped)
        )
    with pytest.raises(IntegrityError):  # the counter is bound through the IV
        suite1.decrypt_frame(
            keys, frames.system_title(7), invocation + 1, data.header(), data.sealed
        )


def test_meter_refuses_an_accept_signed_by_another_key():
    meter_key, auth_key = suite1.generate_meter_key(), suite1.generate_meter_key()
    session = MeterSession(7, meter_key, auth_key.public_key())
    hello_frame = session.hello(1000)
    accept = frames.Accept(7, b"\x01" * 8, 1001, 0, 0, bytes(64))
    forged = suite1.sign_raw(suite1.generate_meter_key(), accept.signed_part(hello_frame))
    with pytest.raises(SignatureError):
        session.accept(frames.Accept(*[*accept._fields()[:-1], forged]))


def test_crc_error_and_wrong_length_are_named():
    frame = bytearray(frames.Data(7, bytes(8), 1, bytes(frames.SEALED_SIZE)).encode())
    frame[40] ^= 0x10
    with pytest.raises(frames.FrameError) as crc_error:
        frames.decode_uplink(bytes(frame))
    assert crc_error.value.reason == "crc"
    with pytest.raises(frames.FrameError) as short:
        frames.decode_uplink(bytes(frame[:100]))
    assert short.value.reason == "length"


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_fuzz_decoders_raise_only_frame_errors(data):
    for decode in (frames.decode_uplink, frames.decode_downlink):
        with contextlib.suppress(frames.FrameError):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=frames.SEALED_SIZE, max_size=frames.SEALED_SIZE),
)
def test_data_frame_round_trip(meter, session_id, invocation, sealed):
    frame = frames.Data(meter, session_id, invocation, sealed)
    assert frames.decode_uplink(frame.encode()) == frame


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255))
def test_downlink_round_trips(meter, counter, byte):
    for frame in (
        frames.Nack(meter, counter, byte),
        frames.Ack(meter, bytes(8), counter, counter, byte, bytes(16)),
        frames.Command(meter, b"\x05" * 8, counter, byte, b"\x07" * 16),
    ):
        assert frames.decode_downlink(frame.encode()) == frame


def _phase(reading: Reading, index: int, **values) -> Reading:
    fields = dict(zip(PHASE_FIELDS, reading.phases[index], strict=True)) | values
    phases = list(reading.phases)
    phases[index] = tuple(fields[name] for name in PHASE_FIELDS)
    return dataclasses.replace(reading, phases=tuple(phases))


def test_each_physical_check_names_its_reason_and_the_first_failure_wins():
    consumer = dataclasses.replace(consumer_for(1, 7), meter_class="lv3")
    honest, _ = day_readings(consumer, dt.date(2026, 3, 2), 1, 0.0, np.random.default_rng(0))
    r = honest[40]
    volts, amps, _angle, active, _q, pf, _thd = r.phases[1]
    cases = [
        (r, LOW_VOLTAGE_3P, None),
        (dataclasses.replace(r, demand=float("nan")), LOW_VOLTAGE_3P, "not-finite"),
        (_phase(r, 2, angle=float("inf")), LOW_VOLTAGE_3P, "not-finite"),
        (dataclasses.replace(r, frequency=56.5), LOW_VOLTAGE_3P, "frequency-out-of-range"),
        (r, LOW_VOLTAGE, "unused-phase-not-zero"),  # three phases measured on a 1-phase meter
        (_phase(r, 1, voltage=90.0), LOW_VOLTAGE_3P, "voltage-out-of-range"),
        (_phase(r, 1, current=130.0), LOW_VOLTAGE_3P, "current-out-of-range"),
        (_phase(r, 1, pf=1.2), LOW_VOLTAGE_3P, "power-factor-out-of-range"),
        (_phase(r, 1, thd=101.0), LOW_VOLTAGE_3P, "thd-out-of-range"),
        (_phase(r, 1, active=2 * active + 10), LOW_VOLTAGE_3P, "power-inconsistent"),
        # phase 0's voltage is checked before phase 1's current, frequency before both
        (_phase(_phase(r, 1, current=-1.0), 0, voltage=0.0), LOW_VOLTAGE_3P,
         "voltage-out-of-range"),
        (dataclasses.replace(_phase(r, 0, voltage=0.0), frequency=70.0), LOW_VOLTAGE_3P,
         "frequency-out-of-range"),
        # a disconnected load may show 0 V
        (dataclasses.replace(_phase(r, 0, voltage=0.0, current=0.0, active=0.0), flags=0),
         LOW_VOLTAGE_3P, None),
    ]  # fmt: skip
    reports = decode_many([reading.encode() for reading, _m, _e in cases])
    assert implausible_many(reports, [m for _r, m, _e in cases]) == [e for _r, _m, e in cases]
    assert volts * amps * pf == pytest.approx(active, rel=0.05, abs=5)
    assert implausible_many(decode_many([]), []) == []


def test_the_energy_register_may_not_fall_or_rise_faster_than_the_supply_allows():
    most = 3 * 1.2 * 127.0 * 120.0 * 900 / 3600  # Wh one interval can deliver on lv3
    assert register_implausible(12, 5_000, LOW_VOLTAGE_3P, None) is None
    assert register_implausible(12, 5_000, LOW_VOLTAGE_3P, (11, 5_000)) is None
    assert register_implausible(12, 4_999, LOW_VOLTAGE_3P, (11, 5_000)) == (
        "energy-register-decreased"
    )
    assert register_implausible(12, 5_000 + int(most), LOW_VOLTAGE_3P, (11, 5_000)) is None
    assert register_implausible(12, 5_000 + int(1.1 * most), LOW_VOLTAGE_3P, (11, 5_000)) == (
        "energy-step-too-large"
    )
    assert register_implausible(14, 5_000 + int(2 * most), LOW_VOLTAGE_3P, (11, 5_000)) is None
