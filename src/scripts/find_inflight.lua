-- find_inflight(hash) -> tx | false
local hash = A[1]
local t = load(hash)
if not t or t.st == 'P' then return false end
return tx_reply(hash, t, height())
