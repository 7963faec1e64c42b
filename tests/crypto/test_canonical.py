import pytest
from hypothesis import given
from hypothesis import strategies as st

from securecloud.crypto import canonical
from securecloud.crypto.errors import FormatError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_canonical_round_trip(value):
    data = canonical.encode(value)
    assert canonical.decode(data) == value
    assert canonical.encode(canonical.decode(data)) == data


@given(st.dictionaries(st.text(), st.integers(0, 9), min_size=2))
def test_key_order_does_not_change_the_bytes(mapping):
    reversed_mapping = dict(reversed(list(mapping.items())))
    assert canonical.encode(mapping) == canonical.encode(reversed_mapping)


@pytest.mark.parametrize(
    "text",
    [b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1,"a":1}', b"[1.5]", b"[1e3]", b'"\\u0041"', b"[NaN]"],
)
def test_decode_refuses_non_canonical_encodings(text):
    with pytest.raises(FormatError):
        canonical.decode(text)


@pytest.mark.parametrize("value", [1.5, b"bytes", {1: "x"}, 2**64, object()])
def test_encode_refuses_values_without_a_canonical_form(value):
    with pytest.raises(FormatError):
        canonical.encode(value)
