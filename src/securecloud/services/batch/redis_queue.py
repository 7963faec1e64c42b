"""The work queue on Redis: each protocol step is one Lua script, so it is atomic.

Keys for queue NAME: NAME (pending, a list: pushed at the head, leased from
the tail, so first in, first out), NAME:processing (leased items), NAME:lease:ID
(the lease, a key that expires), NAME:retries (hash ID → failures),
NAME:errors (dead letters, with the last error), NAME:done, NAME:total,
NAME:seq (counters). An item is stored as the JSON {"i": ID, "v": payload}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import redis

from securecloud.services.batch.errors import QueueError
from securecloud.services.batch.queue import Item, QueueStats

_LEASE = """
local out = {}
for n = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
  if not item then break end
  local id = cjson.decode(item)['i']
  redis.call('SET', KEYS[3] .. id, ARGV[2], 'PX', ARGV[3])
  out[#out + 1] = item
end
return out
"""
_COMPLETE = """
local done = 0
for _, item in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, item) == 1 then
    local id = cjson.decode(item)['i']
    redis.call('DEL', KEYS[2] .. id)
    redis.call('HDEL', KEYS[4], id)
    done = done + 1
  end
end
if done > 0 then redis.call('INCRBY', KEYS[3], done) end
return done
"""
_RETRY = """
local function retry(item, err)
  local id = cjson.decode(item)['i']
  redis.call('DEL', KEYS[3] .. id)
  local tries = redis.call('HINCRBY', KEYS[4], id, 1)
  if tries > tonumber(ARGV[1]) then
    redis.call('LPUSH', KEYS[5], cjson.encode({item = item, error = err, retries = tries}))
    redis.call('HDEL', KEYS[4], id)
  else
    redis.call('LPUSH', KEYS[1], item)
  end
end
local moved = 0
if ARGV[2] == 'fail' then
  if redis.call('LREM', KEYS[2], 1, ARGV[3]) == 1 then
    retry(ARGV[3], ARGV[4])
    moved = 1
  end
else
  for _, item in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    local id = cjson.decode(item)['i']
    if redis.call('EXISTS', KEYS[3] .. id) == 0 then
      redis.call('LREM', KEYS[2], 1, item)
      retry(item, 'lease expired')
      moved = moved + 1
    end
  end
end
return moved
"""


class RedisQueue:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.url = url
        self.name = parts.fragment
        self._redis = redis.Redis.from_url(urlunsplit(parts._replace(fragment="")))
        self._keys = {
            k: f"{self.name}{s}"
            for k, s in (
                ("pending", ""),
                ("processing", ":processing"),
                ("lease", ":lease:"),
                ("retries", ":retries"),
                ("errors", ":errors"),
                ("done", ":done"),
                ("total", ":total"),
                ("seq", ":seq"),
            )
        }
        self._lease = self._redis.register_script(_LEASE)
        self._complete = self._redis.register_script(_COMPLETE)
        self._retry = self._redis.register_script(_RETRY)

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except redis.RedisError as exc:
            raise QueueError(f"Redis queue {self.name}: {exc}") from exc

    def push(self, payloads: Iterable[str]) -> int:
        items = list(payloads)
        if not items:
            return 0
        k = self._keys
        last = self._call(self._redis.incrby, k["seq"], len(items))
        first = last - len(items) + 1
        pipe = self._redis.pipeline(transaction=True)
        for start in range(0, len(items), 10_000):
            chunk = items[start : start + 10_000]
            encoded = [json.dumps({"i": first + start + n, "v": v}) for n, v in enumerate(chunk)]
            pipe.lpush(k["pending"], *encoded)
        pipe.incrby(k["total"], len(items))
        self._call(pipe.execute)
        return len(items)

    @staticmethod
    def _item(raw: bytes) -> Item:
        doc = json.loads(raw)
        return Item(doc["i"], doc["v"])

    @staticmethod
    def _raw(item: Item) -> str:
        return json.dumps({"i": item.id, "v": item.payload})

    def lease(self, worker: str, count: int = 1, lease_seconds: float = 60.0) -> list[Item]:
        k = self._keys
        raw = self._call(
            self._lease,
            keys=[k["pending"], k["processing"], k["lease"]],
            args=[count, worker, int(lease_seconds * 1000)],
        )
        return [self._item(r) for r in raw]

    def complete(self, items: Iterable[Item]) -> int:
        raws = [self._raw(i) for i in items]
        if not raws:
            return 0
        k = self._keys
        return int(
            self._call(
                self._complete,
                keys=[k["processing"], k["lease"], k["done"], k["retries"]],
                args=raws,
            )
        )

    def _retry_keys(self) -> list[str]:
        k = self._keys
        return [k["pending"], k["processing"], k["lease"], k["retries"], k["errors"]]

    def fail(self, item: Item, error: str, max_retries: int) -> bool:
        moved = self._call(
            self._retry,
            keys=self._retry_keys(),
            args=[max_retries, "fail", self._raw(item), error[:1000]],
        )
        return moved == 1

    def requeue_expired(self, max_retries: int) -> int:
        return int(self._call(self._retry, keys=self._retry_keys(), args=[max_retries, "sweep"]))

    def stats(self) -> QueueStats:
        k = self._keys
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(k["total"]).llen(k["pending"]).llen(k["processing"]).get(k["done"]).llen(
            k["errors"]
        )
        total, pending, processing, done, failed = self._call(pipe.execute)
        return QueueStats(int(total or 0), pending, processing, int(done or 0), failed)

    def errors(self, limit: int = 100) -> list[dict]:
        out = []
        for raw in self._call(self._redis.lrange, self._keys["errors"], 0, limit - 1):
            doc = json.loads(raw)
            item = self._item(doc["item"])
            out.append(
                {
                    "id": item.id,
                    "item": item.payload,
                    "error": doc["error"],
                    "retries": doc["retries"],
                }
            )
        return out

    def delete(self) -> None:
        keys = [v for n, v in self._keys.items() if n != "lease"]
        keys += list(self._redis.scan_iter(f"{self._keys['lease']}*"))
        self._call(self._redis.delete, *keys)

    def close(self) -> None:
        self._redis.close()
