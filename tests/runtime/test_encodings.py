"""Property tests for the runtime's encoder/decoder pairs: sigstruct, quote, configuration."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecloud.crypto import fingerprint, generate_signing_key
from securecloud.runtime.errors import AttestationError
from securecloud.runtime.evidence import Evidence
from securecloud.runtime.provisioning import InjectedFile, ServiceConfig
from securecloud.runtime.sigstruct import SigStruct, sign_service
from securecloud.runtime.sim import SimVerifier, sign_quote

KEY = generate_signing_key("ed25519")
VERIFIER = SimVerifier({fingerprint(KEY.public_key()): KEY.public_key()})
hex32 = st.binary(min_size=32, max_size=32).map(bytes.hex)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(hex32, st.integers(0, 65535), st.integers(0, 65535))
def test_sigstruct_round_trips_and_verifies(mrenclave, prod, svn):
    signed = SigStruct.from_bytes(sign_service(mrenclave, prod, svn, KEY).to_bytes())
    assert (signed.mrenclave, signed.isv_prod_id, signed.isv_svn) == (mrenclave, prod, svn)
    assert signed.verified_mrsigner(mrenclave) == fingerprint(KEY.public_key())


@settings(max_examples=50)
@given(
    hex32,
    hex32,
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.booleans(),
    st.sampled_from(["UpToDate", "OutOfDate", "SWHardeningNeeded"]),
    st.lists(st.text(min_size=1, max_size=12), max_size=3),
    st.binary(min_size=64, max_size=64),
)
def test_quote_round_trips_through_json(mrenclave, mrsigner, prod, svn, debug, tcb, advisories, rd):
    body = {
        "mrenclave": mrenclave,
        "mrsigner": mrsigner,
        "isv_prod_id": prod,
        "isv_svn": svn,
        "debug": debug,
        "tcb_status": tcb,
        "advisories": advisories,
        "report_data": rd.hex(),
    }
    claims = VERIFIER.verify(Evidence.from_json(sign_quote(KEY, body).to_json()))
    assert (claims.mrenclave, claims.mrsigner, claims.isv_prod_id, claims.isv_svn) == (
        mrenclave,
        mrsigner,
        prod,
        svn,
    )
    assert (claims.debug, claims.tcb_status, list(claims.advisories), claims.report_data) == (
        debug,
        tcb,
        advisories,
        rd,
    )


@given(st.sampled_from(["mrenclave", "isv_svn", "debug", "tcb_status", "report_data"]))
def test_any_changed_quote_field_fails_verification(field):
    body = {
        "mrenclave": "ab" * 32,
        "mrsigner": "0" * 64,
        "isv_prod_id": 1,
        "isv_svn": 2,
        "debug": False,
        "tcb_status": "UpToDate",
        "advisories": [],
        "report_data": "00" * 64,
    }
    doc = sign_quote(KEY, body).to_json()
    changed = {
        "mrenclave": "cd" * 32,
        "isv_svn": 3,
        "debug": True,
        "tcb_status": "OutOfDate",
        "report_data": "11" * 64,
    }
    doc["payload"]["body"][field] = changed[field]
    with pytest.raises(AttestationError):
        VERIFIER.verify(Evidence.from_json(doc))


@given(
    st.lists(text, max_size=5),
    st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), text, max_size=4),
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True), st.binary(max_size=64)
        ),
        max_size=3,
    ),
)
def test_service_config_round_trips(command, environment, files):
    config = ServiceConfig(
        "s",
        "ab" * 32,
        "svc",
        tuple(command),
        environment,
        tuple(InjectedFile(p, c) for p, c in files),
    )
    assert ServiceConfig.from_json(config.to_json()) == config
