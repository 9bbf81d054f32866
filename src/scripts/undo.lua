-- undo_from(h, unseen, node_id, epoch) -> rolled back, undone blocks
-- Shared by confirm.lua (an undo call) and rollback_to.lua; put between the prelude and the
-- script that uses it. Undoes every block of the applied chain at height `h` or above, so the
-- chain's height H becomes h - 1 and depth follows the chain:
--   * every inflight tx in `unseen` (a list of hashes; in that order), then every other tx first
--     confirmed by an undone block (in the order they were confirmed), returns to the tail of
--     the pending queue with its counters cleared;
--   * an unconfirmed inflight tx that became inflight above the new tip counts its misses from
--     the new tip (its `hi` comes down to h - 1);
--   * nothing finalizes or drops: lowering H only ever lowers counters.
-- Costs the txs it changes plus the undone blocks, never the size of the mempool or the chain.
-- The caller has checked the fence and that the chain holds height `h`.
local function undo_from(h, unseen, node_id, epoch)
  local new_h = h - 1

  -- Phase 1: read and decode everything, so that corrupt data fails the call before any write.
  local undone = redis.call('ZRANGEBYSCORE', K.chain, h, '+inf')
  -- The host's `unseen` first, in its order, then the other txs the undone blocks confirmed, in
  -- the order they were confirmed.
  local back, back_set = inflight_in(unseen, 1, #unseen)
  for _, hash in ipairs(redis.call('ZRANGEBYSCORE', K.confirmed, h, '+inf')) do
    if not back_set[hash] then
      back_set[hash] = true
      local t = load(hash)
      if not t or t.st ~= 'C' then corrupt(K.confirmed .. ' ' .. hash, 'not a confirmed tx') end
      back[#back + 1] = {hash = hash, t = t}
    end
  end
  local rebase = unconfirmed_between('(' .. int(new_h), '+inf', back_set)

  -- Phase 2: write. One block event per undone block, newest first, as Dolos undoes them; each
  -- carries the height the chain has once that block is gone.
  redis.call('SET', K.height, new_h)
  redis.call('ZREMRANGEBYSCORE', K.chain, h, '+inf')
  for i = #undone, 1, -1 do
    emit('k', 'block', 'at', undone[i], 'h', int(new_h + i - 1), 'node', node_id,
      'epoch', epoch, 'undo', '1')
  end
  local acked_delta = 0
  for _, e in ipairs(back) do
    if e.t.st == 'A' then acked_delta = acked_delta - 1 end
    local n = emit_tx(e.hash, 'B', 0, 0, '')
    redis.call('HSET', K.txs, e.hash, encode({st = 'P', era = e.t.era, body = e.t.body}))
    redis.call('ZREM', K.inflight, e.hash)
    redis.call('ZREM', K.unconfirmed, e.hash)
    redis.call('ZREM', K.confirmed, e.hash)
    redis.call('ZADD', K.pending, n, e.hash)
  end
  for _, e in ipairs(rebase) do
    e.t.hi = new_h
    redis.call('HSET', K.txs, e.hash, encode(e.t))
    redis.call('ZADD', K.unconfirmed, new_h, e.hash)
  end
  if acked_delta ~= 0 then redis.call('INCRBY', K.acked, acked_delta) end
  return #back, #undone
end
