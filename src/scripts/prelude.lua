-- Shared head of every script (the Rust side puts it in front of each one, after the `#!lua`
-- header line on Redis 7; see `Header` in src/scripts.rs). It runs on every call, so it only
-- defines: tables and functions cost nothing until used.
--
-- Every script receives all keys of the mempool, in this order, so the layout is declared once
-- (src/keys.rs documents it) and a script can never name an undeclared key.
local K = {
  lock = KEYS[1], epoch = KEYS[2], wake = KEYS[3], chain = KEYS[4], height = KEYS[5],
  txs = KEYS[6], pending = KEYS[7], inflight = KEYS[8], unconfirmed = KEYS[9],
  confirmed = KEYS[10], log = KEYS[11], log_seq = KEYS[12], done = KEYS[13], acked = KEYS[14],
  events = KEYS[15], events_seq = KEYS[16], fence = KEYS[17],
}

-- ARGV[1] is common to every call: how many entries the event stream keeps. A script's own
-- arguments follow; `A` holds them from index 1.
local EVENTS_MAX = ARGV[1]
local A = {}
for i = 2, #ARGV do A[i - 1] = ARGV[i] end

-- No partial writes. Redis keeps the writes a script made before an error, so a key of the wrong
-- type must fail the call before its first write. Single-tx scripts get that by order: they read
-- every key they write (HEXISTS, ZCARD, ...) before writing, and write the event counter and
-- stream first, whose failure leaves only a gap that readers report. Batch scripts, which touch
-- more keys, call check_types once per batch. A WRONGTYPE error is turned into a message naming
-- the key on the Rust side.
local function check_types(...)
  local expected = {
    lock = 'string', epoch = 'string', chain = 'zset', height = 'string', txs = 'hash',
    pending = 'zset', inflight = 'zset', unconfirmed = 'zset', confirmed = 'zset',
    log = 'stream', log_seq = 'string', done = 'hash', acked = 'string', events = 'stream',
    events_seq = 'string', fence = 'string',
  }
  for _, name in ipairs({...}) do
    local t = redis.call('TYPE', K[name]).ok
    if t ~= 'none' and t ~= expected[name] then
      error({err = 'BADTYPE ' .. K[name] .. ' :: holds a ' .. t .. ', expected a ' .. expected[name]})
    end
  end
end

local function corrupt(key, detail)
  error({err = 'CORRUPT ' .. key .. ' :: ' .. detail})
end

local function num(key, value)
  if not value then return 0 end
  local n = tonumber(value)
  if not n then corrupt(key, 'not a number: ' .. tostring(value)) end
  return n
end

local function int(n)
  return string.format('%d', n)
end

-- A tracked tx in P:txs: the state `stage|hi|hc|era|confirmed_at`, a newline, then the body.
--   stage: P pending, R propagated, A acknowledged, C confirmed
--   hi:    the H (applied chain height) when the tx became inflight (R, A, C); an undo that
--          lowers H below it brings it down to the new H
--   hc:    the H of the call that first confirmed it (C)
--   era:   the era of the payload
--   confirmed_at: the encoded chain point of that call (C)
-- One value per tx: one write to store it, one read to load it, and the body cannot be
-- separated from its state.
local function decode(hash, rec)
  local nl = string.find(rec, '\n', 1, true)
  local st, hi, hc, era, at
  if nl then
    st, hi, hc, era, at = string.match(string.sub(rec, 1, nl - 1),
      '^([PRAC])|(%d*)|(%d*)|(%d+)|(.*)$')
  end
  if not st or (st ~= 'P' and hi == '') or (st == 'C' and hc == '') then
    corrupt(K.txs .. ' ' .. hash, 'bad state record ' .. string.format('%q', string.sub(rec, 1, 64)))
  end
  return {st = st, hi = tonumber(hi), hc = tonumber(hc), era = era, at = at,
    body = string.sub(rec, nl + 1)}
end

