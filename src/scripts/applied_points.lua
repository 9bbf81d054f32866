-- applied_points(stop) -> the applied chain's entries, newest first, down to index `stop`
-- (limit - 1, as a string so that huge limits stay exact).
return redis.call('ZRANGE', K.chain, 0, A[1], 'REV')
