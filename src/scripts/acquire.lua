-- acquire(node_id, ttl_ms, live) -> {1, epoch, subscribers} | {0, pttl_ms, holder, subscribers}
-- Takes the watcher lock if it is free, or if it still holds this node's id (a node that stepped
-- down locally takes it back under a new epoch, which fences its own older in-flight calls).
--
-- The fence (same value and TTL as the lock, kept by acquire and renew, deleted by release and
-- the operator's reset) outlives a lock deleted by hand: while it names a live watcher, nobody
-- else may take the lock, and that watcher takes it back at its next renewal. So a stray `DEL`
-- never makes two leaders, not even for the moment before the old one would notice.
--
-- `subscribers` counts the liveness connections (liveness.lua) of the holder, so that one round
-- trip is a follower's look at both the lock and its holder; of this node when it acquires.
local node_id, ttl, live = A[1], A[2], A[3]
check_types('lock', 'fence', 'epoch', 'events', 'meta')
local holder = redis.call('GET', K.lock)
if holder and holder ~= node_id then
  return {0, redis.call('PTTL', K.lock), holder, subscribers(live, holder)}
end
local fenced_by = redis.call('GET', K.fence)
if not holder and fenced_by and fenced_by ~= node_id then
  return {0, redis.call('PTTL', K.fence), fenced_by, subscribers(live, fenced_by)}
end
return {1, take_lock(node_id, ttl), subscribers(live, node_id)}
