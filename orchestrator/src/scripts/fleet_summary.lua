-- One agent type's fleet at a glance, in one call whatever its size:
-- counts of live, wedged and gone instances, oldest and newest heartbeat, and
-- the age of the oldest waiting task (the backlog head). O(log n) in the
-- number of instances, plus the wedged candidates. Also prunes what has been
-- gone for longer than keep-gone, and progress left by vanished instances
-- (a bounded amount per call).
--
-- KEYS[1] fleet hash, KEYS[2] fleet-seen, KEYS[3] fleet-expires,
-- KEYS[4] fleet-active, KEYS[5] tasks stream, KEYS[6] progress hash.
-- ARGV[1] workers group, ARGV[2] wedged-after ms, ARGV[3] keep-gone ms.
-- Returns {now, total, live, wedged, oldest live heartbeat, newest heartbeat,
-- backlog head ms, {wedged ids}}; -1 where there is none.
local fleet, seen, expires, active, tasks, progress = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local group = ARGV[1]
local wedged_after, keep_gone = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Gone for longer than keep-gone: forgotten (100 per call at most).
local old = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. (now - keep_gone), 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  redis.call('HDEL', fleet, id)
  redis.call('ZREM', seen, id)
  redis.call('ZREM', expires, id)
  redis.call('ZREM', active, id)
end

-- The backlog head: the first entry after the group's last-delivered id.
local head = -1
if redis.call('EXISTS', tasks) == 1 then
  local from = '-'
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', tasks)) do
    local name, last = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == group and last ~= nil then from = '(' .. last end
  end
  local first = redis.call('XRANGE', tasks, from, '+', 'COUNT', 1)
  if first[1] ~= nil then
    head = tonumber(string.match(first[1][1], '^(%d+)'))
  end
end

local total = redis.call('ZCARD', seen)
local live = redis.call('ZCOUNT', expires, '(' .. now, '+inf')

local oldest, newest = -1, -1
local first_live = redis.call('ZRANGE', expires, '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1)
if first_live[1] ~= nil then
  oldest = tonumber(redis.call('ZSCORE', seen, first_live[1]) or -1)
end
local last = redis.call('ZRANGE', seen, -1, -1, 'WITHSCORES')
if last[2] ~= nil then newest = tonumber(last[2]) end

-- Wedged: live, work waiting for it (backlog, or tasks it holds), and no
-- read, commit or progress for wedged-after.
local wedged = {}
local idle = redis.call('ZRANGEBYSCORE', active, '-inf', '(' .. (now - wedged_after), 'LIMIT', 0, 1000)
for _, id in ipairs(idle) do
  local exp = tonumber(redis.call('ZSCORE', expires, id) or 0)
  if exp > now then
    -- With backlog waiting every quiet live instance is wedged; without,
    -- only one that holds tasks (its record's in_flight, found without a
    -- full JSON decode).
    local holds = head >= 0
    if not holds then
      local raw = redis.call('HGET', fleet, id)
      local n = raw and string.match(raw, '"in_flight":(%d+)')
      holds = n ~= nil and tonumber(n) > 0
    end
    if holds then wedged[#wedged + 1] = id end
  end
end

-- Progress of tasks whose instance is no longer live (killed mid-task):
-- 200 fields per call at most.
if redis.call('EXISTS', progress) == 1 then
  local page = redis.call('HSCAN', progress, 0, 'COUNT', 200)
  local kv = page[2]
  for i = 1, #kv, 2 do
    local ok, p = pcall(cjson.decode, kv[i + 1])
    local inst = ok and type(p) == 'table' and p.instance or nil
    local exp = inst and tonumber(redis.call('ZSCORE', expires, inst) or 0) or 0
    if exp <= now then redis.call('HDEL', progress, kv[i]) end
  end
end

return { now, total, live, #wedged, oldest, newest, head, wedged }
