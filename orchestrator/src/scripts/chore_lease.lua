#!lua
-- Takes or renews a chore's lease: held by ARGV[1] for ARGV[2] ms from now
-- (the Redis server's clock, through PX), unless another holder has it.
--
-- KEYS[1] lease key. Returns 1 when ARGV[1] holds it, 0 otherwise.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
