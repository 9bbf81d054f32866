-- take_over(node_id, ttl_ms, gone, live) -> {1, epoch, subscribers} | {0, pttl_ms, holder, subscribers}
-- A follower's second look at a holder whose liveness subscription it saw, then found gone one
-- check interval earlier (src/lease/liveness.rs): takes the lock under a new epoch only if it
-- still holds `gone` (or, the lock deleted by hand, the fence still does) and `gone`'s channel
-- still has no subscriber, all in one step, so a holder that reconnected meanwhile keeps it.
-- A free lock (or one of our own) is taken as acquire.lua takes it. The replies are acquire's:
-- the new epoch and our own subscribers, or who holds the lock and its subscribers.
local node_id, ttl, gone, live = A[1], A[2], A[3], A[4]
check_types('lock', 'fence', 'epoch', 'events', 'meta')
local key = K.lock
local holder = redis.call('GET', key)
if not holder then
  key = K.fence
  holder = redis.call('GET', key)
end
if holder and holder ~= node_id then
  local n = subscribers(live, holder)
  if holder ~= gone or n ~= 0 then
    return {0, redis.call('PTTL', key), holder, n}
  end
end
return {1, take_lock(node_id, ttl), subscribers(live, node_id)}
