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
--
-- Nothing here is per Confirmed tx or per inflight tx: the counters derive from H (see
-- src/keys.rs), the stage sits in the P:inflight score, the Confirmed txs are one P:confirmed
-- entry per block, and the event entry carries only this block's transitions plus how many txs
-- stay Confirmed (`kept`), from which readers derive one Confirmed event each (src/events.rs).
local S, SC = 131072, 131070
local LOG_LINES = 256
local node_id, epoch, member, point = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local F, D = tonumber(ARGV[6]), tonumber(ARGV[7])
local max_log, history = tonumber(ARGV[8]), tonumber(ARGV[9])
local first_seen = 11
local first_unseen = first_seen + tonumber(ARGV[10])

if redis.call('GET', K.lock) ~= node_id or redis.call('GET', K.epoch) ~= epoch then
  return {'lost'}
end
-- Every key written below that no read below types (P:chain and P:meta are read first).
expect_types({K.events, 'stream', K.log, 'stream', K.done, 'zset', K.txs, 'hash',
  K.pending, 'zset', K.inflight, 'zset', K.marks, 'zset', K.confirmed, 'zset', K.points, 'zset',
  K.replaced, 'zset'})
local meta = redis.call('HMGET', K.meta, 'H', 'cur', 'lseq', 'nconf', 'lfirst')
local H0 = meta_number('H', meta[1])

if #ARGV >= first_unseen then
  local at = redis.call('ZSCORE', K.chain, member)
  if not at then return {'already'} end
  local unseen = {}
  for i = first_unseen, #ARGV do unseen[#unseen + 1] = ARGV[i] end
  local rolled_back, undone = undo_from(tonumber(at), unseen, node_id, epoch)
  return {'applied', tonumber(at) - 1, 0, rolled_back, 0, 0, undone}
end

if redis.call('ZSCORE', K.chain, member) then return {'already'} end
local retained = redis.call('ZCARD', K.chain)
if retained >= history then
  local oldest = redis.call('ZRANGE', K.chain, 0, 0)[1]
  if oldest and string.sub(member, 1, 20) <= string.sub(oldest, 1, 20) then
    return {'already'}
  end
end

-- This block is the H-th of the applied chain. Phase 1 reads everything the call changes, so
-- that bad data fails it before the first write.
local H = H0 + 1
-- Numbers go to Redis as text made here (see `int` in common.lua).
local Hs, fin_top = int(H), int(H - F + 1)
local cur, lseq, nconf = meta_number('cur', meta[2]), meta_number('lseq', meta[3]),
  meta_number('nconf', meta[4])
local lfirst = math.max(meta_number('lfirst', meta[5]), 1)
local acked = 0

-- The block's inflight txs that were not Confirmed yet (stage bits 0 or 1) become Confirmed at H;
-- `add` holds their new scores and hashes, as the ZADD below takes them.
local newly, add, seen_set = {}, {}, {}
if first_unseen > first_seen then
  local scores = variadic('ZMSCORE', K.inflight, nil, ARGV, nil, first_seen, first_unseen - 1)
  local at = first_seen - 1
  for i = 1, first_unseen - first_seen do
    local hash, s = ARGV[at + i], tonumber(scores[i])
    if s and not seen_set[hash] then
      seen_set[hash] = true
      local x = s % S
      if x < 2 then
        local k = #newly + 1
        newly[k] = hash
        add[2 * k - 1] = int(s - x + 2 + H % SC)
        add[2 * k] = hash
        if x == 1 then acked = acked - 1 end
      end
    end
  end
end

