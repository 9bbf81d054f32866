-- peek_pending(after, count, more) -> {hashes, records, last score | false}
-- One page of the pending queue in queue order, nothing removed: the `count` txs scored above
-- `after` ('-inf', or '(<score>' to go on after the last tx of the previous page). Records are
-- returned as stored (`<era>|<body>`) and decoded in Rust: no body is copied inside Lua twice.
-- With `more` = 1 (the caller wants the next page) and a full page, the last tx's score too.
local hashes = redis.call('ZRANGE', K.pending, ARGV[2], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[3])
if #hashes == 0 then return {hashes, {}, false} end
local last = false
if ARGV[4] == '1' and #hashes == tonumber(ARGV[3]) then
  last = redis.call('ZSCORE', K.pending, hashes[#hashes])
end
return {hashes, redis.call('HMGET', K.txs, unpack(hashes)), last}
