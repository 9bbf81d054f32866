-- peek_pending(stop) -> {tx...} in queue order; nothing is removed.
-- A[1] is the last index to return (limit - 1), as a string so that huge limits stay exact.
local H = height()
local out = {}
for _, hash in ipairs(redis.call('ZRANGE', K.pending, 0, A[1])) do
  local t = load(hash)
  if not t then corrupt(K.pending .. ' ' .. hash, 'queued tx has no state record') end
  out[#out + 1] = tx_reply(hash, t, H)
end
return out
