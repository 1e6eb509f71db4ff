"""The Lua scripts fleet state runs in Redis: each is one atomic round trip, on Redis's clock.

Times are whole milliseconds of Redis's own TIME, so replicas' clocks never need to agree.
A lease is a sorted-set member (its id) scored with its expiry; whoever looks first removes
the expired ones, so a replica that died gives its leases back once they run out.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# A key's admission, as proxy.billing.limits.Limits.admit does it in one process, with what
# else the request needs from Redis in the same round trip: the releases this replica made
# since its last call (sent first, so they count as free), and a slot of the request's first
# host once admitted.
# KEYS: window (list of "first last requests images" entries), totals (hash), live (leases),
#       the host's slot leases, then one lease set per release
# ARGV: rpm, ipm, concurrency (-1: none), images, lease id ("" without a concurrency),
#       lease ms, window ms, merge ms, the host's cap (-1: no slot wanted), the slot's lease
#       id, then the released lease ids (one per release key)
# Returns {refused (0 admitted, 1 requests, 2 images, 3 concurrency), requests used,
#          images used, ms until the window next shrinks, leases live, 1 if the slot is held}
# The totals always match the window's entries: a refused request's trim is written too
# (else the entries it dropped stayed counted until the list emptied, and a busy key was
# refused under its rpm).
ADMIT = _NOW + """
for k = 5, #KEYS do redis.call('ZREM', KEYS[k], ARGV[k + 6]) end
local rpm, ipm, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local images, ttl = tonumber(ARGV[4]), tonumber(ARGV[6])
local window, merge = tonumber(ARGV[7]), tonumber(ARGV[8])
local requests = tonumber(redis.call('HGET', KEYS[2], 'requests') or '-1')
local pictures = tonumber(redis.call('HGET', KEYS[2], 'images') or '0')
local trimmed = false
if requests < 0 then  -- no totals (a key seen first, or its hash evicted alone): the entries'
  requests, pictures = 0, 0
  for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local _, _, r, i = string.match(entry, '(%d+) (%d+) (%d+) (%d+)')
    requests, pictures = requests + tonumber(r), pictures + tonumber(i)
    trimmed = true  -- written back below, with its expiry
  end
end
local head = redis.call('LINDEX', KEYS[1], 0)
while head do
  local first, last, r, i = string.match(head, '(%d+) (%d+) (%d+) (%d+)')
  if tonumber(last) > now - window then break end
  redis.call('LPOP', KEYS[1])
  trimmed = true
  requests, pictures = requests - tonumber(r), pictures - tonumber(i)
  head = redis.call('LINDEX', KEYS[1], 0)
end
if not head then
  requests, pictures = 0, 0
  redis.call('DEL', KEYS[2])
elseif trimmed then  -- kept even if this request is refused: the entries are gone
  redis.call('HSET', KEYS[2], 'requests', requests, 'images', pictures)
  redis.call('PEXPIRE', KEYS[2], window + merge)
end
local function reset()
  local entry = redis.call('LINDEX', KEYS[1], 0)
  if not entry then return 0 end
  local _, last = string.match(entry, '(%d+) (%d+)')
  return tonumber(last) + window - now
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local live = redis.call('ZCARD', KEYS[3])
local refused = 0
if rpm >= 0 and requests + 1 > rpm then refused = 1
elseif ipm >= 0 and pictures + images > ipm then refused = 2
elseif most >= 0 and live >= most then refused = 3 end
if refused > 0 then return {refused, requests, pictures, reset(), live, 0} end
local tail = redis.call('LINDEX', KEYS[1], -1)
local first, _, r, i
if tail then first, _, r, i = string.match(tail, '(%d+) (%d+) (%d+) (%d+)') end
if tail and now - tonumber(first) < merge then
  redis.call('LSET', KEYS[1], -1, string.format('%d %d %d %d', tonumber(first), now,
             tonumber(r) + 1, tonumber(i) + images))
else
  redis.call('RPUSH', KEYS[1], string.format('%d %d %d %d', now, now, 1, images))
end
requests, pictures = requests + 1, pictures + images
redis.call('HSET', KEYS[2], 'requests', requests, 'images', pictures)
redis.call('PEXPIRE', KEYS[1], window + merge)
redis.call('PEXPIRE', KEYS[2], window + merge)
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
  live = live + 1
