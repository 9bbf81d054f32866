-- undo_from(h, unseen, node_id, epoch) -> rolled back, undone blocks
-- Shared by confirm.lua (an undo call) and rollback_to.lua; put after common.lua and before the
-- script that uses it. Undoes every block of the applied chain at height `h` or above, so the
-- chain's height H becomes h - 1 and depth follows the chain:
--   * every inflight tx in `unseen` (a list of hashes; in that order), then every other tx first
--     confirmed by an undone block (oldest block first, each in the order it listed them),
--     returns to the tail of the pending queue;
--   * an unconfirmed inflight tx that became inflight above the new tip counts its misses from
--     the new tip: the marks above it go, and the new tip's mark takes the lowest of their
--     numbers (so heights still never decrease along propagation order);
--   * nothing finalizes or drops: lowering H only ever lowers counters.
-- Costs the txs it changes plus the undone blocks, never the size of the mempool or the chain.
-- The caller has checked the fence, the types, and that the chain holds height `h`.
local function undo_from(h, unseen, node_id, epoch)
  local S = 131072
  local new_h = h - 1
  -- Numbers go to Redis as text made here (see `int` in common.lua).
  local hs, new_hs = int(h), int(h - 1)

  -- Phase 1: read everything, so that bad data fails the call before any write.
  local undone = redis.call('ZRANGE', K.chain, hs, '+inf', 'BYSCORE')
  local back, in_back = {}, {}
  local acked, confirmed = 0, 0
  -- Unseen txs Confirmed by a block that stays: their entry in P:confirmed is rewritten.
  local below = {}
  if #unseen > 0 then
    local scores = variadic('ZMSCORE', K.inflight, nil, unseen)
    for i, hash in ipairs(unseen) do
      local s = tonumber(scores[i])
      if s and not in_back[hash] then
        in_back[hash] = true
        back[#back + 1] = hash
        local x = s % S
        if x == 1 then acked = acked - 1 end
        if x >= 2 then
          below[hash] = true
          confirmed = confirmed - 1
        end
      end
    end
  end
  local by_block = {}
  for _, e in ipairs(redis.call('ZRANGE', K.confirmed, hs, '+inf', 'BYSCORE')) do
    if (#e - 12) % 32 ~= 0 then corrupt(K.confirmed, 'bad entry ' .. hex(string.sub(e, 1, 12))) end
    for j = 13, #e, 32 do
      local hash = string.sub(e, j, j + 31)
      below[hash] = nil
      if not in_back[hash] then
        in_back[hash] = true
        back[#back + 1] = hash
        by_block[#by_block + 1] = hash
        confirmed = confirmed - 1
      end
    end
  end
  -- Each tx an undone block confirmed must be a Confirmed inflight tx.
  if #by_block > 0 then
    local scores = variadic('ZMSCORE', K.inflight, nil, by_block)
    for i, hash in ipairs(by_block) do
      local s = tonumber(scores[i])
      if not s or s % S < 2 then corrupt(K.confirmed, 'lists ' .. hex(hash) .. ', not a confirmed tx') end
    end
  end
  local rewrite = {}
  if next(below) then
    for _, e in ipairs(redis.call('ZRANGE', K.confirmed, '-inf', '(' .. hs, 'BYSCORE')) do
      local keep, changed = {string.sub(e, 1, 12)}, false
      for j = 13, #e, 32 do
        local hash = string.sub(e, j, j + 31)
        if below[hash] then changed = true else keep[#keep + 1] = hash end
      end
      if changed then rewrite[#rewrite + 1] = {e, table.concat(keep)} end
    end
  end
  local above, lowest = {}, nil
  local tail = redis.call('ZRANGE', K.marks, '0', int(#undone + 1), 'REV', 'WITHSCORES')
  for i = 1, #tail, 2 do
    if tonumber(tail[i]) > new_h then
      above[#above + 1] = tail[i]
      lowest = tail[i + 1]
    end
  end

  -- Phase 2: write. One entry: the undone blocks (`u`, oldest first; readers report them newest
  -- first, each with the height the chain has once it is gone) and the txs back to pending
  -- (`B`), whose numbers follow the blocks' and order the queue.
  local k = #undone + #back
  local first = redis.call('HINCRBY', K.meta, 'ev', int(k)) - k + 1
  redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], int(first) .. '-0', 'u', table.concat(undone, ','),
    'h', new_hs, 'node', node_id, 'epoch', epoch, 'B', table.concat(back))
  redis.call('HSET', K.meta, 'H', new_hs)
  redis.call('ZREMRANGEBYSCORE', K.chain, hs, '+inf')
  if #back > 0 then
    variadic('ZREM', K.inflight, nil, back)
    local add = {}
    for i, hash in ipairs(back) do
      add[2 * i - 1] = int(first + #undone + i - 1)
      add[2 * i] = hash
    end
    variadic('ZADD', K.pending, nil, add)
  end
  redis.call('ZREMRANGEBYSCORE', K.confirmed, hs, '+inf')
  redis.call('ZREMRANGEBYSCORE', K.points, hs, '+inf')
  for _, r in ipairs(rewrite) do
    redis.call('ZREM', K.confirmed, r[1])
    if #r[2] > 12 then redis.call('ZADD', K.confirmed, int(tonumber(string.sub(r[2], 1, 12))), r[2]) end
  end
  if #above > 0 then
    redis.call('ZREM', K.marks, unpack(above))
    redis.call('ZADD', K.marks, 'NX', lowest, string.format('%012d', new_h))
  end
  if acked ~= 0 then redis.call('HINCRBY', K.meta, 'ack', int(acked)) end
  if confirmed ~= 0 then redis.call('HINCRBY', K.meta, 'nconf', int(confirmed)) end
  return #back, #undone
end
