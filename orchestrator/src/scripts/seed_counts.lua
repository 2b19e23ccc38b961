#!lua
-- Counts every stored workflow by status into the counters hash, once:
-- for workflows stored before the transition script kept the counters.
-- Atomic, so the figures are exact at this instant whatever transitions
-- came before (a transition's increments on a hash not seeded yet are
-- replaced by the count); later transitions move them from there. The
-- `_seeded` field says it was done: every later start returns at once.
--
-- It reads every workflow in one step (about 50 ms per 100,000 on a
-- laptop) and touches keys of many slots: a one-off migration for a single
-- Redis, not a Cluster.
--
-- KEYS[1] counts hash, KEYS[2] index of every workflow (sorted set).
-- ARGV[1] the prefix of workflow hashes (`N:wf:{`), ARGV[2] its suffix (`}`).
-- Returns the number of workflows counted, or -1 when seeded already.
if redis.call('HEXISTS', KEYS[1], '_seeded') == 1 then return -1 end
local counts = {}
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local n = 0
for _, id in ipairs(ids) do
  local s = redis.call('HGET', ARGV[1] .. id .. ARGV[2], 'status')
  if s then
    counts[s] = (counts[s] or 0) + 1
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
local flat = { '_seeded', '1' }
for s, c in pairs(counts) do
  flat[#flat + 1] = s
  flat[#flat + 1] = tostring(c)
end
redis.call('HSET', KEYS[1], unpack(flat))
return n