end
local slot, cap = 0, tonumber(ARGV[9])
if cap >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) < cap then
    redis.call('ZADD', KEYS[4], now + ttl, ARGV[10])
    redis.call('PEXPIRE', KEYS[4], ttl * 2)
    slot = 1
  end
end
return {0, requests, pictures, reset(), live, slot}
"""

# A host slot, interactive requests first (proxy/state/shared_slots.py). A batch item's lease
# id starts with "b:"; a batch item takes no slot while an interactive request waits.
# KEYS: the host's leases, the interactive requests waiting for it (their ids, scored by
#       expiry), then one lease set per release this replica carries (as ADMIT does)
# ARGV: the host's cap, lease id, lease ms, the waiter's id ("" for a batch item), waiter ms,
#       then the released lease ids
# Returns {1 if held, slots batch items hold, interactive requests waiting}; an interactive
# request that did not get one is counted as waiting until it tries again or gives up.
ACQUIRE = _NOW + """
for k = 3, #KEYS do redis.call('ZREM', KEYS[k], ARGV[k + 3]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local waiter = ARGV[4]
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) and
   (waiter ~= '' or redis.call('ZCARD', KEYS[2]) == 0) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  if waiter ~= '' then redis.call('ZREM', KEYS[2], waiter) end
  return {1, 0, 0}
end
if waiter == '' then return {0, 0, 0} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), waiter)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) * 2)
local batch = 0
for _, lease in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(lease, 1, 2) == 'b:' then batch = batch + 1 end
end
return {0, batch, redis.call('ZCARD', KEYS[2])}
"""

# Leases live now, per set. KEYS: lease sets. Returns their counts, in order.
COUNT = _NOW + """
local counts = {}
for k = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  counts[k] = redis.call('ZCARD', KEYS[k])
end
return counts
"""

# This replica's live leases, written again with a fresh expiry (after a Redis restart too:
# what still runs is counted again). KEYS: lease sets; ARGV: lease ms, then per set its
# number of leases followed by their ids.
RENEW = _NOW + """
local ttl, at = tonumber(ARGV[1]), 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  for j = at + 1, at + n do redis.call('ZADD', KEYS[k], now + ttl, ARGV[j]) end
  at = at + n + 1
  redis.call('PEXPIRE', KEYS[k], ttl * 2)
end
return #KEYS
"""

# Routes kept out of traffic, for a replica that starts (or listens again after Redis was
# away) and so missed the outcomes published before: a breaker open, or a rest (Retry-After),
# until a time on Redis's clock; the later end wins (proxy/state/shared_health.py).
# KEYS: the open set, the rest set (route ids scored by their end, ms)
# ARGV: per route, three: 'o' (open), 'r' (rest) or 'c' (its breaker closed), its id, ms
#       from now
HOLD = _NOW + """
for k = 1, 2 do redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now) end
for i = 1, #ARGV, 3 do
  local key = KEYS[ARGV[i] == 'r' and 2 or 1]
  local ends = now + tonumber(ARGV[i + 2])
  if ARGV[i] == 'c' then
    redis.call('ZREM', key, ARGV[i + 1])
  elseif ends > tonumber(redis.call('ZSCORE', key, ARGV[i + 1]) or '0') then
    redis.call('ZADD', key, ends, ARGV[i + 1])
  end
end
for k = 1, 2 do
  local last = redis.call('ZRANGE', KEYS[k], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[k], tonumber(last[2])) end
end
return 0
"""

# What HOLD kept that has not ended. KEYS: the open set, the rest set. Returns, per set, how
# many routes, then each one's id and ms left.
HELD = _NOW + """
local out = {}
for k = 1, 2 do
  local found = redis.call('ZRANGEBYSCORE', KEYS[k], '(' .. now, '+inf', 'WITHSCORES')
  out[#out + 1] = #found / 2
  for j = 1, #found, 2 do
    out[#out + 1] = found[j]
    out[#out + 1] = tonumber(found[j + 1]) - now
  end
end
return out
"""

# Whether Redis takes the scripts' writes: a replica that a failover left read-only, or one
# out of memory, answers PING but refuses every admission.
PROBE = """
redis.call('SET', KEYS[1], '1', 'PX', 1000)
return 1
"""
