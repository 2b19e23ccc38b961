#!lua
-- The sweeper's verdict on a workflow in the outbox index whose outbox it
-- found nothing in (see `WorkflowStore::forget_outbox`). Checked here, in
-- one step, so a transition that adds an outbox meanwhile keeps its entry.
-- Ages are the Redis server's (`TIME`): no replica's clock takes part. Like
-- `transition.lua`, it touches the global indexes beside the workflow's slot.
--
-- KEYS[1] workflow hash, KEYS[2] outbox index, KEYS[3] every workflow,
-- KEYS[4] active workflows; ARGV[1] workflow id, ARGV[2] orphan age ms.
-- Returns 0: an outbox after all, or an orphan too young to judge; 1: taken
-- out of the outbox index; 2: an orphan taken out of every index.
if redis.call('HEXISTS', KEYS[1], 'outbox') == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  local s = redis.call('HGET', KEYS[1], 'status')
  if s == 'completed' or s == 'failed' or s == 'cancelled' then
    redis.call('ZREM', KEYS[4], ARGV[1])
  end
  return 1
end
local since = redis.call('ZSCORE', KEYS[2], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if since and now - tonumber(since) >= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 2
end
return 0
