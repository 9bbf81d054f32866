-- mark_inflight(hash...) -> number of txs that moved
-- Pending txs become Propagated; anything else is left alone, so an inflight or finalized tx is
-- never overwritten. Duplicates in the batch move once.
check_types('txs', 'pending', 'inflight', 'unconfirmed', 'height')
local H = height()
local moved = 0
for i = 1, #A do
  local hash = A[i]
  local t = load(hash)
  if t and t.st == 'P' then
    t.st, t.hi = 'R', H
    local n = emit_tx(hash, 'R', 0, 0, '')
    redis.call('HSET', K.txs, hash, encode(t))
    redis.call('ZREM', K.pending, hash)
    redis.call('ZADD', K.inflight, n, hash)
    redis.call('ZADD', K.unconfirmed, H, hash)
    moved = moved + 1
  end
end
return moved
