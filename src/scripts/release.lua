-- release(node_id, epoch) -> 1 if the lock was ours and is now deleted, else 0
-- Compare-and-delete, then wake the followers so one of them takes over at once.
local node_id, epoch = A[1], A[2]
check_types('lock', 'fence', 'epoch', 'events', 'meta')
if redis.call('GET', K.lock) == node_id and redis.call('GET', K.epoch) == epoch then
  redis.call('DEL', K.lock, K.fence)
  redis.call('PUBLISH', K.wake, 'released')
  emit('k', 'released', 'node', node_id, 'epoch', epoch)
  return 1
end
return 0
