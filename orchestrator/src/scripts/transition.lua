#!lua
-- Stores one workflow transition, if the workflow is still at the version it
-- was read at: its state, its outbox and its event-log entry in one step, so
-- a crash leaves either all of them or none, and two orchestrators that
-- applied events to the same version cannot both win.
--
-- The outbox holds the commands decided but not yet carried out, as JSON
-- lines. New commands are appended: commands an earlier transition left
-- (its orchestrator died before carrying them out) stay until someone
-- carries them out. Carrying a command out twice is harmless: dispatches are
-- idempotent by task id, timers are armed with NX.
--
-- The counts of workflows by status move here too, in the same step as the
-- status, so they never disagree with the states (and every replica reads
-- the same figures). KEYS[3] is the one key outside the workflow's slot: on
-- Redis Cluster the counts would have to be kept per slot (or beside the
-- script), which Cluster support would have to settle.
--
-- The outbox's age is the Redis server's (`TIME`), never the writer's
-- clock: the sweeper of another replica compares it with the same clock.
-- KEYS[4], the index of workflows with an outbox (`N:wfs:outbox`), is kept
-- here for the same reason as the counts, and like them is outside the slot.
--
-- A transition that ends the workflow (completed, failed, cancelled) also
-- records the end for retention: KEYS[5] `N:wfs:{ended}` gets the id scored
-- by the Redis server's clock, and KEYS[6] its bytes (state + event log,
-- measured once here, after this transition's writes) and their running
-- total. Like KEYS[3], they lie outside the workflow's slot.
--
-- KEYS[1] workflow hash, KEYS[2] its event-log stream, KEYS[3] counts hash,
-- KEYS[4] outbox index, KEYS[5] ended index, KEYS[6] ended bytes hash.
-- ARGV[1] expected version ('0': the workflow must not exist yet),
-- ARGV[2] state JSON, ARGV[3] status, ARGV[4] definition name,
-- ARGV[5] now (ms, the Redis server's clock as the engine read it),
-- ARGV[6] commands to append to the outbox ('' for none),
-- ARGV[7] event-log cap, ARGV[8] pub/sub channel, ARGV[9] change message,
-- ARGV[10] the workflow id, ARGV[11..] the event-log entry's fields.
-- Returns 1 when stored, 0 when the version moved on (re-read, re-apply).
local cur = redis.call('HGET', KEYS[1], 'version') or '0'
if cur ~= ARGV[1] then return 0 end
local v = tostring(tonumber(cur) + 1)
local was = redis.call('HGET', KEYS[1], 'status')
if was ~= ARGV[3] then
  if was then redis.call('HINCRBY', KEYS[3], was, -1) end
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
redis.call('HSET', KEYS[1], 'version', v, 'state', ARGV[2], 'status', ARGV[3],
  'definition', ARGV[4], 'updated_at_ms', ARGV[5])
if cur == '0' then redis.call('HSET', KEYS[1], 'created_at_ms', ARGV[5]) end
if ARGV[6] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local old = redis.call('HGET', KEYS[1], 'outbox')
  if old then
    redis.call('HSET', KEYS[1], 'outbox', old .. '\n' .. ARGV[6])
  else
    redis.call('HSET', KEYS[1], 'outbox', ARGV[6], 'outbox_at_ms', now)
  end
  -- NX: the oldest command's age counts.
  redis.call('ZADD', KEYS[4], 'NX', now, ARGV[10])
end
local entry = {}
for i = 11, #ARGV do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'version', v, unpack(entry))
if (ARGV[3] == 'completed' or ARGV[3] == 'failed' or ARGV[3] == 'cancelled')
    and was ~= ARGV[3] and KEYS[6] then
  -- The id is the key's hash tag (`N:wf:{<id>}`; ids hold no braces).
  local id = string.match(KEYS[1], '{([^{}]+)}$')
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[5], 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), id)
  local bytes = (redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', '0') or 0)
    + (redis.call('MEMORY', 'USAGE', KEYS[2], 'SAMPLES', '0') or 0)
  if redis.call('HSETNX', KEYS[6], id, bytes) == 1 then
    redis.call('HINCRBY', KEYS[6], ':total', bytes)
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
