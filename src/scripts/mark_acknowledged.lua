-- mark_acknowledged(hash...) -> number of txs that moved
-- Propagated txs (stage bits 0 in their P:inflight score) become Acknowledged (bits 1); anything
-- else is left alone. One event entry: `A` the hashes, `m` their misses (one number when they
-- share it, else one per tx, comma-separated), from the marks at or below the batch's numbers.
local S = 131072
local moved, scores, once = {}, {}, {}
local found = redis.call('ZMSCORE', K.inflight, unpack(ARGV, 2))
local top = -1
for i = 2, #ARGV do
  local hash, s = ARGV[i], tonumber(found[i - 1])
  if s and s % S == 0 and not once[hash] then
    once[hash] = true
    moved[#moved + 1] = hash
    scores[#scores + 1] = s
    if s > top then top = s end
  end
end
local k = #moved
if k == 0 then return 0 end
local H = meta_number('H', redis.call('HGET', K.meta, 'H'))
-- Newest first: the first mark at or below a tx's number is its height.
local marks = redis.call('ZRANGE', K.marks, int(top / S), '-inf', 'BYSCORE', 'REV', 'WITHSCORES')
-- As numbers once, not once per tx; indexed, not appended: a mark that is not a number
-- leaves a hole (found below as no mark), never shifts the others.
local mh, mn, nm = {}, {}, #marks / 2
for m = 1, nm do
  mh[m] = tonumber(marks[2 * m - 1])
  mn[m] = tonumber(marks[2 * m])
end
local misses, add = {}, {}
for i = 1, k do
  local n, hi = scores[i] / S, nil
  for j = 1, nm do
    if mn[j] <= n then hi = mh[j]; break end
  end
  if not hi then corrupt(K.marks, 'no mark at or below event ' .. n .. ' (tx ' .. hex(moved[i]) .. ')') end
  misses[i] = H - hi
  add[2 * i - 1] = int(scores[i] + 1)
  add[2 * i] = moved[i]
end

local first = redis.call('HINCRBY', K.meta, 'ev', int(k)) - k + 1
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], int(first) .. '-0', 'A', table.concat(moved),
  'm', compact(misses))
redis.call('HINCRBY', K.meta, 'ack', int(k))
redis.call('ZADD', K.inflight, 'XX', unpack(add))
return k
