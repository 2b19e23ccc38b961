#!lua
-- Schedules a task (or, with an idempotency key, enqueues it at most once).
--
-- KEYS[1] tasks stream, KEYS[2] delayed zset, KEYS[3] idempotency key (optional).
-- ARGV[1] task id, ARGV[2] delay ms (0 = now), ARGV[3] idempotency TTL ms,
-- ARGV[4] delayed-set member (the fields as netstrings), ARGV[5..] the fields.
-- Returns { 1, task id } when added, { 0, first task id } for a duplicate.
if KEYS[3] ~= nil then
  local first = redis.call('GET', KEYS[3])
  if first then return { 0, first } end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', tonumber(ARGV[3]))
end
local delay = tonumber(ARGV[2])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + delay, ARGV[4])
else
  local f = {}
  for i = 5, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('XADD', KEYS[1], '*', unpack(f))
end
return { 1, ARGV[1] }
