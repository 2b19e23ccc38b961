#!lua
-- Keeps this consumer's running tasks claimed, without stealing any back.
--
-- XCLAIM ... 0 id JUSTID by the owner resets the idle time without counting
-- a delivery. A plain XCLAIM would also take an entry another worker has
-- since reclaimed, so ownership is checked first, atomically.
--
-- KEYS[1] tasks stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids.
-- Returns the ids this consumer no longer owns.
local tasks, group, consumer = KEYS[1], ARGV[1], ARGV[2]
-- XCLAIM arguments: the owned ids go between the min-idle time and JUSTID.
local keep, lost = { tasks, group, consumer, 0 }, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', tasks, group, id, id, 1)
  if p[1] ~= nil and p[1][2] == consumer then
    keep[#keep + 1] = id
  else
    lost[#lost + 1] = id
  end
end
if #keep > 4 then
  keep[#keep + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(keep))
end
return lost
