#!lua
-- Arms and cancels stage deadlines of one agent type's tasks (those not
-- armed by their dispatch or cleared by their result's acknowledgement). Due times come from the Redis server's
-- clock, so orchestrators on hosts whose clocks disagree fire them alike.
-- Arming uses NX: carrying out an old outbox again never pushes a deadline
-- back.
--
-- KEYS[1] deadlines sorted set; ARGV: triples of op, member, delay ms, where op
-- is 'A' (arm: due = now + delay) or 'C' (cancel; delay ignored).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 3 do
  if ARGV[i] == 'A' then
    redis.call('ZADD', KEYS[1], 'NX', now + tonumber(ARGV[i + 2]), ARGV[i + 1])
  else
    redis.call('ZREM', KEYS[1], ARGV[i + 1])
  end
end
return 1
