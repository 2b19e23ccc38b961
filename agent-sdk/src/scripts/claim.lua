#!lua
-- Claims abandoned entries by id, telling apart those whose body is gone.
--
-- XCLAIM silently drops a pending id whose entry was deleted or trimmed; a
-- task would vanish unseen. So each id is first looked up: a missing body is
-- acknowledged (it leaves the pending list) and reported.
--
-- KEYS[1] tasks stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms,
-- ARGV[4..] entry ids.
-- Returns { claimed entries (as XCLAIM returns them), vanished ids }.
local tasks, group, consumer, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local claim, vanished = { tasks, group, consumer, idle }, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if #redis.call('XRANGE', tasks, id, id) == 0 then
    if redis.call('XACK', tasks, group, id) == 1 then
      vanished[#vanished + 1] = id
    end
  else
    claim[#claim + 1] = id
  end
end
local claimed = {}
if #claim > 4 then
  -- XCLAIM re-checks the idle time, so an entry renewed or claimed by
  -- someone else since we looked is left alone.
  claimed = redis.call('XCLAIM', unpack(claim))
end
return { claimed, vanished }
