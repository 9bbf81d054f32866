-- renew(node_id, epoch, ttl_ms, live) -> {1, subscribers} renewed | {2, epoch, subscribers} taken back | {0, holder or ''} lost
-- Compare-and-extend: only the holder, at the epoch it acquired, extends the lock (and the fence
-- that outlives a hand-deleted lock, see acquire.lua). `subscribers` counts this node's own
-- liveness connections here (liveness.lua): none means its subscription sits on another server.
local node_id, epoch, ttl, live = A[1], A[2], A[3], A[4]
check_types('lock', 'fence', 'epoch', 'events', 'meta')
local holder = redis.call('GET', K.lock)
local current = redis.call('GET', K.epoch)
if holder == node_id and current == epoch then
  redis.call('PEXPIRE', K.lock, ttl)
  redis.call('SET', K.fence, node_id, 'PX', ttl)
  return {1, subscribers(live, node_id)}
end
-- The lock was deleted by hand while this node held it: the fence still names it and nobody
-- acquired since (the epoch is unchanged), so take it back at once under a new epoch, with no
-- moment where two nodes, or none, lead.
if not holder and current == epoch and redis.call('GET', K.fence) == node_id then
  return {2, take_lock(node_id, ttl), subscribers(live, node_id)}
end
return {0, holder or ''}
