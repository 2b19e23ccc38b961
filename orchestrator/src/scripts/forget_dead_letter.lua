#!lua
-- Deletes the dead letter of a workflow task that its workflow no longer
-- waits for (the stage timed out or failed, the workflow ended): it would
-- only be replayed for nothing. Found by the dead-letter index when it has
-- the task, else by a bounded walk back from where it must be (a dead
-- letter is added in the same step as its `dead_lettered` result, so it is
-- not newer than that result's entry).
--
-- KEYS[1] dlq stream, KEYS[2] dlq index (task id -> entry id), same type.
-- ARGV[1] task id, ARGV[2] newest entry id it can have ('+': any),
-- ARGV[3] most entries walked, ARGV[4] the task id field's name.
-- Returns the deleted entry's id, or false when none was found.
local function task_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[4] then return fields[i + 1] end
  end
  return nil
end
local function drop(id)
  redis.call('XDEL', KEYS[1], id)
  if redis.call('HGET', KEYS[2], ARGV[1]) == id then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
  return id
end
local known = redis.call('HGET', KEYS[2], ARGV[1])
if known then
  local e = redis.call('XRANGE', KEYS[1], known, known)
  if e[1] and task_of(e[1][2]) == ARGV[1] then return drop(known) end
end
local left = tonumber(ARGV[3])
local hi = ARGV[2]
while left > 0 do
  local n = math.min(left, 200)
  local page = redis.call('XREVRANGE', KEYS[1], hi, '-', 'COUNT', n)
  for _, e in ipairs(page) do
    if task_of(e[2]) == ARGV[1] then return drop(e[1]) end
  end
  if #page < n then return false end
  left = left - #page
  hi = '(' .. page[#page][1]
end
return false
