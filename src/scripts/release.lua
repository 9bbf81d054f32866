-- release(node_id, epoch) -> 1 if the lock was ours and is now deleted, else 0
-- Compare-and-delete, then wake the followers so one of them takes over at once.
local node_id, epoch = ARGV[1], ARGV[2]
check_types('lock', 'epoch')
if redis.call('GET', K.lock) == node_id and redis.call('GET', K.epoch) == epoch then
  redis.call('DEL', K.lock)
  redis.call('PUBLISH', K.wake, 'released')
  return 1
end
return 0
