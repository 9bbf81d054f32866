-- receive(hash, record, max_pending) -> 'ok' | 'dup' | 'full'
-- A new tx joins the tail of the pending queue; `record` is `<era>|<body>`, stored as it comes.
-- Duplicates are pending, inflight, or Finalized in the retained log (an odd P:done score); a
-- Dropped tx may come back. The reads come first and cover every key written after the event
-- (P:meta is typed by its own HINCRBY, the first write; a refused XADD leaves only a gap in the
-- event numbers, which readers report).
--
-- Numbers go to Redis as strings: Redis 7.0 turns a Lua number argument into text with
-- printf('%.17g'), and Lua's `..` with printf('%.14g'), each about as costly as a whole SET.
local hash = ARGV[2]
-- Every tx the mempool knows, live or in the retained log, has its record in P:txs, and a tx
-- leaves P:done with its record (see src/keys.rs). So a hash without a record is new, which
-- settles the usual case with one lookup; only a known one asks where it is.
local done
if redis.call('HEXISTS', K.txs, hash) == 1 then
  done = redis.call('ZSCORE', K.done, hash)
  if not done or tonumber(done) % 2 == 1 then return 'dup' end
end
if redis.call('ZCARD', K.pending) >= tonumber(ARGV[4]) then return 'full' end
-- A Dropped tx coming back leaves P:done (so that trimming the log does not take the record of
-- a live tx); its line in the log keeps the record it had, so a new record moves the old one to
-- P:replaced (which ZCARD types before the first write). Rare: a tx comes back after a drop,
-- and seldom changed.
local old
if done then
  old = redis.call('HGET', K.txs, hash)
  if old == ARGV[3] then old = nil end
  if old then redis.call('ZCARD', K.replaced) end
end

local n = string.format('%d', redis.call('HINCRBY', K.meta, 'ev', '1'))
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], n .. '-0', 'P', hash)
redis.call('HSET', K.txs, hash, ARGV[3])
redis.call('ZADD', K.pending, n, hash)
if done then
  redis.call('ZREM', K.done, hash)
  if old then
    local seq = math.floor(tonumber(done) / 2)
    redis.call('ZADD', K.replaced, string.format('%d', seq), string.format('%016d', seq) .. old)
  end
end
return 'ok'
