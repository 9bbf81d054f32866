-- acquire(node_id, ttl_ms) -> {1, epoch} | {0, pttl_ms, holder}
-- Takes the watcher lock if it is free, or if it still holds this node's id (a node that stepped
-- down locally takes it back under a new epoch, which fences its own older in-flight calls).
local node_id, ttl = ARGV[1], ARGV[2]
check_types('lock', 'epoch')
local holder = redis.call('GET', K.lock)
if holder and holder ~= node_id then
  return {0, redis.call('PTTL', K.lock), holder}
end
redis.call('SET', K.lock, node_id, 'PX', ttl)
return {1, redis.call('INCR', K.epoch)}
