-- mark_acknowledged(hash...) -> number of txs that moved
-- Propagated txs become Acknowledged; anything else is left alone.
check_types('txs', 'height', 'stages', 'events', 'events_seq')
local H = height()
local moved = 0
for i = 1, #A do
  local t = load(A[i])
  if t and t.st == 'R' then
    t.st = 'A'
    redis.call('HSET', K.txs, A[i], encode(t))
    count_stage('R', 'A')
    local c, m = counters(t, H)
    emit_tx(A[i], 'A', c, m, '')
    moved = moved + 1
  end
end
return moved
