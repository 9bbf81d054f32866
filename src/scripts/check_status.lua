-- check_status(hash) -> {stage, confirmations, misses, confirmed_at} | false (unknown)
-- A live tx (pending or inflight) wins over an older entry of the same hash in the log.
local hash = A[1]
local t = load(hash)
if t then
  local c, m = counters(t, height())
  return {t.st, c, m, t.at}
end
local done = redis.call('HGET', K.done, hash)
if not done then return false end
local n = string.match(done, '^[FD](%d+)$')
if not n then corrupt(K.done .. ' ' .. hash, 'bad log pointer ' .. string.format('%q', done)) end
local id = n .. '-0'
local entry = redis.call('XRANGE', K.log, id, id)[1]
if not entry then corrupt(K.done .. ' ' .. hash, 'points at missing log entry ' .. id) end
local f = {}
for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
return {f.st, num(K.log .. ' ' .. id, f.c), num(K.log .. ' ' .. id, f.m), f.at or ''}
