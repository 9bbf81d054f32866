-- acquire(node_id, ttl_ms) -> {1, epoch} | {0, pttl_ms, holder}
-- Takes the watcher lock if it is free, or if it still holds this node's id (a node that stepped
-- down locally takes it back under a new epoch, which fences its own older in-flight calls).
local node_id, ttl = A[1], A[2]
check_types('lock', 'epoch', 'events', 'events_seq')
local holder = redis.call('GET', K.lock)
if holder and holder ~= node_id then
  return {0, redis.call('PTTL', K.lock), holder}
end
redis.call('SET', K.lock, node_id, 'PX', ttl)
local epoch = redis.call('INCR', K.epoch)
-- Tells a watcher whose lock was deleted by hand that someone else holds it now, so it steps
-- down at once rather than at its next renewal.
redis.call('PUBLISH', K.wake, 'acquired ' .. node_id)
emit('k', 'leader', 'node', node_id, 'epoch', epoch)
return {1, epoch}
