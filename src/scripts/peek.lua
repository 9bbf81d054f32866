-- peek(set, stop) -> {tx...} from the pending queue (`set` = 'pending', in queue order) or the
-- inflight set ('inflight', in the order they were propagated); nothing is removed. `stop` is
-- the last index to return (limit - 1), as a string so that huge limits stay exact.
local set = ({pending = K.pending, inflight = K.inflight})[A[1]]
if not set then return redis.error_reply('ERR peek: unknown set ' .. tostring(A[1])) end
local H = height()
local out = {}
for _, hash in ipairs(redis.call('ZRANGE', set, 0, A[2])) do
  local t = load(hash)
  if not t then corrupt(set .. ' ' .. hash, 'member has no state record') end
  out[#out + 1] = tx_reply(hash, t, H)
end
return out
