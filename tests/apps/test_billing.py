"""Billing and the regulator's audit on readings that went through the real
authenticator (in process): honest bills pass, every kind of cheating is found."""

import dataclasses
import datetime as dt
import time

import numpy as np
import pytest

from securecloud.apps.billing import audit as audits
from securecloud.apps.billing import bill as bills
from securecloud.apps.billing import job
from securecloud.apps.billing import tariff as tariffs
from securecloud.apps.billing.evidence import EvidenceError, from_segment, verify_readings
from securecloud.apps.metering import frames, store
from securecloud.apps.metering.authenticator import Authenticator
from securecloud.apps.metering.meter import MeterSession
from securecloud.apps.metering.model import consumer_for, day_readings
from securecloud.apps.metering.registry import MeterRecord, Registry
from securecloud.crypto import (
    MerkleTree,
    generate_signing_key,
    leaf_hash,
    merkle_root,
    suite1,
    verify_inclusion,
)
from securecloud.crypto.agreement import public_bytes
from tests.apps.test_authenticator import DictStorage

START = dt.date(2026, 3, 2)  # a Monday
PERIOD = bills.Period(START + dt.timedelta(days=1), 2)


@pytest.fixture(scope="module")
def world():
    """Meter 7 (low voltage) and meter 9 (13.8 kV) report three days; day 2 of meter 7
    loses four reports; everything is stored by a real authenticator and flushed."""
    auth_key, signing = suite1.generate_meter_key(), generate_signing_key("p256")
    keys = {7: suite1.generate_meter_key(), 9: suite1.generate_meter_key()}
    registry = Registry(
        {
            7: MeterRecord(7, public_bytes(keys[7].public_key()), "lv1"),
            9: MeterRecord(9, public_bytes(keys[9].public_key()), "mv3"),
        }
    )
    storage = DictStorage()
    auth = Authenticator("auth-b", auth_key, signing, registry, storage)
    rng = np.random.default_rng(3)
    for meter, kind in ((7, "lv1"), (9, "mv3")):
        session = MeterSession(meter, keys[meter], auth_key.public_key())
        out = auth.process([session.hello(0)])
        auth.store(out)
        session.accept(frames.decode_downlink(out.replies[0][0]))
        consumer = dataclasses.replace(consumer_for(1, meter), meter_class=kind)
        if kind == "mv3":
            consumer = dataclasses.replace(consumer, kind="large", annual_kwh=300000.0)
        energy, counter = 1000.0, 1
        for day in range(3):
            reports, energy = day_readings(
                consumer, START + dt.timedelta(days=day), counter, energy, rng
            )
            counter += 96
            if meter == 7 and day == 1:
                reports = reports[:40] + reports[44:]  # lost by the meter for good
            for i in range(0, len(reports), 50):
                batch = [session.seal(r.encode())[1] for r in reports[i : i + 50]]
                out = auth.process(batch, now=reports[i].timestamp)
                auth.store(out)
    auth.flush()
    readings, roots = [], {}
    for key, data in storage.objects.items():
        if key.startswith("readings/"):
            found, cited = from_segment(key, data, [signing.public_key()], proofs=True)
            readings += found
            roots.update(cited)
    utility = generate_signing_key("p256")
    return readings, roots, signing.public_key(), utility, storage, registry


def _bill(world, meter=7, tariff=None):
    readings, roots, _regulator, utility = world[:4]
    tariff = tariff or tariffs.builtin("tarifa-branca")
    mine = [r for r in readings if r.meter_id == meter]
    chosen = bills.select(mine, PERIOD)
    supply = "mv3" if meter == 9 else "lv1"
    content = bills.compute_from_readings(
        meter, supply, PERIOD, chosen.readings, chosen.opening, tariff
    )
    signed = bills.sign_bill(content, utility, int(time.time()))
    evidence = audits.make_evidence(meter, chosen.readings, chosen.opening, roots)
    return signed, evidence, tariff


def _audit(world, bill, evidence, tariff):
    _readings, _roots, regulator, utility = world[:4]
    return audits.audit(bill, evidence, tariff, [utility.public_key()], [regulator])


