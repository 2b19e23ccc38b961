#!lua
-- Registers a definition as its next version, unless it is the same as the
-- latest one (registering is then a no-op: starting an orchestrator twice
-- does not multiply versions of the built-in definitions).
--
-- KEYS[1] the definition's hash; ARGV[1] its canonical JSON (version field 0).
-- Returns {version, 1} when stored as a new version, {latest, 0} when it was
-- already the latest.
local latest = redis.call('HGET', KEYS[1], 'latest')
if latest and redis.call('HGET', KEYS[1], latest) == ARGV[1] then
  return { tonumber(latest), 0 }
end
local v = redis.call('HINCRBY', KEYS[1], 'latest', 1)
redis.call('HSET', KEYS[1], tostring(v), ARGV[1])
return { v, 1 }
