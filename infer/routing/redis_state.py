"""Router state in Redis, shared by replicas: one Lua script (one round trip) per operation."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from infer.routing.state import (
    COOLDOWN_SECONDS,
    ERROR_HALF_LIFE_SECONDS,
    EWMA_ALPHA,
    MAX_COOLDOWN_SECONDS,
    NodeStats,
    decayed_error,
)

log = logging.getLogger(__name__)

NODE_KEY_TTL_SECONDS = 7 * 24 * 3600  # figures of nodes nobody routes to fade away
WARN_EVERY_SECONDS = 30.0

# Every script: KEYS[1] the replicas set, KEYS[2] a node's hash; ARGV[1] this replica,
# ARGV[2] the node key's TTL. Sets `now` (server time), stamps the replica's heartbeat.
_PRELUDE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
local alpha = {EWMA_ALPHA!r}
local function put_count(count, seq)
  local last = tonumber(redis.call('HGET', KEYS[2], 's:' .. ARGV[1]) or '0')
  if seq <= last then return end  -- a later write of ours got there first
  redis.call('HSET', KEYS[2], 's:' .. ARGV[1], seq)
  if count > 0 then
    redis.call('HSET', KEYS[2], 'r:' .. ARGV[1], count)
  else
    redis.call('HDEL', KEYS[2], 'r:' .. ARGV[1])
  end
end
"""