-- Confirmed txs reaching F confirmations: the entries of the blocks at or below H - F + 1,
-- oldest block first, each block's txs in the order it listed them. The txs of one block share
-- their count and point: `groups` holds, per block, its last tx's index in `fin`, the count and
-- the point (not one of each per tx).
local fin, groups = {}, {}
local fin_entries = redis.call('ZRANGE', K.confirmed, '-inf', fin_top, 'BYSCORE')
if #fin_entries > 0 then
  local points = {}
  for _, p in ipairs(redis.call('ZRANGE', K.points, '-inf', fin_top, 'BYSCORE')) do
    points[string.sub(p, 1, 12)] = string.sub(p, 13)
  end
  for _, e in ipairs(fin_entries) do
    local hc = string.sub(e, 1, 12)
    local at, height = points[hc], tonumber(hc)
    if not at or not height or (#e - 12) % 32 ~= 0 then
      corrupt(K.confirmed, 'bad entry for height ' .. string.format('%q', hc))
    end
    for j = 13, #e, 32 do fin[#fin + 1] = string.sub(e, j, j + 31) end
    groups[#groups + 1] = {#fin, H - height + 1, at}
  end
end
local kept = nconf - #fin
-- With F <= 1 a tx is final in the block that confirms it.
if F <= 1 and #newly > 0 then
  for _, hash in ipairs(newly) do fin[#fin + 1] = hash end
  groups[#groups + 1] = {#fin, 1, point}
end
-- The finalized txs' counts for the event entry: one number when the blocks share it (see
-- `compact`), else one per tx.
local fin_counts = ''
if #groups > 0 then
  local c, same = groups[1][2], true
  for g = 2, #groups do same = same and groups[g][2] == c end
  if same then
    fin_counts = int(c)
  else
    local list, from = {}, 1
    for _, g in ipairs(groups) do
      for i = from, g[1] do list[i] = g[2] end
      from = g[1] + 1
    end
    fin_counts = compact(list)
  end
end

-- Unconfirmed inflight txs that missed D blocks drop, unless this block saw them. A tx's height
-- `hi` never decreases along propagation order (a new tx gets the newest number and the tip's
-- height; an undo brings every height above the new tip down to it, see undo.lua), so they are
-- the Propagated or Acknowledged txs numbered below B, the first number propagated above
-- H - D; those below the cursor `cur` were dealt with by earlier blocks. In propagation order.
local drop, drop_m = {}, {}
local B
if H - D >= 0 then
  local top = redis.call('ZRANGE', K.marks, '0', int(D), 'REV', 'WITHSCORES')
  for i = 1, #top, 2 do
    if tonumber(top[i]) > H - D then B = tonumber(top[i + 1]) else break end
  end
  local upto = B and string.format('(%d', B * S) or '+inf'
  local candidates = redis.call('ZRANGE', K.inflight, int(cur * S), upto, 'BYSCORE', 'WITHSCORES')
  if #candidates > 0 then
    local marks = redis.call('ZRANGE', K.marks, B and string.format('(%d', B) or '+inf', '-inf',
      'BYSCORE', 'REV', 'WITHSCORES')
    -- As numbers once, not once per candidate; indexed, not appended: a mark that is not a number
    -- leaves a hole (found below as no mark), never shifts the others.
    local mh, mn, nm = {}, {}, #marks / 2
    for m = 1, nm do
      mh[m] = tonumber(marks[2 * m - 1])
      mn[m] = tonumber(marks[2 * m])
    end
    for i = 1, #candidates, 2 do
      local hash, s = candidates[i], tonumber(candidates[i + 1])
      local x = s % S
      if x < 2 and not seen_set[hash] then
        local n, hi = (s - x) / S, nil
        for j = 1, nm do
          if mn[j] <= n then hi = mh[j]; break end
        end
        if not hi then corrupt(K.marks, 'no mark at or below event ' .. string.format('%d', n)) end
        drop[#drop + 1] = hash
        drop_m[#drop] = H - hi
        if x == 1 then acked = acked - 1 end
      end
    end
  end
end

-- The txs that leave. Their records stay in P:txs while the log holds them (see src/keys.rs): no
-- body crosses Lua here, where copying 300 bytes into a Lua string costs about 0.4 µs (Redis's
-- Lua hashes every byte of a new string).
local retire = {}
for i = 1, #fin do retire[i] = fin[i] end
for i = 1, #drop do retire[#retire + 1] = drop[i] end

-- Phase 2: write. The event entry comes first (a failure after the counter leaves only a gap).
local confirmed_now = F > 1 and newly or {}
local k = 1 + kept + #confirmed_now + #fin + #drop
local first = redis.call('HINCRBY', K.meta, 'ev', int(k)) - k + 1
redis.call('XADD', K.events, 'MAXLEN', '~', ARGV[1], int(first) .. '-0', 'b', point, 'h', Hs,
  'node', node_id, 'epoch', epoch, 'kept', int(kept), 'C', table.concat(confirmed_now),
  'F', table.concat(fin), 'Fc', fin_counts, 'D', table.concat(drop), 'Dm', compact(drop_m))
redis.call('ZADD', K.chain, Hs, member)
-- The chain's heights are contiguous, so keeping the newest `history` is a range by score.
if retained + 1 > history then
  redis.call('ZREMRANGEBYSCORE', K.chain, '-inf', int(H - history))
end
if #confirmed_now > 0 then
  variadic('ZADD', K.inflight, 'XX', add)
  local tag = string.format('%012d', H)
  redis.call('ZADD', K.confirmed, Hs, tag .. table.concat(confirmed_now))
  redis.call('ZADD', K.points, Hs, tag .. point)
end
if #fin_entries > 0 then
  redis.call('ZREMRANGEBYSCORE', K.confirmed, '-inf', fin_top)
end
redis.call('ZREMRANGEBYSCORE', K.points, '-inf', fin_top)
if #retire > 0 then
  variadic('ZREM', K.inflight, nil, retire)
  -- One log entry per call, `<last seq>-<first seq>`, its status lines in sequence order (one
  -- XADD where one per tx cost Redis about three times as much); a call that lets more than
  -- LOG_LINES txs go writes an entry per LOG_LINES, so that a reader never copies a huge entry
  -- for a few of its lines.
  -- A finalized tx's line ends with its block's count and point, made once per block.
  local done, lines, g, tail = {}, {}, 0, nil
  for i, hash in ipairs(retire) do
    local seq = lseq + i
    if i <= #fin then
      if g == 0 or i > groups[g][1] then
        -- (`repeat`: a block entry without txs, which only bad data holds, has no lines.)
        repeat g = g + 1 until i <= groups[g][1]
        tail = string.format('%d|0|', groups[g][2]) .. groups[g][3]
      end
      lines[i] = 'F' .. hash .. tail
      done[2 * i - 1] = int(2 * seq + 1)
    else
      lines[i] = 'D' .. hash .. string.format('0|%d|', drop_m[i - #fin])
      done[2 * i - 1] = int(2 * seq)
    end
    done[2 * i] = hash
  end
  for i = 1, #lines, LOG_LINES do
    local j = math.min(i + LOG_LINES - 1, #lines)
    redis.call('XADD', K.log, int(lseq + j) .. '-' .. int(lseq + i), 't',
      table.concat(lines, '\n', i, j))
  end
  variadic('ZADD', K.done, nil, done)
  lseq = lseq + #retire
end
local set = {'H', Hs, 'lseq', int(lseq), 'nconf', int(kept + #confirmed_now)}
if H - D >= 0 then
  -- Everything numbered below B is dealt with; without a mark above H - D, everything so far.
  local next_cur = B or (first + k)
  if next_cur > cur then
    set[#set + 1] = 'cur'
    set[#set + 1] = int(next_cur)
  end
  if B then
    redis.call('ZREMRANGEBYSCORE', K.marks, '-inf', string.format('(%d', B))
  else
    redis.call('DEL', K.marks)
  end
end
-- The log keeps the newest max_log txs, from `lfirst` on: the txs below it leave P:done and,
-- with it, their records leave P:txs (a Dropped tx received again is no longer in P:done, see
-- receive.lua, and keeps its record), as do their P:replaced records; the entries whose every
-- line is below it go. An entry across `lfirst` stays whole, and readers skip its lines below
-- it.
if lseq - max_log + 1 > lfirst then
  lfirst = lseq - max_log + 1
  local below = string.format('(%d', 2 * lfirst)
  local gone = redis.call('ZRANGE', K.done, '-inf', below, 'BYSCORE')
  if #gone > 0 then variadic('HDEL', K.txs, nil, gone) end
  redis.call('ZREMRANGEBYSCORE', K.done, '-inf', below)
  redis.call('ZREMRANGEBYSCORE', K.replaced, '-inf', string.format('(%d', lfirst))
  redis.call('XTRIM', K.log, 'MINID', int(lfirst) .. '-0')
  set[#set + 1] = 'lfirst'
  set[#set + 1] = int(lfirst)
end
redis.call('HSET', K.meta, unpack(set))
if acked ~= 0 then redis.call('HINCRBY', K.meta, 'ack', int(acked)) end

return {'applied', H, #newly, 0, #fin, #drop, 0}
