"""The lease protocol, identical on Redis (a real server) and on the local SQLite queue."""

import threading
import time
import uuid

import pytest

from securecloud.services.batch.errors import QueueError
from securecloud.services.batch.queue import open_queue


@pytest.fixture(params=["redis", "local"])
def queue(request, tmp_path, redis_url):
    name = f"job-{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}#{name}" if request.param == "redis" else f"sqlite:///{tmp_path}/q.db#{name}"
    q = open_queue(url)
    yield q
    q.delete()
    q.close()


def test_items_are_leased_first_in_first_out_and_completed_once(queue):
    queue.push(["a", "b", "c", "a"])  # equal payloads stay distinct items
    leased = queue.lease("w1", count=3)
    assert [i.payload for i in leased] == ["a", "b", "c"]
    assert queue.stats().processing == 3 and queue.stats().pending == 1
    assert queue.complete(leased[:2]) == 2
    assert queue.complete(leased[:2]) == 0  # a second completion counts nothing
    stats = queue.stats()
    assert (stats.total, stats.done, stats.processing, stats.pending) == (4, 2, 1, 1)


def test_expired_lease_returns_the_item_and_counts_a_retry(queue):
    queue.push(["x"])
    [item] = queue.lease("w1", lease_seconds=0.2)
    assert queue.requeue_expired(max_retries=3) == 0  # still leased
    time.sleep(0.3)
    assert queue.requeue_expired(max_retries=3) == 1
    [again] = queue.lease("w2")
    assert again == item
    assert queue.complete([again]) == 1 and queue.stats().finished


def test_failed_items_go_to_the_dead_letter_list_after_max_retries(queue):
    queue.push(["poison"])
    for attempt in range(3):
        [item] = queue.lease("w")
        assert queue.fail(item, f"boom {attempt}", max_retries=2)
    assert queue.lease("w") == []
    stats = queue.stats()
    assert (stats.failed, stats.pending, stats.processing) == (1, 0, 0) and stats.finished
    [dead] = queue.errors()
    assert dead["item"] == "poison" and dead["error"] == "boom 2" and dead["retries"] == 3


def test_concurrent_workers_never_share_a_lease_and_finish_every_item(queue):
    queue.push([str(n) for n in range(400)])
    seen: list[int] = []
    lock = threading.Lock()

    def worker(name):
        while items := queue.lease(name, count=5):
            with lock:
                seen.extend(i.id for i in items)
            queue.complete(items)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 400
    assert queue.stats().done == 400


def test_bad_queue_urls_are_refused():
    with pytest.raises(QueueError, match="needs the queue name"):
        open_queue("redis://127.0.0.1:6379/0")
    with pytest.raises(QueueError, match="scheme"):
        open_queue("amqp://host/#q")
