"""The Lua script of the Redis router state's sync (`redis_state.py`): one call per sync.

It applies a replica's queued outcomes to the shared figures with the math of
`MemoryRouterState` (the constants come from `state.py`), stamps the replica's
heartbeat, stores its in-flight counts, and returns the fresh figures.
"""

from __future__ import annotations

from infer.routing.state import (
    COOLDOWN_SECONDS,
    ERROR_HALF_LIFE_SECONDS,
    EWMA_ALPHA,
    MAX_COOLDOWN_SECONDS,
    STALE_SECONDS,
)

# KEYS[1] the replicas (sorted set: replica -> last heard, server time), KEYS[2] the
# acknowledgements (hash: per replica its last call `c:` and last event `e:` applied),
# KEYS[3..] the hashes of the nodes this replica knows.
# ARGV[1] replica, [2] node key TTL, [3] replica TTL, [4] forget replicas after,
# [5] call sequence, [6] counts "i n ..." (i = 1-based node), [7] first event's sequence,
# [8] events "i kind a b ..." (kind 1 ok, 0 failure: a ttft, b tokens/s; "-" for none),
# [9] "1" if the replica is leaving.
# Returns one string, which parses far faster in Python than nested arrays: server time,
# then per node "others ttft tps err err_at cool fails" ("-" where unset), "|" between.
SYNC = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local me, acks, alpha = ARGV[1], KEYS[2], {EWMA_ALPHA!r}
redis.call('ZADD', KEYS[1], now, me)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 100)
for _, replica in ipairs(gone) do
  redis.call('ZREM', KEYS[1], replica)
  redis.call('HDEL', acks, 'c:' .. replica, 'e:' .. replica)
end
local touched = {{}}

-- Counts are absolute; a call overtaken by a later one of ours writes none.
local call = tonumber(ARGV[5])
if call > tonumber(redis.call('HGET', acks, 'c:' .. me) or '0') then
  redis.call('HSET', acks, 'c:' .. me, call)
  local field = 'r:' .. me
  for i, n in string.gmatch(ARGV[6], '(%d+) (%d+)') do
    local k = tonumber(i) + 2
    if tonumber(n) > 0 then
      redis.call('HSET', KEYS[k], field, n)
    else
      redis.call('HDEL', KEYS[k], field)
    end
    touched[k] = true
  end
end

-- Events are numbered; one already applied (a retried call) is skipped.
local function ewma(key, name, value, stale)
  if stale then redis.call('HDEL', key, name) end
  if value == '-' then return end
  local new = tonumber(value)
  local old = redis.call('HGET', key, name)
  if old then new = alpha * new + (1 - alpha) * tonumber(old) end
  redis.call('HSET', key, name, tostring(new))
end
local function outcome(key, ok, ttft, tps)
  local err = tonumber(redis.call('HGET', key, 'err') or '0')
  local err_at = tonumber(redis.call('HGET', key, 'err_at') or '0')
  local stale = now - err_at > {STALE_SECONDS!r}  -- figures too old: start afresh
  ewma(key, 'ttft', ttft, stale)
  ewma(key, 'tps', tps, stale)
  if err > 0 and now > err_at then
    err = err * 0.5 ^ ((now - err_at) / {ERROR_HALF_LIFE_SECONDS!r})
  end
  err = (1 - alpha) * err
  if ok then
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
end
local last = tonumber(redis.call('HGET', acks, 'e:' .. me) or '0')
local seq = tonumber(ARGV[7]) - 1
for i, kind, a, b in string.gmatch(ARGV[8], '(%d+) (%S+) (%S+) (%S+)') do
  seq = seq + 1
  if seq > last then
    local k = tonumber(i) + 2
    outcome(KEYS[k], kind == '1', a, b)
    touched[k] = true
  end
end
if seq > last then redis.call('HSET', acks, 'e:' .. me, seq) end

if ARGV[9] == '1' then  -- our requests stop counting now, not after the replica TTL
  redis.call('ZREM', KEYS[1], me)
  redis.call('HDEL', acks, 'c:' .. me, 'e:' .. me)
  for k = 3, #KEYS do redis.call('HDEL', KEYS[k], 'r:' .. me) end
end
for k in pairs(touched) do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', acks, ARGV[2])

local alive_after = now - tonumber(ARGV[3])
local slot = {{ttft = 2, tps = 3, err = 4, err_at = 5, cool = 6, fails = 7}}
local heard = {{}}
local out = {{tostring(now)}}
for k = 3, #KEYS do
  local flat = redis.call('HGETALL', KEYS[k])
  local stats = {{0, '-', '-', '-', '-', '-', '-'}}
  for j = 1, #flat, 2 do
    local name, value = flat[j], flat[j + 1]
    local kind = string.sub(name, 1, 2)
    if kind == 'r:' or kind == 's:' then  -- s: sequence fields of the one-call-per-op scripts
      local replica = string.sub(name, 3)
      if replica ~= me then
        local at = heard[replica]
        if at == nil then
          at = tonumber(redis.call('ZSCORE', KEYS[1], replica)) or false
          heard[replica] = at
        end
        if not at then
          redis.call('HDEL', KEYS[k], name)  -- a replica gone for good
        elseif kind == 'r:' and at >= alive_after then
          stats[1] = stats[1] + tonumber(value)
        end
      end
    elseif slot[name] then
      stats[slot[name]] = value
    end
  end
  out[#out + 1] = table.concat(stats, ' ')
end
return table.concat(out, '|')
"""
