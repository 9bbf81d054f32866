-- find_inflight(hash) -> false | {H, {hash, score}, {record}, points, marks}
-- The inflight tx with this hash, in the form of a page of peek_inflight.lua.
local hash = ARGV[2]
local score = redis.call('ZSCORE', K.inflight, hash)
if not score then return false end
return {redis.call('HGET', K.meta, 'H') or '0', {hash, score}, {redis.call('HGET', K.txs, hash)},
  redis.call('ZRANGE', K.points, 0, -1), redis.call('ZRANGE', K.marks, 0, -1, 'WITHSCORES')}
