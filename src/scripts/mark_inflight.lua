-- mark_inflight(hash...) -> number of txs that moved
-- Pending txs become Propagated; anything else is left alone, so an inflight or finalized tx is
-- never overwritten. The batch holds each hash once (the Rust side sees to it). One event entry
-- for the batch (`R`, the hashes in order): its first number n goes to the first tx, n + 1 to the
-- next, and each tx's
-- number times 2^17 is its P:inflight score (propagation order; stage bits zero: Propagated).
-- Where its misses count from (`hi`, the height now) is the mark of this height: P:marks keeps
-- the first number propagated at each height (NX: an older mark of this height stays).
local scores = redis.call('ZMSCORE', K.pending, unpack(ARGV, 2))
-- The batch's pending txs, in its order, are `moved[from..]`: the usual batch is all pending
-- (Dolos propagates the head of its queue), and then they are ARGV itself from 2, not a copy.
local moved, from, k = ARGV, 2, #ARGV - 1
for i = 1, k do
  if not scores[i] then
    moved, from, k = {}, 1, 0
    for j = 2, #ARGV do
      if scores[j - 1] then
        k = k + 1
        moved[k] = ARGV[j]
      end
    end
    break
  end
end
if k == 0 then return 0 end
expect_types({K.inflight, 'zset', K.marks, 'zset'})
local H = meta_number('H', redis.call('HGET', K.meta, 'H'))

local first = redis.call('HINCRBY', K.meta, 'ev', int(k)) - k + 1
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], int(first) .. '-0', 'R',
  table.concat(moved, '', from))
redis.call('ZREM', K.pending, unpack(moved, from))
local add = {}
for i = 1, k do
  add[2 * i - 1] = int((first + i - 1) * 131072)
  add[2 * i] = moved[from + i - 1]
end
redis.call('ZADD', K.inflight, unpack(add))
redis.call('ZADD', K.marks, 'NX', int(first), string.format('%012d', H))
return k
