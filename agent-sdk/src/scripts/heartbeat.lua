#!lua
-- One instance's heartbeat in its type's fleet keys, and the progress of the
-- tasks it runs: one call per heartbeat, whatever the handlers reported.
--
-- The worker sends ages ("read 120 ms ago", by its own monotonic clock); this
-- script turns them into Redis times, so every age a fleet view shows is by
-- the server's clock and no two hosts' clocks are ever compared.
--
-- An idle fleet's cost is mostly this script, so a beat whose record has not
-- changed (ARGV[2] empty: same status, counts and in-flight as the last one
-- written) only moves the instance's times in the sorted sets, which are
-- where every reader takes last-seen, expiry and last activity from; the
-- record itself (and with it the last read/commit times it shows) is
-- rewritten when it changes, and at least every few beats.
--
-- KEYS[1] fleet hash, KEYS[2] fleet-seen, KEYS[3] fleet-expires,
-- KEYS[4] fleet-active, KEYS[5] progress hash.
-- ARGV[1] instance id, ARGV[2] registry record (JSON; '' = unchanged), ARGV[3] ttl ms,
-- ARGV[4] read age ms, ARGV[5] commit age ms, ARGV[6] progress age ms
-- (-1 = never), ARGV[7] n progress reports, then n x (task id, fraction,
-- message, age ms), then task ids whose progress is to be deleted.
-- Returns the Redis time (ms) written as last seen, or -1 when the record
-- was unchanged but is missing (Redis lost it): send it again.
local fleet, seen, expires, active, progress = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])

local full = ARGV[2] ~= ''
if not full and redis.call('HEXISTS', fleet, id) == 0 then return -1 end
local record = full and cjson.decode(ARGV[2]) or {}
record.last_seen_ms = now
record.expires_at_ms = now + ttl
local newest = nil
local function at(age, field)
  age = tonumber(age)
  if age >= 0 then
    local ms = now - age
    record[field] = ms
    if newest == nil or ms > newest then newest = ms end
  end
end
at(ARGV[4], 'last_read_ms')
at(ARGV[5], 'last_commit_ms')
at(ARGV[6], 'last_progress_ms')

if full then redis.call('HSET', fleet, id, cjson.encode(record)) end
redis.call('ZADD', seen, now, id)
redis.call('ZADD', expires, now + ttl, id)
if newest == nil then
  -- Nothing done yet: count from the first heartbeat, never reset it.
  redis.call('ZADD', active, 'NX', now, id)
else
  redis.call('ZADD', active, newest, id)
end

-- Instances silent for a week are forgotten here too (10 per full beat), so
-- the fleet stays bounded even when no orchestrator ever reads it (it
-- prunes after its --keep-gone, at most a week, on every read).
if full then
  local week = 7 * 24 * 3600 * 1000
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. (now - week), 'LIMIT', 0, 10)) do
    redis.call('HDEL', fleet, old)
    redis.call('ZREM', seen, old)
    redis.call('ZREM', expires, old)
    redis.call('ZREM', active, old)
  end
end

local n = tonumber(ARGV[7])
local i = 8
for _ = 1, n do
  local p = {
    fraction = tonumber(ARGV[i + 1]),
    message = ARGV[i + 2],
    at_ms = now - tonumber(ARGV[i + 3]),
    instance = id,
  }
  redis.call('HSET', progress, ARGV[i], cjson.encode(p))
  i = i + 4
end
for j = i, #ARGV do
  redis.call('HDEL', progress, ARGV[j])
end
return now
