#!lua
-- Adds one dead letter and indexes it by its task id, in one step (an
-- import; the worker's own dead letters are added by commit.lua).
--
-- KEYS[1] dlq stream, KEYS[2] dlq-index hash; ARGV the entry's fields,
-- name and value back to back. Returns the new entry id.
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV))
for i = 1, #ARGV - 1, 2 do
  if ARGV[i] == 'task_id' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], id)
    break
  end
end
return id
