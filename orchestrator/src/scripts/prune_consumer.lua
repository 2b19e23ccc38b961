#!lua
-- Deletes one consumer from a group if, at this instant, it holds nothing
-- (0 pending: deleting a consumer with pending entries would make them
-- unclaimable) and has been idle at least ARGV[3] ms. The check and the
-- deletion are one step, so a consumer that read something meanwhile is
-- kept. A live consumer deleted anyway comes back with its next read.
--
-- KEYS[1] stream. ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms).
-- Returns 1 when deleted, 0 when kept (or absent).
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