local function encode(t)
  return t.st .. '|' .. (t.hi and int(t.hi) or '') .. '|' .. (t.hc and int(t.hc) or '') .. '|'
    .. t.era .. '|' .. (t.at or '') .. '\n' .. t.body
end

-- The one place the counters are derived: a Confirmed tx has one confirmation per block of the
-- applied chain from (and including) the one that first confirmed it; an unconfirmed inflight tx
-- missed every block applied since it became inflight. Undone blocks count for nobody: an undo
-- lowers H.
local function counters(t, H)
  if t.st == 'C' then return H - t.hc + 1, 0 end
  if t.st == 'R' or t.st == 'A' then return 0, H - t.hi end
  return 0, 0
end

local function height()
  return num(K.height, redis.call('GET', K.height))
end

-- A tx as the Rust side decodes it: {hash, stage, confirmations, misses, confirmed_at, era, body}.
local function tx_reply(hash, t, H)
  local c, m = counters(t, H)
  return {hash, t.st, c, m, t.at, t.era, t.body}
end

-- Reads the record of `hash`; nil when the tx is not live (pending or inflight).
local function load(hash)
  local rec = redis.call('HGET', K.txs, hash)
  if not rec then return nil end
  return decode(hash, rec)
end

-- The inflight txs among list[first..last] (pending and untracked hashes are left out), each
-- once and in list order, as {hash, t}; and the set of every hash in that range.
local function inflight_in(list, first, last)
  local found, set = {}, {}
  for i = first, last do
    local hash = list[i]
    if not set[hash] then
      set[hash] = true
      local t = load(hash)
      if t and t.st ~= 'P' then found[#found + 1] = {hash = hash, t = t} end
    end
  end
  return found, set
end

-- The txs of P:unconfirmed scored from `min` to `max` (ZRANGEBYSCORE bounds) that are still
-- unconfirmed inflight txs (R or A) and not in the set `skip`, as {hash, t}. The set is cleaned
-- lazily (see confirm.lua), so it may hold txs confirmed or gone since: only live R/A records
-- count.
local function unconfirmed_between(min, max, skip)
  local found = {}
  for _, hash in ipairs(redis.call('ZRANGEBYSCORE', K.unconfirmed, min, max)) do
    if not skip[hash] then
      local t = load(hash)
      if t and (t.st == 'R' or t.st == 'A') then found[#found + 1] = {hash = hash, t = t} end
    end
  end
  return found
end

-- Appends one event to the event stream and returns its number `n`. The id is `<n>-0` from a
-- counter, so a reader sees a gap in `n` when entries it had not read were trimmed. `n` also
-- orders the pending queue and the inflight set: every move into them makes an event.
local function emit(...)
  local n = redis.call('INCR', K.events_seq)
  redis.call('XADD', K.events, 'MAXLEN', '~', EVENTS_MAX, int(n) .. '-0', ...)
  return n
end

-- Takes the watcher lock for `node_id` under a new epoch (acquire.lua, and renew.lua after a
-- hand-deleted lock). The wake message goes first, before any write: a refused PUBLISH (a user
-- without the channel) must not leave a lock nobody leads with. It tells a watcher that lost its
-- lock that someone else holds it now, so it steps down at once instead of at its next renewal.
local function take_lock(node_id, ttl)
  redis.call('PUBLISH', K.wake, 'acquired ' .. node_id)
  redis.call('SET', K.lock, node_id, 'PX', ttl)
  redis.call('SET', K.fence, node_id, 'PX', ttl)
  local epoch = redis.call('INCR', K.epoch)
  emit('k', 'leader', 'node', node_id, 'epoch', epoch)
  return epoch
end

-- A tx event. Stages: P received, R propagated, A acknowledged, C confirmed (once per applied
-- block, with its count), B rolled back to pending, F finalized, D dropped.
local function emit_tx(hash, st, c, m, at)
  return emit('k', 'tx', 'tx', hash, 'st', st, 'c', int(c), 'm', int(m), 'at', at or '')
end