# ARGV: 3 this replica's in-flight count on the node, 4 its sequence number.
_ACQUIRE = (
    _PRELUDE
    + """
put_count(tonumber(ARGV[3]), tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
)

# ARGV: 3 count, 4 sequence, 5 ok (1/0), 6 ttft ('' = none), 7 tokens per second.
_RELEASE = (
    _PRELUDE
    + f"""
local key = KEYS[2]
put_count(tonumber(ARGV[3]), tonumber(ARGV[4]))
local function ewma(name, value)
  if value == '' then return end
  local new = tonumber(value)
  local old = redis.call('HGET', key, name)
  if old then new = alpha * new + (1 - alpha) * tonumber(old) end
  redis.call('HSET', key, name, tostring(new))
end
ewma('ttft', ARGV[6])
ewma('tps', ARGV[7])
local err = tonumber(redis.call('HGET', key, 'err') or '0')
local err_at = tonumber(redis.call('HGET', key, 'err_at') or '0')
if err > 0 and now > err_at then
  err = err * 0.5 ^ ((now - err_at) / {ERROR_HALF_LIFE_SECONDS!r})
end
err = (1 - alpha) * err
if ARGV[5] == '1' then
  redis.call('HSET', key, 'fails', 0)
else
  err = err + alpha
  local fails = redis.call('HINCRBY', key, 'fails', 1)
  local pause = {COOLDOWN_SECONDS!r} * 2 ^ math.min(fails - 1, 8)
  pause = math.min({MAX_COOLDOWN_SECONDS!r}, pause)
  local cool = tonumber(redis.call('HGET', key, 'cool') or '0')
  if now + pause > cool then redis.call('HSET', key, 'cool', tostring(now + pause)) end
end
redis.call('HSET', key, 'err', tostring(err), 'err_at', tostring(now))
redis.call('EXPIRE', key, ARGV[2])
return 1
"""
)

# ARGV: 3 latency.
_SEED = (
    _PRELUDE
    + """
redis.call('HSETNX', KEYS[2], 'ttft', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
)

# KEYS[2..] nodes; ARGV: 2 replica ttl, 3 forget after. Returns one string, which parses
# far faster in Python than nested arrays: now, then per node "in_flight ttft tps err
# err_at cool fails" ("-" where unset), separated by "|".
_SNAPSHOT = (
    _PRELUDE
    + """
local alive_after = now - tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
local slot = {ttft = 2, tps = 3, err = 4, err_at = 5, cool = 6, fails = 7}
local heard = {}
local out = {tostring(now)}
for i = 2, #KEYS do
  local flat = redis.call('HGETALL', KEYS[i])
  local stats = {0, '-', '-', '-', '-', '-', '-'}
  for j = 1, #flat, 2 do
    local name, value = flat[j], flat[j + 1]
    local kind = string.sub(name, 1, 2)
    if kind == 'r:' or kind == 's:' then
      local replica = string.sub(name, 3)
      local at = heard[replica]
      if at == nil then
        at = tonumber(redis.call('ZSCORE', KEYS[1], replica)) or false
        heard[replica] = at
      end
      if not at then
        redis.call('HDEL', KEYS[i], name)  -- a replica gone for good
      elseif kind == 'r:' and at >= alive_after then
        stats[1] = stats[1] + tonumber(value)
      end
    elseif slot[name] then
      stats[slot[name]] = value
    end
  end
  out[#out + 1] = table.concat(stats, ' ')
end
return table.concat(out, '|')
"""
)


def _number(value: str) -> float | None:
    return None if value == "-" else float(value)


class RedisRouterState:
    """Router state shared through Redis; a Redis failure degrades to no figures, not errors.

    One hash per node, `{prefix}:router:node:{id}`: the EWMAs (`ttft`, `tps`, `err`,
    `err_at`), the cool-down (`cool`, `fails`), and per replica its in-flight count
    (`r:{replica}`) with the sequence number of its last write (`s:{replica}`). A replica
    writes its exact local count, not an increment, so a lost or reordered write is put
    right by the next one. Each call stamps the replica's heartbeat in the sorted set
    `{prefix}:router:replicas`; a snapshot counts only replicas heard from within
    `replica_ttl_seconds` and deletes the fields of those silent for `forget_seconds`.
    So the requests of a replica that died stop counting within a minute, with no sweeper.
    Times are Redis server time.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        owns_client: bool = False,
        replica_ttl_seconds: float = 60.0,
        forget_seconds: float = 3600.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._replica = uuid.uuid4().hex
        self._replicas_key = f"{prefix}:router:replicas"
        self._replica_ttl = replica_ttl_seconds
        self._forget = forget_seconds
        self._in_flight: dict[uuid.UUID, int] = {}
        self._sequence = 0
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._seed = client.register_script(_SEED)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._warned_at = -WARN_EVERY_SECONDS

    def node_key(self, node_id: uuid.UUID) -> str:
        return f"{self._prefix}:router:node:{node_id}"

    def _warn(self, action: str, exc: RedisError) -> None:
        # Routing goes on without shared figures; say so, but not once per request.
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("router state: %s failed, routing without it: %s", action, exc)

    def _count(self, node_id: uuid.UUID, change: int) -> tuple[int, int]:
        """This replica's new in-flight count on the node, and the write's sequence number."""
        count = max(0, self._in_flight.get(node_id, 0) + change)
        if count:
            self._in_flight[node_id] = count
        else:
            self._in_flight.pop(node_id, None)
        self._sequence += 1
        return count, self._sequence

    async def snapshot(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, NodeStats]:
        ids = list(node_ids)
        if not ids:
            return {}
        keys = [self._replicas_key, *(self.node_key(node_id) for node_id in ids)]
        try:
            reply = await self._snapshot(
                keys=keys, args=[self._replica, self._replica_ttl, self._forget]
            )
        except RedisError as exc:
            self._warn("snapshot", exc)
            return {node_id: NodeStats() for node_id in ids}
        parts = (reply.decode() if isinstance(reply, bytes) else str(reply)).split("|")
        now = float(parts[0])
        result: dict[uuid.UUID, NodeStats] = {}
        for node_id, part in zip(ids, parts[1:], strict=True):
            in_flight, ttft, tps, err, err_at, cool, fails = part.split(" ")
            result[node_id] = NodeStats(
                in_flight=int(float(in_flight)),
                ttft_ms_ewma=_number(ttft),
                tokens_per_second_ewma=_number(tps),
                error_ewma=decayed_error(_number(err) or 0.0, _number(err_at) or 0.0, now),
                cooldown_until=_number(cool) or 0.0,
                consecutive_failures=0 if fails == "-" else int(fails),
            )
        return result

    async def acquire(self, node_id: uuid.UUID) -> None:
        count, sequence = self._count(node_id, +1)
        keys = [self._replicas_key, self.node_key(node_id)]
        try:
            await self._acquire(
                keys=keys, args=[self._replica, NODE_KEY_TTL_SECONDS, count, sequence]
            )
        except RedisError as exc:
            self._warn("acquire", exc)

    async def release(
        self,
        node_id: uuid.UUID,
        *,
        ok: bool,
        ttft_ms: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        count, sequence = self._count(node_id, -1)
        args: list[str | float] = [
            self._replica,
            NODE_KEY_TTL_SECONDS,
            count,
            sequence,
            1 if ok else 0,
            "" if ttft_ms is None else repr(float(ttft_ms)),
            "" if tokens_per_second is None else repr(float(tokens_per_second)),
        ]
        try:
            await self._release(keys=[self._replicas_key, self.node_key(node_id)], args=args)
        except RedisError as exc:
            self._warn("release", exc)

    async def seed(self, node_id: uuid.UUID, latency_ms: float) -> None:
        keys = [self._replicas_key, self.node_key(node_id)]
        try:
            await self._seed(keys=keys, args=[self._replica, NODE_KEY_TTL_SECONDS, latency_ms])
        except RedisError as exc:
            self._warn("seed", exc)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
