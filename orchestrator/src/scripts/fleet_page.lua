-- One page of an agent type's instances (HSCAN of the fleet hash), with what
-- the caller needs to give each a status: its gone time, its last sign of
-- work, and whether the type has backlog waiting.
--
-- Last seen and expiry come from the sorted sets, which every heartbeat
-- moves; a record is rewritten only when it changes (heartbeat.lua).
--
-- KEYS[1] fleet hash, KEYS[2] fleet-expires, KEYS[3] fleet-active,
-- KEYS[4] tasks stream, KEYS[5] fleet-seen.
-- ARGV[1] workers group, ARGV[2] cursor, ARGV[3] count.
-- Returns {now, next cursor, backlog waiting (0/1), id, record, expires,
-- active, seen, id, record, ...}.
local fleet, expires, active, tasks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local waiting = 0
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
  if redis.call('XRANGE', tasks, from, '+', 'COUNT', 1)[1] ~= nil then waiting = 1 end
end

local page = redis.call('HSCAN', fleet, ARGV[2], 'COUNT', tonumber(ARGV[3]))
local out = { now, page[1], waiting }
local kv = page[2]
for i = 1, #kv, 2 do
  out[#out + 1] = kv[i]
  out[#out + 1] = kv[i + 1]
  out[#out + 1] = redis.call('ZSCORE', expires, kv[i]) or '0'
  out[#out + 1] = redis.call('ZSCORE', active, kv[i]) or '0'
  out[#out + 1] = redis.call('ZSCORE', KEYS[5], kv[i]) or '0'
end
return out
