-- receive(hash, record, max_pending) -> 'ok' | 'dup' | 'full'
-- A new tx joins the tail of the pending queue; `record` is `<era>|<body>`, stored as it comes.
-- Duplicates are pending, inflight, or Finalized in the retained log (an odd P:done score); a
-- Dropped tx may come back. The reads come first and cover every key written after the event
-- (P:meta is typed by its own HINCRBY, the first write; a refused XADD leaves only a gap in the
-- event numbers, which readers report).
local hash = ARGV[2]
local done = redis.call('ZSCORE', K.done, hash)
if done and tonumber(done) % 2 == 1 then return 'dup' end
if redis.call('ZCARD', K.pending) >= tonumber(ARGV[4]) then return 'full' end
if redis.call('HEXISTS', K.txs, hash) == 1 then return 'dup' end

local n = redis.call('HINCRBY', K.meta, 'ev', 1)
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], n .. '-0', 'P', hash)
redis.call('HSET', K.txs, hash, ARGV[3])
redis.call('ZADD', K.pending, n, hash)
return 'ok'
