#!lua flags=no-writes
-- Where the tasks of one agent type are, for "why is this stuck?": read
-- only, one call per agent type per question, bounded by ARGV[2].
--
-- Looked for in this order: the dlq-index (a dead letter), the task stream
-- (delivered and pending on a consumer, or waiting behind N undelivered
-- entries), the delayed set (a retry and its due time). A task's entry
-- carries its id in the plain `id` field; a delayed member holds the same
-- fields as netstrings (`2:id<len>:<id>`, see promote.lua).
--
-- KEYS[1] tasks stream, KEYS[2] delayed zset, KEYS[3] dlq-index hash,
-- KEYS[4] dlq stream.
-- ARGV[1] workers' group, ARGV[2] most entries read from the stream and
-- from the delayed set, ARGV[3] most consumers listed, ARGV[4..] task ids.
-- Returns { now ms (server clock), group exists 0|1,
--   { consumer name, idle ms, pending, ... },
--   per task id in order, one of:
--     { 'dead', dlq entry id, error }
--     { 'pending', entry id, consumer, idle ms, deliveries }
--     { 'queued', entry id, undelivered entries ahead of it }
--     { 'delayed', due ms }
--     { 'unseen', entries read, undelivered entries read } }
local tasks, delayed, idx, dlq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, budget, max_consumers = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local found, want, left = {}, {}, 0
for i = 4, #ARGV do
  found[i - 3] = false
  want[ARGV[i]] = i - 3
  left = left + 1
end
local function settle(tid, v)
  found[want[tid]] = v
  want[tid] = nil
  left = left - 1
end

-- A key of another type (written by hand) is read as empty: a diagnosis
-- never fails on what it diagnoses.
local function is(key, t) return redis.call('TYPE', key)['ok'] == t end
local tasks_ok, delayed_ok = is(tasks, 'stream'), is(delayed, 'zset')
local dead_ok = is(idx, 'hash') and is(dlq, 'stream')

-- Dead letters, by the index.
for tid, _ in pairs(want) do
  if not dead_ok then break end
  local d = redis.call('HGET', idx, tid)
  if d then
    local e = redis.call('XRANGE', dlq, d, d)
    if e[1] then
      local err, f = '', e[1][2]
      for j = 1, #f - 1, 2 do
        if f[j] == 'error' then err = f[j + 1] end
      end
      settle(tid, { 'dead', d, err })
    end
  end
end

local function parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function newer(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am > bm or (am == bm and as > bs)
end

-- The group: its last delivered id, its consumers.
local last, has_group, consumers = '0-0', 0, {}
if tasks_ok then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', tasks)) do
    local m = {}
    for j = 1, #g - 1, 2 do m[g[j]] = g[j + 1] end
    if m['name'] == group then
      last, has_group = m['last-delivered-id'], 1
    end
  end
  if has_group == 1 then
    local cs = redis.call('XINFO', 'CONSUMERS', tasks, group)
    for n = 1, math.min(#cs, max_consumers) do
      local m = {}
      for j = 1, #cs[n] - 1, 2 do m[cs[n][j]] = cs[n][j + 1] end
      consumers[#consumers + 1] = m['name']
      consumers[#consumers + 1] = m['idle']
      consumers[#consumers + 1] = m['pending']
    end
  end
end

-- The stream, oldest first: delivered entries (ids up to the group's last
-- delivered one) are pending on a consumer; the others wait, in order.
local read, undelivered, start = 0, 0, '-'
while tasks_ok and left > 0 and read < budget do
  local batch = redis.call('XRANGE', tasks, start, '+', 'COUNT', math.min(1000, budget - read))
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    read = read + 1
    local id, f = e[1], e[2]
    local waiting = newer(id, last)
    local tid = nil
    for j = 1, #f - 1, 2 do
      if f[j] == 'id' then tid = f[j + 1]; break end
    end
    if tid and want[tid] then
      if waiting then
        settle(tid, { 'queued', id, undelivered })
      elseif has_group == 1 then
        local p = redis.call('XPENDING', tasks, group, id, id, 1)
        if p[1] then settle(tid, { 'pending', id, p[1][2], p[1][3], p[1][4] }) end
      end
    end
    if waiting then undelivered = undelivered + 1 end
  end
  start = '(' .. batch[#batch][1]
end

-- The delayed set, soonest first.
local off, zread = 0, 0
while delayed_ok and left > 0 and zread < budget do
  local batch = redis.call('ZRANGE', delayed, off, off + 499, 'WITHSCORES')
  if #batch == 0 then break end
  for j = 1, #batch - 1, 2 do
    zread = zread + 1
    for tid, _ in pairs(want) do
      if string.find(batch[j], '2:id' .. #tid .. ':' .. tid, 1, true) then
        settle(tid, { 'delayed', batch[j + 1] })
        break
      end
    end
  end
  off = off + 500
end

for tid, _ in pairs(want) do
  found[want[tid]] = { 'unseen', read, undelivered }
end
return { now, has_group, consumers, found }
