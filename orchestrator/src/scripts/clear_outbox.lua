#!lua
-- Empties a workflow's outbox once its commands are carried out, unless a
-- later transition came in meanwhile: that one appended to the outbox, and
-- its orchestrator carries out (and clears) everything. The workflow leaves
-- the outbox index (`N:wfs:outbox`, outside the slot like the counts of
-- `transition.lua`) in the same step, so the index never misses an outbox.
--
-- KEYS[1] workflow hash, KEYS[2] outbox index; ARGV[1] the version whose
-- outbox was carried out, ARGV[2] the workflow id.
-- Returns 1 when cleared, 0 when the version moved on.
if redis.call('HGET', KEYS[1], 'version') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'outbox', 'outbox_at_ms')
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