def _resign(world, bill):
    body = {k: v for k, v in bill.items() if k not in ("signature", "issued", "issuer")}
    return bills.sign_bill(body, world[3], bill["issued"])


def test_every_stored_reading_verifies_and_a_forged_one_does_not(world):
    readings, roots, regulator, _utility = world[:4]
    verify_readings(readings, roots, [regulator])
    forged = dataclasses.replace(readings[5], report=readings[6].report)
    with pytest.raises(EvidenceError) as caught:
        verify_readings([forged], roots, [regulator])
    assert caught.value.reason == "bad-proof"
    with pytest.raises(EvidenceError) as caught:
        verify_readings(readings[:1], roots, [generate_signing_key("p256").public_key()])
    assert caught.value.reason == "bad-signature"


def test_honest_bill_lists_missing_intervals_and_passes_the_audit(world):
    bill, evidence, tariff = _bill(world)
    assert bill["readings"]["count"] == 2 * 96 - 4
    assert bill["readings"]["missing_count"] == 4 and bill["readings"]["counter_gaps"] == 4
    assert len(bill["readings"]["missing"]) == 1  # one range of four intervals
    assert bill["opening"] is not None  # the last reading of the day before
    assert bill["energy_wh"] == sum(bill["energy_by_window_wh"].values()) > 0
    assert set(bill["energy_by_window_wh"]) <= {"off-peak", "intermediate", "peak"}
    assert bill["cross_check"]["disagreements"] == 0
    assert bill["charges"]["demand"] is None
    result = _audit(world, bill, evidence, tariff)
    assert result.ok, result.problems


def test_the_bill_root_commits_to_its_readings_a_day_of_hashes_at_a_time(world):
    bill = _bill(world)[0]
    readings, _roots = world[:2]
    chosen = bills.select([r for r in readings if r.meter_id == 7], PERIOD).readings
    hashes = [r.leaf_hash for r in chosen]
    chunks = [b"".join(hashes[i : i + 96]) for i in range(0, len(hashes), 96)]
    assert len(chunks) == 2  # 188 readings: 96 and 92
    root = bytes.fromhex(bill["readings"]["root"])
    assert root == merkle_root([leaf_hash(c) for c in chunks])
    # one reading shown to be in the bill: the other hashes of its chunk and one path
    proof = MerkleTree.from_leaves(chunks).inclusion_proof(1)
    verify_inclusion(leaf_hash(chunks[1]), 1, 2, proof, root)


def test_a_bill_of_another_format_is_refused_by_name(world):
    bill, evidence, tariff = _bill(world)
    older = _resign(world, dict(bill, type="securecloud.billing.bill.v1"))
    assert _checks(_audit(world, older, evidence, tariff)) == {"bill-type"}


def test_large_consumer_pays_a_demand_charge_and_passes(world):
    bill, evidence, tariff = _bill(world, 9, tariffs.builtin("green-a4"))
    assert bill["charges"]["demand"] is not None and bill["max_demand_w"] > 0
    assert bill["readings"]["missing_count"] == 0
    assert _audit(world, bill, evidence, tariff).ok


def test_hash_only_audit_passes_without_values_and_catches_a_dropped_hash(world):
    bill, _evidence, tariff = _bill(world)
    readings, roots, _reg, _util = world[:4]
    chosen = bills.select([r for r in readings if r.meter_id == 7], PERIOD)
    evidence = audits.make_evidence(7, chosen.readings, chosen.opening, roots, hash_only=True)
    assert all("report" not in r for r in evidence["readings"])
    result = _audit(world, bill, evidence, tariff)
    assert result.ok and result.mode == "hash-only", result.problems
    evidence["readings"].pop(3)
    assert not _audit(world, bill, evidence, tariff).ok


def _checks(result):
    return {p["check"] for p in result.problems}


