-- stats() -> {{pending, inflight, acknowledged, confirmed}, log length, holder|false, pttl,
--   epoch|false, tip|false, H, INFO memory}
-- Counts are set sizes (O(1) each); only Acknowledged needs its own counter. (Not the size of
-- P:unconfirmed, which confirm cleans lazily.)
local counts = {
  redis.call('ZCARD', K.pending), redis.call('ZCARD', K.inflight),
  num(K.acked, redis.call('GET', K.acked)), redis.call('ZCARD', K.confirmed),
}
return {
  counts, redis.call('XLEN', K.log), redis.call('GET', K.lock), redis.call('PTTL', K.lock),
  redis.call('GET', K.epoch), redis.call('ZRANGE', K.chain, -1, -1)[1] or false, height(),
  -- The eviction policy and memory figures, read live (the Rust side picks the fields).
  redis.call('INFO', 'memory'),
}
