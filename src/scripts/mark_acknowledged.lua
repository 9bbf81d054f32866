-- mark_acknowledged(hash...) -> number of txs that moved
-- Propagated txs become Acknowledged; anything else is left alone.
check_types('txs', 'height', 'acked')
local H = height()
local moved = 0
for i = 1, #A do
  local t = load(A[i])
  if t and t.st == 'R' then
    t.st = 'A'
    local c, m = counters(t, H)
    emit_tx(A[i], 'A', c, m, '')
    redis.call('HSET', K.txs, A[i], encode(t))
    moved = moved + 1
  end
end
-- How many inflight txs are Acknowledged, for stats (the other stages are set sizes).
if moved > 0 then redis.call('INCRBY', K.acked, moved) end
return moved
