#!lua
-- Dispatches a workflow task at most once and arms its stage deadline, in
-- one step: a task on its stream always has a deadline that can fire.
--
-- The task id is the idempotency key: carrying the same dispatch out again
-- (after a crash, by the sweeper, by two replicas) adds nothing. The
-- deadline is armed with NX, so doing it again never pushes it back; its
-- due time comes from the Redis server's clock.
--
-- KEYS[1] tasks stream, KEYS[2] idempotency key, KEYS[3] deadlines set.
-- ARGV[1] task id, ARGV[2] idempotency TTL ms, ARGV[3] deadline ms from now
-- ('0': none), ARGV[4..] the entry's fields.
-- Returns 1 when the task was added, 0 when it had been already.
--
-- The entry is added before the key is set: if Redis refuses the XADD (the
-- key holds another type), the script stops with nothing written, and the
-- orchestrator fails the stage rather than finding the key set and taking
-- the task for dispatched.
local added = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  local f = {}
  for i = 4, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('XADD', KEYS[1], '*', unpack(f))
  redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
  added = 1
end
if ARGV[3] ~= '0' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[3], 'NX', now + tonumber(ARGV[3]), ARGV[1])
end
return added
