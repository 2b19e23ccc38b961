#!lua
-- Takes a deleted workflow out of the ended index and its bytes out of the
-- bytes hash and their total. Idempotent: a second call finds nothing.
--
-- KEYS[1] `N:wfs:{ended}`, KEYS[2] `N:wfs:{ended}:bytes` (one slot).
-- ARGV[1] workflow id. Returns the bytes it accounted for (0 if none).
redis.call('ZREM', KEYS[1], ARGV[1])
local b = redis.call('HGET', KEYS[2], ARGV[1])
if not b then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[2], ':total', -tonumber(b))
return tonumber(b)
