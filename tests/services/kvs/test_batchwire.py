"""The binary batch body: what goes in comes out, and a damaged body is refused by name."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.services.kvs import batchwire

_OPS = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"op": st.just("put"), "key": st.text(min_size=1, max_size=40), "data": st.binary()},
            optional={
                "policy": st.sampled_from(["ec:6+3", "replicate:3", None]),
                "if_match": st.one_of(st.none(), st.integers(0, 2**63 - 1)),
            },
        ),
        st.fixed_dictionaries(
            {"op": st.just("delete"), "key": st.text(min_size=1, max_size=40)},
            optional={"if_match": st.integers(0, 10)},
        ),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(_OPS)
def test_operations_come_back_as_they_went(operations):
    decoded = batchwire.decode(batchwire.encode(operations))
    assert [
        (o.delete, o.key, o.data, o.policy, o.if_match) for o in decoded
    ] == [
        (op["op"] == "delete", op["key"], op.get("data", b""), op.get("policy"),
         op.get("if_match"))
        for op in operations
    ]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(_OPS.filter(bool), st.data())
def test_a_body_cut_anywhere_is_refused(operations, data):
    body = batchwire.encode(operations)
    cut = data.draw(st.integers(8, len(body) - 1))
    with pytest.raises(batchwire.BatchFormatError, match=r"operations\[\d+\]"):
        batchwire.decode(body[:cut])


def test_damage_is_refused_with_the_operation_and_field_named():
    body = batchwire.encode([{"op": "put", "key": "a", "data": b"xyz"}])
    with pytest.raises(batchwire.BatchFormatError, match="expected b'SCB1'"):
        batchwire.decode(b"{}" + body)
    with pytest.raises(batchwire.BatchFormatError, match=r"operations\[0\]\.op"):
        batchwire.decode(body[:8] + b"X" + body[9:])
    with pytest.raises(batchwire.BatchFormatError, match=r"operations\[1\]: cut short"):
        batchwire.decode(body[:4] + (2).to_bytes(4, "big") + body[8:])  # one announced too many
    with pytest.raises(batchwire.BatchFormatError, match="2 bytes after the 1 operations"):
        batchwire.decode(body + b"PP")
    with pytest.raises(batchwire.BatchFormatError, match=r"operations\[0\]\.data: 3 bytes"):
        batchwire.decode(body[:-1])
    negative = body.replace(b"\xff" * 8, (-5).to_bytes(8, "big", signed=True))
    with pytest.raises(batchwire.BatchFormatError, match=r"operations\[0\]\.if_match: -5"):
        batchwire.decode(negative)
