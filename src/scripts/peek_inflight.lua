-- peek_inflight(stop) -> {tx...} in the order they were propagated.
-- A[1] is the last index to return (limit - 1), as a string so that huge limits stay exact.
local H = height()
local out = {}
for _, hash in ipairs(redis.call('ZRANGE', K.inflight, 0, A[1])) do
  local t = load(hash)
  if not t then corrupt(K.inflight .. ' ' .. hash, 'inflight tx has no state record') end
  out[#out + 1] = tx_reply(hash, t, H)
end
return out
