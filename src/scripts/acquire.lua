-- acquire(node_id, ttl_ms) -> {1, epoch} | {0, pttl_ms, holder}
-- Takes the watcher lock if it is free, or if it still holds this node's id (a node that stepped
-- down locally takes it back under a new epoch, which fences its own older in-flight calls).
--
-- The fence (same value and TTL as the lock, kept by acquire and renew, deleted by release and
-- the operator's reset) outlives a lock deleted by hand: while it names a live watcher, nobody
-- else may take the lock, and that watcher takes it back at its next renewal. So a stray `DEL`
-- never makes two leaders, not even for the moment before the old one would notice.
local node_id, ttl = A[1], A[2]
check_types('lock', 'fence', 'epoch', 'events', 'events_seq')
local holder = redis.call('GET', K.lock)
if holder and holder ~= node_id then
  return {0, redis.call('PTTL', K.lock), holder}
end
local fenced_by = redis.call('GET', K.fence)
if not holder and fenced_by and fenced_by ~= node_id then
  return {0, redis.call('PTTL', K.fence), fenced_by}
end
-- Tells a watcher that lost its lock (expired, or reset) that someone else holds it now, so it
-- steps down at once rather than at its next renewal. First, before any write: a refused
-- PUBLISH (a user without the channel) must not leave a lock nobody leads with.
redis.call('PUBLISH', K.wake, 'acquired ' .. node_id)
redis.call('SET', K.lock, node_id, 'PX', ttl)
redis.call('SET', K.fence, node_id, 'PX', ttl)
local epoch = redis.call('INCR', K.epoch)
emit('k', 'leader', 'node', node_id, 'epoch', epoch)
return {1, epoch}