def test_each_kind_of_cheating_is_found(world):
    bill, evidence, tariff = _bill(world)
    cases = {}
    # a reading counted twice: in the evidence twice, and the bill recomputed on that
    doubled = dict(evidence, readings=evidence["readings"][:10] + evidence["readings"][9:])
    cases["duplicated"] = (bill, doubled, {"duplicate"})
    # a reading left out of the evidence (and the bill kept)
    dropped = dict(evidence, readings=evidence["readings"][:10] + evidence["readings"][11:])
    cases["missing"] = (bill, dropped, {"readings-mismatch"})
    # a reading's value altered: its proof no longer leads to the signed root
    altered = [dict(r) for r in evidence["readings"]]
    report = bytearray(bytes.fromhex(altered[20]["report"]))
    report[-1] ^= 1  # the energy register
    altered[20]["report"] = report.hex()
    cases["altered"] = (bill, dict(evidence, readings=altered), {"bad-proof"})
    # two readings swapped
    swapped = list(evidence["readings"])
    swapped[30], swapped[31] = swapped[31], swapped[30]
    cases["reordered"] = (bill, dict(evidence, readings=swapped), {"reordered"})
    # a reading that no signed batch holds
    injected = list(evidence["readings"])
    fake = dict(injected[-1])
    fake_report = bytearray(bytes.fromhex(fake["report"]))
    fake_report[:4] = (int.from_bytes(fake_report[:4], "big") + 1).to_bytes(4, "big")
    fake["report"] = fake_report.hex()
    cases["injected"] = (bill, dict(evidence, readings=[*injected, fake]), {"bad-proof"})
    # a wrong total, signed by the utility all the same
    wrong = _resign(world, dict(bill, total=str(float(bill["total"]) + 1.0)))
    cases["wrong total"] = (wrong, evidence, {"total-mismatch"})
    # a bill whose period energy was moved out of the peak window
    windows = dict(bill["energy_by_window_wh"])
    windows["off-peak"] += windows.pop("peak")
    shifted = _resign(world, dict(bill, energy_by_window_wh=windows))
    cases["shifted"] = (shifted, evidence, {"energy_by_window_wh-mismatch"})
    # a bill altered after signing
    cases["unsigned change"] = (dict(bill, total="0.00"), evidence, {"bill-signature"})
    for name, (b, e, expected) in cases.items():
        result = _audit(world, b, e, tariff)
        assert not result.ok, name
        assert expected <= _checks(result), (name, result.problems)


def test_bill_made_from_a_duplicated_reading_is_refused(world):
    readings, roots, _reg, utility = world[:4]
    tariff = tariffs.builtin("tarifa-branca")
    chosen = bills.select([r for r in readings if r.meter_id == 7], PERIOD)
    padded = chosen.readings[:50] + chosen.readings[49:]  # the utility counts one twice
    content = bills.compute_from_readings(7, "lv1", PERIOD, padded, chosen.opening, tariff)
    bill = bills.sign_bill(content, utility, 0)
    evidence = audits.make_evidence(7, padded, chosen.opening, roots)
    assert "duplicate" in _checks(_audit(world, bill, evidence, tariff))
    honest = audits.make_evidence(7, chosen.readings, chosen.opening, roots)
    assert "readings-mismatch" in _checks(_audit(world, bill, honest, tariff))


def test_tariff_files_are_checked_field_by_field():
    assert tariffs.builtin("flat").window_of(0) == "all"
    branca = tariffs.builtin("tarifa-branca")
    monday_19h_local = int(dt.datetime(2026, 3, 2, 22, 0, tzinfo=dt.UTC).timestamp())
    assert branca.window_of(monday_19h_local) == "peak"
    assert branca.window_of(monday_19h_local + 5 * 86400) == "off-peak"  # Saturday
    carnival = int(dt.datetime(2026, 2, 16, 22, 0, tzinfo=dt.UTC).timestamp())
    assert branca.window_of(carnival) == "off-peak"
    base = {"name": "x", "currency": "BRL"}
    tou = {**base, "kind": "time-of-use", "default_window": "off-peak"}
    peak = {"name": "peak", "from": "18:00", "to": "21:00"}
    bad = [
        ({**base, "kind": "flat", "energy_price": {"all": 0.5}}, "energy_price.all"),
        ({**base, "kind": "odd", "energy_price": {}}, "kind"),
        ({"kind": "flat", "currency": "BRL", "energy_price": {"all": "1"}}, "name"),
        ({**tou, "energy_price": {"off-peak": "1"}, "windows": [peak]}, "energy_price"),
        (
            {
                **tou,
                "energy_price": {"off-peak": "1", "peak": "2", "b": "1"},
                "windows": [peak, {"name": "b", "from": "20:00", "to": "22:00"}],
            },
            "windows",
        ),
        ({**base, "kind": "flat", "energy_price": {"all": "1"}, "colour": 1}, "colour"),
    ]
    for document, field in bad:
        with pytest.raises(tariffs.TariffError, match=field):
            tariffs.parse(document)


