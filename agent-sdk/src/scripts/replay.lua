#!lua
-- Moves one dead letter back to its task stream, atomically: the entry is
-- either still dead or replayed, never both, and two concurrent replays of
-- the same id add it once (the second finds nothing and returns nil).
--
-- The new entry is the original one rebuilt from the `raw.*` fields, with
-- `attempt` reset to 1.
--
-- The dlq-index entry of its task goes with it when it points at this
-- dead letter (an older dead letter of the same task leaves a newer one's
-- entry alone).
--
-- KEYS[1] dlq stream, KEYS[2] tasks stream, KEYS[3] dlq-index hash;
-- ARGV[1] dead letter entry id.
-- Returns the new task entry id, or nil when there is no such dead letter.
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local fields = e[1][2]
local out = {}
for i = 1, #fields, 2 do
  local k = fields[i]
  if string.sub(k, 1, 4) == 'raw.' and k ~= 'raw.attempt' then
    out[#out + 1] = string.sub(k, 5)
    out[#out + 1] = fields[i + 1]
  end
end
if #out == 0 then
  return redis.error_reply('ERR dead letter ' .. ARGV[1] .. ' has no raw fields to replay')
end
out[#out + 1] = 'attempt'
out[#out + 1] = '1'
local id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
for i = 1, #fields - 1, 2 do
  if fields[i] == 'task_id' then
    if redis.call('HGET', KEYS[3], fields[i + 1]) == ARGV[1] then
      redis.call('HDEL', KEYS[3], fields[i + 1])
    end
    break
  end
end
return id
