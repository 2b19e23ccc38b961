#!lua
-- The janitor lease of one agent type: the one instance that runs the
-- promoter and the reclaim scan. Acquires, renews or takes over the lease,
-- all by the Redis server's clock.
--
-- The lease is a hash that never expires by itself: `holder`, `expires`
-- (ms), `tick` (the holder's last renewal, ms) and `hold_until` (ms, no
-- claim before then). Keeping `tick` across holders lets a new holder see
-- that the server's clock jumped while nobody renewed (a Redis freeze, or
-- every process stopped): idle times then say nothing about liveness, so
-- claims wait `hold` ms, long enough for live workers to renew their tasks.
--
-- KEYS[1] lease hash, KEYS[2] consumers hash (instance id -> client id).
-- ARGV[1] instance id, ARGV[2] lease ttl ms, ARGV[3] largest tick gap ms,
-- ARGV[4] hold ms (ARGV[2] is also the oldest renewal a holder may have:
-- past it the lease is taken over), ARGV[5] holder known dead (its connection is gone) to
-- take the lease from, or ''.
-- Returns { 1, now, hold_until } when ARGV[1] holds the lease after the
-- call, else { 0, now, holder, the holder's client id or nil }.
local lease, consumers = KEYS[1], KEYS[2]
local me, ttl, gap, hold, dead = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', lease, 'holder', 'expires', 'tick', 'hold_until')
local holder, expires, tick, hold_until = h[1], tonumber(h[2]) or 0, tonumber(h[3]), tonumber(h[4]) or 0
-- Held by another: by a live instance until it lapses, unless its last
-- renewal is older than our own lease period (an instance renewing far
-- more slowly than we expect counts as gone: the fastest settings win).
if holder and holder ~= me and expires > now and holder ~= dead
    and not (tick and now - tick > ttl) then
  return { 0, now, holder, redis.call('HGET', consumers, holder) }
end
if tick and now - tick > gap then
  hold_until = math.max(hold_until, now + hold)
end
redis.call('HSET', lease, 'holder', me, 'expires', now + ttl, 'tick', now, 'hold_until', hold_until)
return { 1, now, hold_until }
