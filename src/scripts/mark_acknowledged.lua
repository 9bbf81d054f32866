-- mark_acknowledged(hash...) -> number of txs that moved
-- Propagated txs become Acknowledged; anything else is left alone.
check_types('txs')
local moved = 0
for i = 1, #ARGV do
  local t = load(ARGV[i])
  if t and t.st == 'R' then
    t.st = 'A'
    redis.call('HSET', K.txs, ARGV[i], encode(t))
    moved = moved + 1
  end
end
return moved
