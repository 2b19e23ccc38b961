#!lua
-- One bounded reclaim pass: takes over entries abandoned by other
-- consumers, with poison triage, scanning at most a window of the pending
-- list from a cursor (cost O(window), whatever the list's length).
--
-- Abandoned: idle at least ARGV[3] ms, or held by a consumer known dead
-- (its process's connection is gone: no need to wait for its idle time).
-- Triage (ARGV[7] > 0): an entry delivered ARGV[7] times or more is claimed
-- (the caller dead-letters it); one delivered once is claimed; one
-- delivered more than once but fewer (a suspect: in flight when workers
-- died more than once) is claimed one per pass, so a poison message cannot
-- take its neighbours down with it. An entry whose body is gone (trimmed or
-- deleted) is acknowledged and reported instead of silently dropped. The
-- caller says when a suspect of its own still runs: no other is claimed
-- until it is settled.
--
-- With KEYS[2] (the janitor lease hash) the pass runs only for the lease's
-- holder, and claims nothing while the lease says to hold (see janitor.lua)
-- or when the holder has not renewed for ARGV[8] ms (the server's clock
-- jumped: a freeze this very moment).
--
-- KEYS[1] stream, KEYS[2] lease hash (optional).
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] where the
-- window starts ('-' or '(<id>'), ARGV[5] window size, ARGV[6] most entries
-- to claim, ARGV[7] max deliveries (0: claim all), ARGV[8] largest tick
-- gap ms, ARGV[9] 1 if a suspect may be claimed (0: one of ours still
-- runs), ARGV[10..] consumers known dead.
-- Returns { state, claimed entries (as XCLAIM returns them), their ids,
-- their delivery counts after this claim, vanished ids, next window start }
-- with state 1 (ran), 0 (not the leaseholder) or -1 (holding).
local tasks, group, me = KEYS[1], ARGV[1], ARGV[2]
local min_idle, start, window = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local want, maxd, gap = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if KEYS[2] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local h = redis.call('HMGET', KEYS[2], 'holder', 'expires', 'tick', 'hold_until')
  if h[1] ~= me or (tonumber(h[2]) or 0) < now then
    return { 0, {}, {}, {}, {}, start }
  end
  if now < (tonumber(h[4]) or 0) or now - (tonumber(h[3]) or 0) > gap then
    return { -1, {}, {}, {}, {}, start }
  end
end
local dead = {}
for i = 10, #ARGV do dead[ARGV[i]] = true end
local suspect = ARGV[9] ~= '1' 

local p = redis.call('XPENDING', tasks, group, start, '+', window)
local chosen, counts, last = {}, {}, nil
for _, e in ipairs(p) do
  if #chosen >= want then break end
  last = e[1]
  local owner, idle, n = e[2], e[3], e[4]
  if owner ~= me and (idle >= min_idle or dead[owner]) then
    local take = maxd == 0 or n >= maxd or n <= 1
    if not take and not suspect then
      suspect, take = true, true
    end
    if take then
      chosen[#chosen + 1] = e[1]
      counts[#counts + 1] = n + 1
    end
  end
end
local nxt = '-'
if last and (#chosen >= want or #p >= window) then nxt = '(' .. last end

-- XCLAIM (Redis 7.0+) skips an id whose entry is gone and drops it from
-- the pending list: whatever it did not return has vanished. It is
-- acknowledged too, for servers that leave it pending.
local ids, cnt, vanished, claimed = {}, {}, {}, {}
if #chosen > 0 then
  claimed = redis.call('XCLAIM', tasks, group, me, 0, unpack(chosen))
  local got = {}
  for _, e in ipairs(claimed) do got[e[1]] = true end
  for i, id in ipairs(chosen) do
    if got[id] then
      ids[#ids + 1] = id
      cnt[#cnt + 1] = counts[i]
    else
      redis.call('XACK', tasks, group, id)
      vanished[#vanished + 1] = id
    end
  end
end
return { 1, claimed, ids, cnt, vanished, nxt }
