#!lua
-- Deletes an ended workflow's state and event log, if it has ended and its
-- last commands have been carried out (its outbox is empty). Atomic with
-- the status check, so a workflow still running, or blocked on a dead
-- letter, is never deleted, and two replicas deleting the same workflow
-- delete it once (the second finds it gone).
--
-- The counts by status move in the same step as the deletion (KEYS[3], the
-- one key outside the workflow's slot, as in transition.lua). The indexes
-- (`N:wfs:all`, `N:wfs:active`, `N:wfs:{ended}`) are cleaned after it by
-- idempotent calls: an entry left by a crash in between points at nothing,
-- is skipped by readers, and is cleaned by the next retention round.
--
-- KEYS[1] workflow hash, KEYS[2] its event log, KEYS[3] counts hash.
-- Returns {outcome, status}: outcome `deleted`, `gone` (no such workflow;
-- an orphaned event log is deleted), `active` (not ended: status says
-- what it is) or `outbox` (ended, commands not yet carried out).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('DEL', KEYS[2])
  return {'gone', ''}
end
if status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then
  return {'active', status}
end
if redis.call('HEXISTS', KEYS[1], 'outbox') == 1 then
  return {'outbox', status}
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HINCRBY', KEYS[3], status, -1)
return {'deleted', status}
