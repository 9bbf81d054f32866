-- confirm(node_id, epoch, member, point, F, D, max_log, history, nseen, seen..., unseen...)
--   -> {'lost'} | {'already'} | {'applied', H, confirmed, rolled_back, finalized, dropped, undone}
--
-- Applies one block to the inflight txs, or undoes one when `unseen` is not empty (the Rust side
-- refuses a call with both lists). Fenced: only the node holding the lock at the epoch it
-- acquired may change anything, whatever that node believes locally. Exactly once, by point:
-- `member` is the block's entry in the applied chain (`<slot, 20 digits>[:<hash>]`, so that slots
-- compare exactly as strings) and `point` its form in records and events.
--   * forward: already applied if the point is on the chain, or if the chain holds `history`
--     blocks and the point's slot is at or below the oldest one's; otherwise the block becomes
--     the new tip, whatever its slot is next to blocks undone before.
--   * undo: applied only if the point is on the chain; that block and every block after it are
--     undone (undo.lua). Replaying an undo finds nothing to undo.
local node_id, epoch, member, point = A[1], A[2], A[3], A[4]
local F, D, max_log, history = tonumber(A[5]), tonumber(A[6]), tonumber(A[7]), tonumber(A[8])
local nseen = tonumber(A[9])
local nunseen = #A - 9 - nseen

check_types('lock', 'epoch', 'chain', 'height', 'txs', 'pending', 'inflight', 'unconfirmed',
  'confirmed', 'log', 'log_seq', 'done', 'acked', 'events', 'events_seq')

if redis.call('GET', K.lock) ~= node_id or redis.call('GET', K.epoch) ~= epoch then
  return {'lost'}
end

if nunseen > 0 then
  local at = redis.call('ZSCORE', K.chain, member)
  if not at then return {'already'} end
  local unseen = {}
  for i = 10 + nseen, #A do unseen[#unseen + 1] = A[i] end
  local rolled_back, undone = undo_from(tonumber(at), unseen, node_id, epoch)
  return {'applied', height(), 0, rolled_back, 0, 0, undone}
end

if redis.call('ZSCORE', K.chain, member) then return {'already'} end
local retained = redis.call('ZCARD', K.chain)
if retained >= history then
  local oldest = redis.call('ZRANGE', K.chain, 0, 0)[1]
  if oldest and string.sub(member, 1, 20) <= string.sub(oldest, 1, 20) then
    return {'already'}
  end
end

-- This block is the H-th of the applied chain. Counters follow from H (see `counters` in the
-- prelude), so only the block's txs and the txs that finalize or drop are written.
local H = height() + 1

-- Phase 1: read and decode everything this call will touch, so that corrupt data aborts the
-- call before the first write.
local seen, seen_set = inflight_in(A, 10, 9 + nseen)

-- Confirmed txs gain a confirmation: those reaching F finalize, the others get a Confirmed event
-- with their new count. Walking them all is the one part of confirm that grows with the mempool,
-- and only with the Confirmed txs: about F blocks' worth.
local finalize, still_confirmed = {}, {}
for _, hash in ipairs(redis.call('ZRANGE', K.confirmed, 0, -1)) do
  local t = load(hash)
  if not t or t.st ~= 'C' then corrupt(K.confirmed .. ' ' .. hash, 'not a confirmed tx') end
  if counters(t, H) >= F then
    finalize[#finalize + 1] = {hash = hash, t = t}
  else
    still_confirmed[#still_confirmed + 1] = {hash = hash, t = t}
  end
end
-- Txs confirmed for the first time by this block.
local newly = {}
for _, e in ipairs(seen) do
  if e.t.st ~= 'C' then
    e.was = e.t.st
    e.t.st, e.t.hc, e.t.at = 'C', H, point
    newly[#newly + 1] = e
    if 1 >= F then
      finalize[#finalize + 1] = e
    else
      still_confirmed[#still_confirmed + 1] = e
    end
  end
end
-- Unconfirmed inflight txs that missed D blocks drop (unless this block saw them).
-- P:unconfirmed is cleaned lazily: a tx that gets confirmed (or finalized) stays in it until its
-- score falls in this range, because removing one member among thousands with the same score
-- is what made confirm slow down with the mempool's size. Such stale members are skipped here
-- and removed with the whole range below.
local drop = unconfirmed_between('-inf', int(H - D), seen_set)

-- Phase 2: write. The block event comes first: it is the audit trail of applied blocks.
redis.call('SET', K.height, H)
redis.call('ZADD', K.chain, H, member)
-- The chain's heights are contiguous, so keeping the newest `history` is a range by score.
if retained + 1 > history then
  redis.call('ZREMRANGEBYSCORE', K.chain, '-inf', int(H - history))
end
emit('k', 'block', 'at', point, 'h', H, 'node', node_id, 'epoch', epoch, 'undo', '0')
-- Acknowledged txs leaving that stage, for the counter stats read.
local acked_delta = 0
for _, e in ipairs(newly) do
  if e.was == 'A' then acked_delta = acked_delta - 1 end
  redis.call('HSET', K.txs, e.hash, encode(e.t))
  redis.call('ZADD', K.confirmed, H, e.hash)
end
for _, e in ipairs(still_confirmed) do
  emit_tx(e.hash, 'C', counters(e.t, H), 0, e.t.at)
end

-- Moves a tx out of the live sets into the finalized log.
local function retire(e, stage)
  local c, m = counters(e.t, H)
  if e.t.st == 'A' then acked_delta = acked_delta - 1 end
  emit_tx(e.hash, stage, c, m, e.t.at)
  local n = redis.call('INCR', K.log_seq)
  redis.call('XADD', K.log, int(n) .. '-0', 'tx', e.hash, 'st', stage, 'c', int(c), 'm', int(m),
    'at', e.t.at or '', 'era', e.t.era, 'body', e.t.body)
  redis.call('HSET', K.done, e.hash, stage .. int(n))
  redis.call('HDEL', K.txs, e.hash)
  redis.call('ZREM', K.inflight, e.hash)
  redis.call('ZREM', K.confirmed, e.hash)
end
for _, e in ipairs(finalize) do retire(e, 'F') end
for _, e in ipairs(drop) do retire(e, 'D') end
redis.call('ZREMRANGEBYSCORE', K.unconfirmed, '-inf', int(H - D))
if acked_delta ~= 0 then redis.call('INCRBY', K.acked, acked_delta) end

-- Keep the newest max_log entries; forget the index entries of the ones that go, unless the
-- index already points at a newer entry for the same hash.
local excess = redis.call('XLEN', K.log) - max_log
if excess > 0 then
  for _, entry in ipairs(redis.call('XRANGE', K.log, '-', '+', 'COUNT', excess)) do
    local fields, hash = entry[2], nil
    for i = 1, #fields, 2 do if fields[i] == 'tx' then hash = fields[i + 1] end end
    if hash then
      local done = redis.call('HGET', K.done, hash)
      if done and string.sub(done, 2) .. '-0' == entry[1] then redis.call('HDEL', K.done, hash) end
    end
  end
  redis.call('XTRIM', K.log, 'MAXLEN', max_log)
end

return {'applied', H, #newly, 0, #finalize, #drop, 0}
