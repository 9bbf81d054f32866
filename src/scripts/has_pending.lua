-- has_pending() -> size of the pending queue
check_types('pending')
return redis.call('ZCARD', K.pending)
