-- mark_inflight(hash...) -> number of txs that moved
-- Pending txs become Propagated; anything else is left alone, so an inflight or finalized tx is
-- never overwritten. The batch holds each hash once (the Rust side sees to it). One event entry
-- for the batch (`R`, the hashes in order): its first number n goes to the first tx, n + 1 to the
-- next, and each tx's number times 2^17 is its P:inflight score (propagation order; stage bits
-- zero: Propagated). Where its misses count from (`hi`, the height now) is the mark of this
-- height: P:marks keeps the first number propagated at each height (NX: an older mark of this
-- height stays).
--
-- The batch leaves the queue without its scores being read: the removal's count settles the
-- usual batch (all pending, as when Dolos propagates the head of its queue; or none, as when
-- another node moved it first). `ZMSCORE` of 50 cost about a fifth of the call (Redis 7.0
-- prints every score it replies with '%.17g'). So every key is typed and `H` read first, and
-- the first write takes the event numbers for the whole batch (given back below for txs that
-- did not move): without the `#!lua` header (Redis 6.2) a full Redis refuses a script only at
-- its first write that may grow memory, which must come before the removal, which does not.
expect_types({K.pending, 'zset', K.inflight, 'zset', K.marks, 'zset', K.done, 'zset', K.txs,
  'hash'})
local H = meta_number('H', redis.call('HGET', K.meta, 'H'))
local n = #ARGV - 1
local last = redis.call('HINCRBY', K.meta, 'ev', int(n))
local k = redis.call('ZREM', K.pending, unpack(ARGV, 2))
-- The moved txs, in the batch's order, are `moved[from..]`: ARGV itself from 2 when all moved.
local moved, from = ARGV, 2
if k < n then
  if k > 0 then
    -- Some were pending and some not. A tx with a record is in exactly one of P:pending,
    -- P:inflight and P:done (see src/keys.rs), and an unknown one in none and without a
    -- record: so the removed ones are those with a record in neither of the others.
    local inflight = redis.call('ZMSCORE', K.inflight, unpack(ARGV, 2))
    local done = redis.call('ZMSCORE', K.done, unpack(ARGV, 2))
    moved, from = {}, 1
    for i = 2, #ARGV do
      if not inflight[i - 1] and not done[i - 1]
        and redis.call('HEXISTS', K.txs, ARGV[i]) == 1 then
        moved[#moved + 1] = ARGV[i]
      end
    end
    -- Only data that breaks those rules gets here (a pending tx also inflight or logged, or
    -- without its record), after the removal: which of the batch left the queue is unknown.
    if #moved ~= k then
      redis.call('HINCRBY', K.meta, 'ev', int(-n))
      corrupt(K.pending, string.format('%d of the batch left the queue, %d found', k, #moved))
    end
  end
  redis.call('HINCRBY', K.meta, 'ev', int(k - n))
  if k == 0 then return 0 end
end

local first = last - n + 1
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], int(first) .. '-0', 'R',
  table.concat(moved, '', from))
local add = {}
for i = 1, k do
  add[2 * i - 1] = int((first + i - 1) * 131072)
  add[2 * i] = moved[from + i - 1]
end
redis.call('ZADD', K.inflight, unpack(add))
redis.call('ZADD', K.marks, 'NX', int(first), string.format('%012d', H))
return k
