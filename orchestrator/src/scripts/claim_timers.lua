#!lua
-- Takes due deadlines of one agent type for one orchestrator: returns them and pushes each one's
-- due time `lease` ms ahead, so another replica does not fire it at the same
-- time, and it fires again if this one dies before removing it.
--
-- KEYS[1] deadlines sorted set; ARGV[1] most to take, ARGV[2] lease ms.
-- Returns the members taken.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
local later = now + tonumber(ARGV[2])
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', later, m)
end
return due
