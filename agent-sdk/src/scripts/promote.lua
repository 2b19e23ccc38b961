#!lua
-- Moves due retries and delayed tasks from the delayed set into the task stream.
--
-- Due means score <= now by the Redis server's clock: producers and workers
-- schedule with the same clock (see schedule.lua and commit.lua), so no two
-- hosts' clocks are ever compared.
--
-- A member is the future entry's fields, each as a netstring-like `len:bytes`
-- pair, back to back. A member that does not parse (someone wrote garbage into
-- the set) goes to the dead-letter stream byte for byte instead of blocking
-- the set.
--
-- KEYS[1] delayed zset, KEYS[2] tasks stream, KEYS[3] dlq stream.
-- ARGV[1] most members to move, ARGV[2] agent type, ARGV[3] worker id.
-- Returns { moved, malformed, ms until the next due member or -1 }.
local delayed, tasks, dlq = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function parse(s)
  local out, pos = {}, 1
  while pos <= #s do
    local colon = string.find(s, ':', pos, true)
    if colon == nil then return nil end
    local n = tonumber(string.sub(s, pos, colon - 1))
    if n == nil or n < 0 or colon + n > #s then return nil end
    out[#out + 1] = string.sub(s, colon + 1, colon + n)
    pos = colon + n + 1
  end
  if #out == 0 or #out % 2 ~= 0 then return nil end
  return out
end

local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved, bad = 0, 0
for _, member in ipairs(due) do
  local f = parse(member)
  if f then
    redis.call('XADD', tasks, '*', unpack(f))
    moved = moved + 1
  else
    redis.call('XADD', dlq, '*', 'agent_type', ARGV[2], 'reason', 'malformed',
      'error', 'unparseable entry in the delayed set', 'attempts', 0,
      'worker', ARGV[3], 'failed_at_ms', now, 'source_id', '', 'raw.member', member)
    bad = bad + 1
  end
  redis.call('ZREM', delayed, member)
end
local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] ~= nil then wait = math.max(0, tonumber(nxt[2]) - now) end
return { moved, bad, wait }
