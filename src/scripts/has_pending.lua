-- has_pending() -> size of the pending queue
return redis.call('ZCARD', K.pending)
