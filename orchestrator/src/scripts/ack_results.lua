#!lua
-- Acknowledges and deletes results the orchestrator has applied, and clears
-- the deadlines of their tasks: a task that has a result cannot time out
-- any more, whether its result moved the workflow or changed nothing.
--
-- KEYS[1] results stream, KEYS[2] deadlines set (same agent type).
-- ARGV[1] group, then pairs of entry id and task id ('' when it has none).
local ids, tasks = {}, {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  if ARGV[i + 1] ~= '' then tasks[#tasks + 1] = ARGV[i + 1] end
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
if #tasks > 0 then redis.call('ZREM', KEYS[2], unpack(tasks)) end
return #ids
