-- mark_acknowledged(hash...) -> number of txs that moved
-- Propagated txs (stage bits 0 in their P:inflight score) become Acknowledged (bits 1); anything
-- else is left alone. The batch holds each hash once (the Rust side sees to it). One event
-- entry: `A` the hashes, `m` their misses (one number when they share it, else one per tx,
-- comma-separated), from the marks at or below the batch's numbers.
local S = 131072
-- `add` holds each moving tx's score and hash, the score made its new one below.
local moved, add, k = {}, {}, 0
local found = redis.call('ZMSCORE', K.inflight, unpack(ARGV, 2))
local top = -1
for i = 2, #ARGV do
  local s = tonumber(found[i - 1])
  if s and s % S == 0 then
    k = k + 1
    moved[k] = ARGV[i]
    add[2 * k - 1] = s
    add[2 * k] = ARGV[i]
    if s > top then top = s end
  end
end
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
local misses = {}
for i = 1, k do
  local s = add[2 * i - 1]
  local n, hi = s / S, nil
  for j = 1, nm do
    if mn[j] <= n then hi = mh[j]; break end
  end
  if not hi then corrupt(K.marks, 'no mark at or below event ' .. n .. ' (tx ' .. hex(moved[i]) .. ')') end
  misses[i] = H - hi
  add[2 * i - 1] = int(s + 1)
end

local first = redis.call('HINCRBY', K.meta, 'ev', int(k)) - k + 1
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], int(first) .. '-0', 'A', table.concat(moved),
  'm', compact(misses))
redis.call('HINCRBY', K.meta, 'ack', int(k))
redis.call('ZADD', K.inflight, 'XX', unpack(add))
return k
