#!lua
-- Commits a batch of finished tasks in one atomic step.
--
-- Fencing: XACK takes no consumer, so before touching anything for an entry
-- we check that this consumer still owns it in the group's pending list. An
-- entry reclaimed by another worker (we were paused past claim_idle) or
-- already committed (a retry of a call whose reply was lost) is skipped:
-- nothing is published twice.
--
-- Cost matters here (it runs for every task): ownership of the whole batch is
-- read with one consumer-filtered XPENDING over the batch's id range, and the
-- batch is acknowledged and deleted with one XACK and one XDEL.
--
-- KEYS[1] tasks stream, KEYS[2] results stream, KEYS[3] dlq stream,
-- KEYS[4] delayed zset, KEYS[5..] result keys, one per op that publishes, in
-- order, and last (KEYS[#KEYS]) the dlq-index hash (task id -> its newest
-- dead letter's entry id), kept in the same step as the dead letter.
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] result TTL ms (0 = no result key),
-- ARGV[4] results stream cap (0 = none), ARGV[5] lowest entry id of the
-- batch, ARGV[6] highest, ARGV[7] most of our entries that can lie in that
-- range, then the ops back to back:
--   'A' id  RESULT                               success: publish, ack, delete
--   'R' id  delay_ms  member                     retry: schedule, ack, delete
--   'D' id  ndlq f1 v1 ...  0 | 1 RESULT         dead letter (+ result when 1)
-- where RESULT is: status task_id attempt wf stage body (wf, stage '' when
-- absent). A result becomes a results-stream entry and its body is stored at
-- its result key.
-- Returns one integer per op: 1 committed, 0 owned by another consumer,
-- 2 no longer pending; 0 and 2 skip the op.
local tasks, results, dlq, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer = ARGV[1], ARGV[2]
-- The TTL stays a string: a number would be formatted anew on every SET.
local ttl, cap = ARGV[3], tonumber(ARGV[4])
local keep_results = ttl ~= '0'
local now = nil

local mine = {}
for _, p in ipairs(redis.call('XPENDING', tasks, group, ARGV[5], ARGV[6], ARGV[7], consumer)) do
  mine[p[1]] = true
end

-- 1: ours; 0: another consumer's; 2: not pending at all (already committed
-- by an earlier call whose reply was lost, or deleted).
local function owner(id)
  if mine[id] then return 1 end
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

-- Reads a RESULT at ARGV[i]; returns its fields, its key and the next index.
local next_key = 5
local function take_result(i)
  local f = { 'task_id', ARGV[i + 1], 'status', ARGV[i], 'attempt', ARGV[i + 2] }
  if ARGV[i + 3] ~= '' then f[#f + 1] = 'wf'; f[#f + 1] = ARGV[i + 3] end
  if ARGV[i + 4] ~= '' then f[#f + 1] = 'stage'; f[#f + 1] = ARGV[i + 4] end
  f[#f + 1] = 'body'
  f[#f + 1] = ARGV[i + 5]
  local key = KEYS[next_key]
  next_key = next_key + 1
  return f, key, i + 6
end

local function publish(f, key)
  if cap > 0 then
    redis.call('XADD', results, 'MAXLEN', '~', cap, '*', unpack(f))
  else
    redis.call('XADD', results, '*', unpack(f))
  end
  if keep_results then
    redis.call('SET', key, f[#f], 'PX', ttl)
  end
end

local out, done = {}, {}
local i = 8
while i <= #ARGV do
  local op, id = ARGV[i], ARGV[i + 1]
  local o
  if op == 'A' then
    local f, key, nexti = take_result(i + 2)
    i = nexti
    o = owner(id)
    if o == 1 then publish(f, key) end
  elseif op == 'R' then
    local delay, member = tonumber(ARGV[i + 2]), ARGV[i + 3]
    i = i + 4
    o = owner(id)
    if o == 1 then
      if now == nil then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', delayed, now + delay, member)
    end
  elseif op == 'D' then
    local d, nexti = take_fields(i + 2)
    local f, key = nil, nil
    if ARGV[nexti] == '1' then
      f, key, nexti = take_result(nexti + 1)
    else
      nexti = nexti + 1
    end
    i = nexti
    o = owner(id)
    if o == 1 then
      local did = redis.call('XADD', dlq, '*', unpack(d))
      -- The index finds this dead letter by its task id whatever the DLQ's
      -- length (the stage-replay route); an entry too broken to name its
      -- task has no task id and no index entry.
      for j = 1, #d - 1, 2 do
        if d[j] == 'task_id' then
          redis.call('HSET', KEYS[#KEYS], d[j + 1], did)
          break
        end
      end
      if f then publish(f, key) end
    end
  else
    return redis.error_reply('ERR commit: unknown op ' .. tostring(op))
  end
  out[#out + 1] = o
  if o == 1 then done[#done + 1] = id end
end
if #done > 0 then
  redis.call('XACK', tasks, group, unpack(done))
  redis.call('XDEL', tasks, unpack(done))
end
return out
