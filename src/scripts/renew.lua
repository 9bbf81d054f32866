-- renew(node_id, epoch, ttl_ms) -> {1} | {0, holder or ''}
-- Compare-and-extend: only the holder, at the epoch it acquired, extends the lock.
local node_id, epoch, ttl = A[1], A[2], A[3]
check_types('lock', 'epoch')
local holder = redis.call('GET', K.lock)
if holder == node_id and redis.call('GET', K.epoch) == epoch then
  redis.call('PEXPIRE', K.lock, ttl)
  return {1}
end
return {0, holder or ''}
