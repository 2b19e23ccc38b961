#!lua
-- Deletes dead letters and the dlq-index entries that point at them, in
-- one step: the index never names an entry that a purge took away.
--
-- KEYS[1] dlq stream, KEYS[2] dlq-index hash.
-- ARGV[1] 'ids' then entry ids: those entries;
-- ARGV[1] 'before', ARGV[2] an entry id, ARGV[3] at most how many: the
-- oldest entries with a smaller id (a purge by age, a chunk per call).
-- Returns how many entries were deleted.
local dlq, idx = KEYS[1], KEYS[2]
local entries
if ARGV[1] == 'before' then
  entries = redis.call('XRANGE', dlq, '-', '(' .. ARGV[2], 'COUNT', tonumber(ARGV[3]))
else
  entries = {}
  for i = 2, #ARGV do
    local e = redis.call('XRANGE', dlq, ARGV[i], ARGV[i])
    if e[1] then entries[#entries + 1] = e[1] end
  end
end
local n = 0
for _, e in ipairs(entries) do
  local id, f = e[1], e[2]
  for j = 1, #f - 1, 2 do
    if f[j] == 'task_id' then
      if redis.call('HGET', idx, f[j + 1]) == id then redis.call('HDEL', idx, f[j + 1]) end
      break
    end
  end
  n = n + redis.call('XDEL', dlq, id)
end
return n
