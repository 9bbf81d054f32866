-- receive(hash, era, body, max_pending) -> {'ok'} | {'dup'} | {'full'}
-- A new tx joins the tail of the pending queue. Duplicates are pending, inflight, or Finalized in
-- the retained log; a Dropped tx may come back. The reads come first and cover every key written
-- after the event (see the prelude on partial writes).
local hash, era, body, max_pending = A[1], A[2], A[3], tonumber(A[4])
local done = redis.call('HGET', K.done, hash)
if done and string.sub(done, 1, 1) == 'F' then return {'dup'} end
if redis.call('ZCARD', K.pending) >= max_pending then return {'full'} end
if redis.call('HEXISTS', K.txs, hash) == 1 then return {'dup'} end

local n = emit_tx(hash, 'P', 0, 0, '')
redis.call('HSET', K.txs, hash, encode({st = 'P', era = era, body = body}))
redis.call('ZADD', K.pending, n, hash)
return {'ok'}