def test_the_job_bills_from_the_kvs_and_its_evidence_passes_the_audit(world):
    _readings, _roots, regulator, utility, storage, registry = world
    context = job.BillingContext(
        storage,
        registry,
        {"lv1": tariffs.builtin("tarifa-branca"), "mv3": tariffs.builtin("green-a4")},
        utility,
        [regulator],
    )
    made = job.bill_meters(context, [7, 9], PERIOD, issued=1_770_000_000)
    assert [b["meter"] for b in made] == [7, 9]
    assert made[0] == _bill(world)[0] | {"issued": 1_770_000_000, "signature": made[0]["signature"]}
    # an item of some of a segment's meters bills them as an item of all of them does
    (alone,) = job.bill_meters(context, [9], PERIOD, issued=1_770_000_000)
    assert {**alone, "signature": None} == {**made[1], "signature": None}
    for meter, name in ((7, "tarifa-branca"), (9, "green-a4")):
        for hash_only in (False, True):
            bill, evidence = job.evidence_for(storage, meter, PERIOD, [regulator], hash_only)
            result = audits.audit(
                bill, evidence, tariffs.builtin(name), [utility.public_key()], [regulator]
            )
            assert result.ok, (meter, hash_only, result.problems)
            assert result.readings == bill["readings"]["count"]


class ForkedStorage(DictStorage):
    """Reopened in a forked worker as the copy of the objects the fork made: reads see
    them, writes stay in the worker (the test compares returned bills only)."""

    def reopen(self):
        return self


def _context(world, storage):
    _readings, _roots, regulator, utility, _storage, registry = world
    tariffs_by_class = {"lv1": tariffs.builtin("tarifa-branca"), "mv3": tariffs.builtin("green-a4")}
    return job.BillingContext(storage, registry, tariffs_by_class, utility, [regulator])


def test_worker_processes_make_the_same_bills_and_report_a_bad_segment(world):
    storage = ForkedStorage()
    storage.objects = dict(world[4].objects)
    here = job.bill_meters(_context(world, storage), [9, 7], PERIOD, 1_770_000_000, workers=1)
    forked = job.bill_meters(_context(world, storage), [9, 7], PERIOD, 1_770_000_000, workers=2)
    assert [b["meter"] for b in forked] == [9, 7]
    for a, b in zip(here, forked, strict=True):  # ECDSA signatures are randomised
        assert {**a, "signature": None} == {**b, "signature": None}
    key = next(k for k in sorted(storage.objects) if k.startswith("readings/2026-03-03/"))
    data = bytearray(storage.objects[key])
    data[-20] ^= 1  # one bit of the last record's energy register
    storage.objects[key] = bytes(data)
    with pytest.raises(EvidenceError) as caught:  # raised in a worker, re-raised here
        job.bill_meters(_context(world, storage), [7, 9], PERIOD, 1_770_000_000, workers=2)
    assert caught.value.reason == "bad-proof" and key in str(caught.value)


def test_windows_of_many_intervals_agree_with_one_at_a_time():
    starts = np.arange(1_767_225_600, 1_767_225_600 + 60 * 86400, 900)  # 60 days of 2026
    for name in ("flat", "tarifa-branca", "green-a4"):
        tariff = tariffs.builtin(name)
        names = tariff.window_names
        assert [names[i] for i in tariff.windows_of(starts)] == [
            tariff.window_of(int(t)) for t in starts
        ]


def test_meters_are_cut_into_items_within_a_segment_group():
    assert store.items([5000, 1, 2, 4095, 4096]) == [[1, 2, 4095], [4096, 5000]]
    assert [len(i) for i in store.items(list(range(1, 3001)))] == [1024, 1024, 952]
