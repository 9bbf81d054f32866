-- rollback_to(node_id, epoch, member) -> {'lost'} | {'unknown'} | {'already'}
--   | {'applied', H, rolled_back, undone}
-- Undoes every applied block after `member` (a chain entry, as confirm.lua takes it; the point
-- itself stays applied), with the effects of undo.lua and no tx list needed. `member` empty is the
-- origin: the whole retained chain is undone. Fenced like confirm. A point that is not on the
-- applied chain changes nothing ('unknown'); nothing after it is 'already'.
local node_id, epoch, member = ARGV[2], ARGV[3], ARGV[4]

if redis.call('GET', K.lock) ~= node_id or redis.call('GET', K.epoch) ~= epoch then
  return {'lost'}
end
expect_types({K.events, 'stream', K.pending, 'zset', K.inflight, 'zset', K.marks, 'zset',
  K.confirmed, 'zset', K.points, 'zset'})
local H = meta_number('H', redis.call('HGET', K.meta, 'H'))

local from
if member == '' then
  local oldest = redis.call('ZRANGE', K.chain, 0, 0, 'WITHSCORES')
  if not oldest[1] then return {'already'} end
  from = tonumber(oldest[2])
else
  local at = redis.call('ZSCORE', K.chain, member)
  if not at then return {'unknown'} end
  from = tonumber(at) + 1
  if from > H then return {'already'} end
end
local rolled_back, undone = undo_from(from, {}, node_id, epoch)
return {'applied', from - 1, rolled_back, undone}
