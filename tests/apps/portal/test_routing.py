"""The Routing Manager's allocation rules, on its state alone."""

import asyncio
import time

import pytest

from securecloud.apps.portal.routing import NoInstance, Report, RoutingManager, RoutingTable


def report(*instances, wrapper="w1", full=False, url=None) -> Report:
    return Report.model_validate(
        {
            "wrapper": wrapper,
            "url": url,
            "full": full,
            "instances": [
                {"id": i, "address": f"127.0.0.1:{1000 + n}", "state": s, "uid": u}
                for n, (i, s, u) in enumerate(instances)
            ],
        }
    )


def test_a_uid_gets_a_ready_instance_and_keeps_it_while_its_session_lives():
    table = RoutingTable("standby", buffer=2)
    table.report(report(("a", "ready", None), ("b", "ready", None)))
    first = table.lookup("c1")
    assert first.state == "allocated" and first.uid == "c1"
    assert table.lookup("c1") is first  # the same instance again, nothing else taken
    other = table.lookup("c2")
    assert other is not first and other.uid == "c2"
    assert table.lookup("c3") is None  # none free: the caller says so
    # the instance reports its LOGIN: Active for c1; then LOGOUT: gone, uid free
    table.report(report(("a", "active", "c1"), ("b", "ready", None)))
    table.report(report((first.id, "active", "c1")))
    assert table.lookup("c1") is first and first.state == "active"
    table.report(report((first.id, "stopped", None)))
    assert first.id not in table.instances
    assert table.lookup("c1") is None  # c2 holds the other one


def test_a_ready_report_does_not_undo_an_allocation_that_it_predates():
    table = RoutingTable("standby")
    table.report(report(("a", "ready", None)))
    table.lookup("c1")
    table.report(report(("a", "ready", None), full=True))  # periodic report, no LOGIN yet
    assert table.instances["a"].state == "allocated"
    assert table.lookup("c2") is None


def test_an_allocation_nobody_logs_into_returns_to_ready():
    table = RoutingTable("standby", claim_timeout=0.05)
    table.report(report(("a", "ready", None)))
    released = []
    table.release_hooks.append(released.append)
    table.lookup("c1")
    time.sleep(0.1)
    table.report(report(full=False))
    assert table.instances["a"].state == "ready" and released == ["c1"]
    assert table.lookup("c2").id == "a"


def test_a_login_that_finds_none_ready_waits_for_the_next_start_and_takes_it():
    async def scenario():
        manager = RoutingManager(RoutingTable("standby", buffer=1), ready_wait=5.0)
        await manager.report(report(("a", "starting", None)))
        waiting = asyncio.create_task(manager.route("c1"))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing Ready yet: the query waits, it is not refused
        started = time.monotonic()
        await manager.report(report(("a", "ready", None)))
        record = await asyncio.wait_for(waiting, 1.0)
        woke_after = time.monotonic() - started
        await manager.http.aclose()
        return record, woke_after

    record, woke_after = asyncio.run(scenario())
    assert record.id == "a" and record.uid == "c1" and record.state == "allocated"
    assert woke_after < 0.5  # woken by the report, not by a poll or the deadline


def test_without_a_wait_or_past_it_a_login_is_refused_with_no_instance():
    async def scenario(wait: float):
        manager = RoutingManager(RoutingTable("standby", buffer=1), ready_wait=wait)
        await manager.report(report(("a", "starting", None)))
        started = time.monotonic()
        try:
            with pytest.raises(NoInstance):
                await manager.route("c1")
        finally:
            await manager.http.aclose()
        return time.monotonic() - started

    assert asyncio.run(scenario(0.0)) < 0.1
    assert 0.2 <= asyncio.run(scenario(0.2)) < 1.0


def test_a_restarted_manager_rebuilds_its_state_from_full_reports():
    table = RoutingTable("standby")
    table.report(report(("a", "active", "c1"), ("b", "ready", None), ("c", "starting", None)))
    fresh = RoutingTable("standby")  # the manager restarted: it knows nothing
    assert fresh.lookup("c1") is None
    fresh.report(report(("a", "active", "c1"), ("b", "ready", None), full=True))
    assert fresh.lookup("c1").id == "a"  # c1 keeps its instance
    assert fresh.lookup("c2").id == "b"
    # a full report without an instance means it is gone
    fresh.report(report(("b", "active", "c2"), full=True))
    assert "a" not in fresh.instances


def test_the_standby_buffer_counts_ready_starting_and_requested_instances():
    table = RoutingTable("standby", buffer=3)
    table.report(report(url="http://w1", full=True))
    assert table.deficit() == 3
    table.requested["w1"] = 2
    assert table.deficit() == 1
    table.report(report(("a", "starting", None), ("b", "ready", None), url="http://w1"))
    assert table.requested["w1"] == 0 and table.deficit() == 1
    assert table.dynamic_wrapper() == ("w1", "http://w1")


def test_routes_reach_the_haproxy_hooks():
    table = RoutingTable("standby")
    routed, released = [], []
    table.route_hooks.append(lambda uid, address: routed.append((uid, address)))
    table.release_hooks.append(released.append)
    table.report(report(("a", "ready", None)))
    table.lookup("c1")
    table.report(report(("a", "stopped", None)))
    assert routed == [("c1", "127.0.0.1:1000")] and released == ["c1"]


def test_idle_instances_beyond_the_buffer_are_stopped():
    table = RoutingTable("on-demand", claim_timeout=0.05)
    table.report(report(("a", "ready", None), ("b", "active", "c1")))
    assert table.idle() == []
    time.sleep(0.1)
    assert [r.id for r in table.idle()] == ["a"] and list(table.instances) == ["b"]
    standby = RoutingTable("standby", buffer=1, claim_timeout=0.05)
    standby.report(report(("a", "ready", None), ("b", "ready", None)))
    time.sleep(0.1)
    assert [r.id for r in standby.idle()] == ["a"] and list(standby.instances) == ["b"]
    trivial = RoutingTable("trivial", claim_timeout=0)
    trivial.report(report(("a", "ready", None)))
    assert trivial.idle() == []


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        RoutingTable("sometimes")
