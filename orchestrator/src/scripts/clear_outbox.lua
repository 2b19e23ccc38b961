#!lua
-- Empties a workflow's outbox once its commands are carried out, unless a
-- later transition came in meanwhile: that one appended to the outbox, and
-- its orchestrator carries out (and clears) everything.
--
-- KEYS[1] workflow hash; ARGV[1] the version whose outbox was carried out.
-- Returns 1 when cleared, 0 when the version moved on.
if redis.call('HGET', KEYS[1], 'version') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'outbox', 'outbox_at_ms')
  return 1
end
return 0
