"""Collector pauses are reported per collection until the watcher is stopped."""

import gc

from securecloud.runtime.gcpause import watch_pauses


def test_each_collection_is_observed_once_and_none_after_stop():
    seen = []
    stop = watch_pauses(lambda generation, seconds: seen.append((generation, seconds)))
    gc.collect()
    gc.collect(0)
    stop()
    gc.collect()
    assert [generation for generation, _s in seen] == [2, 0]
    assert all(seconds >= 0 for _g, seconds in seen)
