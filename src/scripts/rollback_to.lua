-- rollback_to(node_id, epoch, member) -> {'lost'} | {'unknown'} | {'already'}
--   | {'applied', H, rolled_back, undone}
-- Undoes every applied block after `member` (a chain entry, as confirm.lua takes it; the point
-- itself stays applied), with the effects of undo.lua and no tx list needed. `member` empty is the
-- origin: the whole retained chain is undone. Fenced like confirm. A point that is not on the
-- applied chain changes nothing ('unknown'); nothing after it is 'already'.
local node_id, epoch, member = A[1], A[2], A[3]

check_types('lock', 'epoch', 'chain', 'height', 'txs', 'pending', 'inflight', 'unconfirmed',
  'confirmed', 'acked', 'events', 'events_seq')

if redis.call('GET', K.lock) ~= node_id or redis.call('GET', K.epoch) ~= epoch then
  return {'lost'}
end

local from
if member == '' then
  local oldest = redis.call('ZRANGE', K.chain, 0, 0, 'WITHSCORES')
  if not oldest[1] then return {'already'} end
  from = tonumber(oldest[2])
else
  local at = redis.call('ZSCORE', K.chain, member)
  if not at then return {'unknown'} end
  from = tonumber(at) + 1
  if from > height() then return {'already'} end
end
local rolled_back, undone = undo_from(from, {}, node_id, epoch)
return {'applied', height(), rolled_back, undone}
