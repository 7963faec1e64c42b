"""Order-preserving keys: byte order is SQL order, and every key decodes back."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securecloud.services.sql.keys import (
    KeyEncodingError,
    decode_id,
    decode_value,
    decode_values,
    encode_id,
    encode_value,
    encode_values,
    ints_encoder,
    prefix_end,
)

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False)
texts = st.text()
blobs = st.binary()


def _sql_key(value):
    return (value is not None, value)


@given(st.one_of(ints, floats, texts, blobs, st.none()))
def test_every_value_decodes_to_itself(value):
    for descending in (False, True):
        encoded = encode_value(value, descending)
        decoded, end = decode_value(encoded + b"tail", 0, descending)
        assert end == len(encoded)
        if isinstance(value, float):
            assert decoded == value or (value == 0 and decoded == 0)
        else:
            assert decoded == value


def _check_order(a, b):
    ka, kb = encode_value(a), encode_value(b)
    if a == b:
        assert ka == kb
    else:
        assert (ka < kb) == (_sql_key(a) < _sql_key(b))
        # descending: complemented bytes reverse the order
        assert (encode_value(a, True) > encode_value(b, True)) == (ka < kb)


@given(st.one_of(ints, st.none()), st.one_of(ints, st.none()))
def test_integer_order_is_byte_order(a, b):
    _check_order(a, b)


@given(floats, floats)
def test_float_order_is_byte_order(a, b):
    _check_order(a + 0.0, b + 0.0)


@given(texts, texts)
def test_text_order_is_byte_order_of_utf8(a, b):
    # SQLite's BINARY collation compares UTF-8 bytes, which is code point order
    assert (encode_value(a) < encode_value(b)) == (a.encode() < b.encode()) or a == b


@given(blobs, blobs)
def test_blob_order_is_byte_order(a, b):
    _check_order(a, b)


@given(st.lists(st.tuples(ints, texts, floats), min_size=2, max_size=20))
def test_composite_keys_sort_like_tuples(rows):
    encoded = sorted(rows, key=lambda r: encode_values([r[0], r[1], r[2] + 0.0]))
    expected = sorted(rows, key=lambda r: (r[0], r[1].encode(), r[2] + 0.0))
    assert [encode_values(r) for r in encoded] == [encode_values(r) for r in expected]
    for row in rows:
        values, _ = decode_values(encode_values(row), 3)
        assert values[:2] == [row[0], row[1]] and math.isclose(values[2], row[2] + 0.0)


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**40))
def test_ids_keep_their_order(a, b):
    assert (encode_id(a) < encode_id(b)) == (a < b)
    assert decode_id(encode_id(a)) == (a, len(encode_id(a)))


@given(texts, texts)
def test_a_prefix_end_bounds_every_longer_key(prefix, suffix):
    start = encode_value(prefix)[:-2]  # text body without its end mark
    end = prefix_end(start)
    assert start <= start + suffix.encode() < end


def test_nan_and_huge_integers_have_no_key():
    import pytest

    from securecloud.services.sql.keys import KeyEncodingError

    with pytest.raises(KeyEncodingError):
        encode_value(float("nan"))
    with pytest.raises(KeyEncodingError):
        encode_value(2**63)


@given(
    st.lists(
        st.one_of(st.integers(min_value=-(2**64), max_value=2**64), st.none()),
        min_size=1,
        max_size=4,
    )
)
def test_the_integer_prefix_encoder_writes_what_encode_values_writes(values):
    encode = ints_encoder(len(values))
    if all(v is None or -(2**63) <= v < 2**63 for v in values):
        assert encode(values) == encode_values(values)
    else:
        with pytest.raises(KeyEncodingError):
            encode(values)
