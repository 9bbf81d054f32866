-- dump_finalized(first_id, count) -> raw XRANGE entries of the finalized log.
return redis.call('XRANGE', K.log, A[1], '+', 'COUNT', A[2])
