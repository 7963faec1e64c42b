"""Every service reports its garbage-collector pauses as a Prometheus histogram."""

import gc

from prometheus_client import REGISTRY

from securecloud.infra.web import make_app


def _full_collections() -> float:
    return REGISTRY.get_sample_value("securecloud_gc_pause_seconds_count", {"generation": "2"}) or 0


def test_a_full_collection_is_timed_once_however_many_apps_are_made():
    make_app("one", "1")
    make_app("two", "1")
    before = _full_collections()
    gc.collect()
    assert _full_collections() == before + 1
    total = REGISTRY.get_sample_value("securecloud_gc_pause_seconds_sum", {"generation": "2"})
    assert total > 0
