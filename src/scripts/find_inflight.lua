-- find_inflight(hash) -> tx | false
check_types('txs', 'payloads', 'height')
local hash = A[1]
local t = load(hash)
if not t or t.st == 'P' then return false end
return tx_reply(hash, t, load_body(hash), height())
