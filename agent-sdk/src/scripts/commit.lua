-- Commits a batch of finished tasks in one atomic step.
--
-- Fencing: XACK takes no consumer, so before touching anything for an entry
-- we check that this consumer still owns it in the group's pending list. An
-- entry reclaimed by another worker (we were paused past claim_idle) or
-- already committed (a retry of a call whose reply was lost) is skipped and
-- reported as 0: nothing is published twice.
--
-- KEYS[1] tasks stream, KEYS[2] results stream, KEYS[3] dlq stream,
-- KEYS[4] delayed zset, KEYS[5..] result keys (referenced by index).
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] result TTL ms (0 = no result key),
-- ARGV[4] results stream cap (0 = none), then the ops back to back:
--   'A' id  key_index nfields f1 v1 ...          success: publish, ack, delete
--   'R' id  delay_ms  member                     retry: schedule, ack, delete
--   'D' id  ndlq f1 v1 ... key_index nfields f1 v1 ...
--                                                dead letter (+ result when key_index > 0)
-- A result's body is its last field value; it is also stored at its result key.
-- Returns one integer per op: 1 committed, 0 owned by another consumer,
-- 2 no longer pending; 0 and 2 skip the op.
local tasks, results, dlq, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer = ARGV[1], ARGV[2]
local ttl, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = nil

-- 1: ours; 0: another consumer's; 2: not pending at all (already
-- committed by an earlier call whose reply was lost, or deleted).
local function owner(id)
  local p = redis.call('XPENDING', tasks, group, id, id, 1)
  if p[1] == nil then return 2 end
  if p[1][2] == consumer then return 1 end
  return 0
end

local function take_fields(i)
  local n = tonumber(ARGV[i])
  local f = {}
  for j = i + 1, i + 2 * n do f[#f + 1] = ARGV[j] end
  return f, i + 1 + 2 * n
end

local function publish(key_index, f)
  if cap > 0 then
    redis.call('XADD', results, 'MAXLEN', '~', cap, '*', unpack(f))
  else
    redis.call('XADD', results, '*', unpack(f))
  end
  if ttl > 0 then
    redis.call('SET', KEYS[key_index], f[#f], 'PX', ttl)
  end
end

local function finish(id)
  redis.call('XACK', tasks, group, id)
  redis.call('XDEL', tasks, id)
end

local out = {}
local i = 5
while i <= #ARGV do
  local op, id = ARGV[i], ARGV[i + 1]
  if op == 'A' then
    local key_index = tonumber(ARGV[i + 2])
    local f, nexti = take_fields(i + 3)
    i = nexti
    local o = owner(id)
    if o == 1 then
      publish(key_index, f)
      finish(id)
      out[#out + 1] = 1
    else
      out[#out + 1] = o
    end
  elseif op == 'R' then
    local delay, member = tonumber(ARGV[i + 2]), ARGV[i + 3]
    i = i + 4
    local o = owner(id)
    if o == 1 then
      if now == nil then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', delayed, now + delay, member)
      finish(id)
      out[#out + 1] = 1
    else
      out[#out + 1] = o
    end
  elseif op == 'D' then
    local d, nexti = take_fields(i + 2)
    local key_index = tonumber(ARGV[nexti])
    local f, after = take_fields(nexti + 1)
    i = after
    local o = owner(id)
    if o == 1 then
      redis.call('XADD', dlq, '*', unpack(d))
      if key_index > 0 then publish(key_index, f) end
      finish(id)
      out[#out + 1] = 1
    else
      out[#out + 1] = o
    end
  else
    return redis.error_reply('ERR commit: unknown op ' .. tostring(op))
  end
end
return out
