-- peek_inflight(min_score, count) -> {} | {H, {hash, score, ...}, records, points, marks}
-- One page of the inflight set in propagation order: `count` txs scored from `min_score` on (0,
-- or the number after the previous page's last tx times 2^17: stage changes move a score only
-- within its number's 2^17, so a page never skips nor repeats a tx). The Rust side derives each
-- tx's stage and counters from its score, `H`, the points of the confirming blocks and the
-- marks (all a few entries; see src/keys.rs).
local rows = redis.call('ZRANGE', K.inflight, ARGV[2], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[3],
  'WITHSCORES')
if #rows == 0 then return {} end
local hashes = {}
for i = 1, #rows, 2 do hashes[#hashes + 1] = rows[i] end
return {redis.call('HGET', K.meta, 'H') or '0', rows, redis.call('HMGET', K.txs, unpack(hashes)),
  redis.call('ZRANGE', K.points, 0, -1), redis.call('ZRANGE', K.marks, 0, -1, 'WITHSCORES')}
