-- mark_acknowledged(hash...) -> number of txs that moved
-- Propagated txs (stage bits 0 in their P:inflight score) become Acknowledged (bits 1); anything
-- else is left alone. The batch holds each hash once (the Rust side sees to it). One event
-- entry: `A` the hashes, `m` their misses (one number when they share it, else one per tx,
-- comma-separated), from the marks at or below the batch's numbers.
local S = 131072
-- `add` holds each moving tx's new score and hash, as the ZADD below takes them; `low` and `top`
-- are the lowest and highest of their old scores, `low_k` the tx with the lowest.
local moved, add, k = {}, {}, 0
local found = redis.call('ZMSCORE', K.inflight, unpack(ARGV, 2))
local low, top, low_k = nil, -1, nil
for i = 2, #ARGV do
  local s = tonumber(found[i - 1])
  if s and s % S == 0 then
    k = k + 1
    moved[k] = ARGV[i]
    add[2 * k - 1] = int(s + 1)
    add[2 * k] = ARGV[i]
    if s > top then top = s end
    if not low or s < low then low, low_k = s, k end
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
-- The index of the mark of number `n`, and its height (nil: none, or not a number).
local function mark_of(n)
  for j = 1, nm do
    if mn[j] <= n then return j, mh[j] end
  end
end
local function no_mark(n, hash)
  corrupt(K.marks, 'no mark at or below event ' .. n .. ' (tx ' .. hex(hash) .. ')')
end
-- The misses, one number when the txs share them: a batch propagated together (the usual one)
-- lies under one mark, as does every number between its lowest and its highest.
local misses
local jl, hl = mark_of(low / S)
if not hl then no_mark(low / S, moved[low_k]) end
if jl == mark_of(top / S) then
  misses = int(H - hl)
else
  -- The moved txs again, by the first pass's test (not kept from it: the usual batch needs none
  -- of this, and a table of numbers would cost it a slot per tx).
  local list, m = {}, 0
  for i = 2, #ARGV do
    local s = tonumber(found[i - 1])
    if s and s % S == 0 then
      m = m + 1
      local _, hi = mark_of(s / S)
      if not hi then no_mark(s / S, moved[m]) end
      list[m] = H - hi
    end
  end
  misses = compact(list)
end

local first = redis.call('HINCRBY', K.meta, 'ev', int(k)) - k + 1
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], int(first) .. '-0', 'A', table.concat(moved),
  'm', misses)
redis.call('HINCRBY', K.meta, 'ack', int(k))
redis.call('ZADD', K.inflight, 'XX', unpack(add))
return k
