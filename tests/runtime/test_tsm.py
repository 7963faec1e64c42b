"""configfs-tsm evidence, against a directory laid out like /sys/kernel/config/tsm/report."""

import base64
import struct
import threading
import time

import pytest

from securecloud.runtime.errors import AttestationError
from securecloud.runtime.evidence import Evidence
from securecloud.runtime.tsm import TsmAttester, TsmVerifier, parse_claims


def tdx_quote(report_data: bytes, mrtd: bytes, debug: bool = False) -> bytes:
    quote = bytearray(48 + 584 + 64)
    struct.pack_into("<H", quote, 0, 4)  # quote version
    struct.pack_into("<Q", quote, 48 + 120, 1 if debug else 0)  # TDATTRIBUTES.DEBUG
    quote[48 + 136 : 48 + 184] = mrtd
    quote[48 + 520 : 48 + 584] = report_data
    return bytes(quote)


class FakeConfigfs:
    """Plays the kernel: when inblob is written, produce outblob and bump generation."""

    def __init__(self, root, provider="tdx_guest", extra_writes=0):
        self.root, self.provider, self.extra = root, provider, extra_writes
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            for entry in self.root.iterdir():
                inblob = entry / "inblob"
                if not (entry / "generation").exists():
                    (entry / "provider").write_text(self.provider + "\n")
                    (entry / "generation").write_text("0\n")
                    (entry / "outblob").write_bytes(b"")
                    inblob.write_bytes(b"")
                data = inblob.read_bytes()
                if len(data) == 64:
                    generation = int((entry / "generation").read_text()) + 1 + self.extra
                    (entry / "outblob").write_bytes(tdx_quote(data, b"\x11" * 48))
                    inblob.write_bytes(b"")
                    (entry / "generation").write_text(f"{generation}\n")
            time.sleep(0.005)


@pytest.fixture
def configfs(tmp_path):
    fakes = []

    def make(**kw):
        fake = FakeConfigfs(tmp_path, **kw)
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.stop.set()


def slow_attester(tmp_path):
    attester = TsmAttester(tmp_path, "req")
    (tmp_path / "req").mkdir()
    time.sleep(0.05)  # let the fake kernel populate the entry
    original = attester._read

    def read(entry, field):
        if field == "outblob":
            time.sleep(0.05)  # the kernel produces the quote when inblob is written
        return original(entry, field)

    attester._read = read
    return attester


def test_tsm_attester_returns_evidence_carrying_our_report_data(tmp_path, configfs):
    configfs()
    evidence = slow_attester(tmp_path).evidence(b"\x42" * 64)
    claims = parse_claims(Evidence.from_json(evidence.to_json()))
    assert claims.tee == "tdx" and claims.report_data == b"\x42" * 64
    assert claims.mrenclave == "11" * 48 and not claims.debug


def test_tsm_attester_detects_a_concurrent_writer(tmp_path, configfs):
    configfs(extra_writes=1)
    with pytest.raises(AttestationError) as caught:
        slow_attester(tmp_path).evidence(b"\x42" * 64)
    assert caught.value.reason == "tsm-race"


def test_tsm_attester_reports_missing_configfs(tmp_path):
    with pytest.raises(AttestationError, match="not available"):
        TsmAttester(tmp_path / "absent").evidence(bytes(64))


def test_snp_report_fields_are_parsed():
    report = bytearray(0x4A0)
    struct.pack_into("<I", report, 4, 5)  # guest svn
    struct.pack_into("<Q", report, 0x08, 1 << 19)  # policy: debug allowed
    report[0x50:0x90] = b"\x07" * 64
    report[0x90:0xC0] = b"\x22" * 48
    evidence = Evidence(
        "tsm", {"provider": "sev_guest", "outblob": base64.b64encode(bytes(report)).decode()}
    )
    claims = parse_claims(evidence)
    assert (claims.tee, claims.isv_svn, claims.debug) == ("sev-snp", 5, True)
    assert claims.report_data == b"\x07" * 64 and claims.mrenclave == "22" * 48


@pytest.mark.parametrize(
    "payload",
    [
        {"provider": "tdx_guest", "outblob": base64.b64encode(b"short").decode()},
        {"provider": "sev_guest", "outblob": "!!not base64!!"},
        {"provider": "other", "outblob": ""},
    ],
)
def test_malformed_tsm_evidence_is_refused(payload):
    with pytest.raises(AttestationError):
        parse_claims(Evidence("tsm", payload))


def test_tsm_verifier_refuses_until_vendor_chains_are_checked():
    evidence = Evidence(
        "tsm",
        {
            "provider": "tdx_guest",
            "outblob": base64.b64encode(tdx_quote(bytes(64), bytes(48))).decode(),
        },
    )
    with pytest.raises(AttestationError) as caught:
        TsmVerifier().verify(evidence)
    assert caught.value.reason == "unverified-vendor-chain"
