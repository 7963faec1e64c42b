"""The runs' key filter: never a false "not here", and few false "maybe"s."""

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.services.sql.keyfilter import KeyFilter


@settings(max_examples=200, deadline=None)
@given(st.sets(st.binary(max_size=24), max_size=300))
def test_every_key_of_the_run_may_be_there(keys):
    found = KeyFilter(array("q", map(hash, keys)))
    assert all(found.may_hold(key) for key in keys)


def test_most_absent_keys_are_ruled_out():
    held = [b"k%d" % n for n in range(50_000)]
    found = KeyFilter(array("q", map(hash, held)))
    absent = [b"a%d" % n for n in range(50_000)]
    wrongly = sum(found.may_hold(key) for key in absent)
    assert wrongly < 0.03 * len(absent)  # two probes at 16 to 32 bits a key: about 1 %
    assert found.size_bytes * 8 >= 16 * len(held)
