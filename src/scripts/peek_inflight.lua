-- peek_inflight(count) -> {} | {H, {hash, score, ...}, records, points, marks}
-- A small read of the inflight set (see SCRIPT_READ in src/mempool/txs.rs): its first `count`
-- txs in propagation order, in one round trip. The Rust side derives each tx's stage and
-- counters from its score, `H`, the points of the confirming blocks and the marks (all a few
-- entries; see src/keys.rs). Larger reads are plain commands, as for peek_pending.
local rows = redis.call('ZRANGE', K.inflight, 0, ARGV[2] - 1, 'WITHSCORES')
if #rows == 0 then return {} end
local hashes = {}
for i = 1, #rows, 2 do hashes[#hashes + 1] = rows[i] end
return {redis.call('HGET', K.meta, 'H') or '0', rows, redis.call('HMGET', K.txs, unpack(hashes)),
  redis.call('ZRANGE', K.points, 0, -1), redis.call('ZRANGE', K.marks, 0, -1, 'WITHSCORES')}
