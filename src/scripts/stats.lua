-- stats() -> {pending, inflight, {H, acknowledged, confirmed, lseq, lfirst}, holder|false, pttl,
--   epoch|false, tip|false, INFO memory}
-- Counts are set sizes and P:meta counters (O(1) each).
return {
  redis.call('ZCARD', K.pending), redis.call('ZCARD', K.inflight),
  redis.call('HMGET', K.meta, 'H', 'ack', 'nconf', 'lseq', 'lfirst'),
  redis.call('GET', K.lock), redis.call('PTTL', K.lock), redis.call('GET', K.epoch),
  redis.call('ZRANGE', K.chain, -1, -1)[1] or false,
  -- The eviction policy and memory figures, read live (the Rust side picks the fields).
  redis.call('INFO', 'memory'),
}
