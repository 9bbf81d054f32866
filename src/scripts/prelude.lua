-- Shared head of every script (the Rust side puts it in front of each one at build time).
--
-- Every script receives all keys of the mempool, in this order, so the layout is declared once
-- (src/keys.rs documents it) and a script can never name an undeclared key.
local K = {
  lock = KEYS[1], epoch = KEYS[2], wake = KEYS[3], applied = KEYS[4], height = KEYS[5],
  seq = KEYS[6], txs = KEYS[7], payloads = KEYS[8], pending = KEYS[9], inflight = KEYS[10],
  unconfirmed = KEYS[11], confirmed = KEYS[12], log = KEYS[13], log_seq = KEYS[14],
  done = KEYS[15], stages = KEYS[16], events = KEYS[17], events_seq = KEYS[18], fence = KEYS[19],
}

-- ARGV[1] is common to every call: how many entries the event stream keeps. A script's own
-- arguments follow; `A` holds them from index 1.
local EVENTS_MAX = ARGV[1]
local A = {}
for i = 2, #ARGV do A[i - 1] = ARGV[i] end

-- Redis keeps the writes a script made before an error, so scripts check the types of the keys
-- they touch before writing anything; the error names the key instead of a bare WRONGTYPE.
local EXPECTED = {
  lock = 'string', epoch = 'string', applied = 'string', height = 'string', seq = 'string',
  txs = 'hash', payloads = 'hash', pending = 'zset', inflight = 'zset', unconfirmed = 'zset',
  confirmed = 'zset', log = 'stream', log_seq = 'string', done = 'hash', stages = 'hash',
  events = 'stream', events_seq = 'string', fence = 'string',
}
local function check_types(...)
  for _, name in ipairs({...}) do
    local t = redis.call('TYPE', K[name]).ok
    if t ~= 'none' and t ~= EXPECTED[name] then
      error({err = 'BADTYPE ' .. K[name] .. ' :: holds a ' .. t .. ', expected a ' .. EXPECTED[name]})
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

-- The state record of a tracked tx, in P:txs: `stage|hi|hc|era|confirmed_at`.
--   stage: P pending, R propagated, A acknowledged, C confirmed
--   hi:    the H (applied confirm count) when the tx became inflight (R, A, C)
--   hc:    the H of the call that first confirmed it (C)
--   era:   the era of the payload
--   confirmed_at: the encoded chain point of that call (C)
local function decode(hash, rec)
  local st, hi, hc, era, at = string.match(rec, '^([PRAC])|(%d*)|(%d*)|(%d+)|(.*)$')
  if not st or (st ~= 'P' and hi == '') or (st == 'C' and hc == '') then
    corrupt(K.txs .. ' ' .. hash, 'bad state record ' .. string.format('%q', rec))
  end
  return {st = st, hi = tonumber(hi), hc = tonumber(hc), era = era, at = at}
end

local function encode(t)
  return t.st .. '|' .. (t.hi and int(t.hi) or '') .. '|' .. (t.hc and int(t.hc) or '') .. '|'
    .. t.era .. '|' .. (t.at or '')
end

-- The one place the counters are derived: a Confirmed tx gained one confirmation per applied
-- call since (and including) the one that first confirmed it; an unconfirmed inflight tx missed
-- every applied call since it became inflight.
local function counters(t, H)
  if t.st == 'C' then return H - t.hc + 1, 0 end
  if t.st == 'R' or t.st == 'A' then return 0, H - t.hi end
  return 0, 0
end

local function height()
  return num(K.height, redis.call('GET', K.height))
end

-- A tx as the Rust side decodes it: {hash, stage, confirmations, misses, confirmed_at, era, body}.
local function tx_reply(hash, t, body, H)
  local c, m = counters(t, H)
  return {hash, t.st, c, m, t.at, t.era, body}
end

-- Reads the record of `hash`; nil when the tx is not live (pending or inflight).
local function load(hash)
  local rec = redis.call('HGET', K.txs, hash)
  if not rec then return nil end
  return decode(hash, rec)
end

local function load_body(hash)
  local body = redis.call('HGET', K.payloads, hash)
  if not body then corrupt(K.payloads .. ' ' .. hash, 'payload missing for a tracked tx') end
  return body
end

-- How many live txs are in each stage (P, R, A, C), so stats need not scan.
local function count_stage(from, to)
  if from then redis.call('HINCRBY', K.stages, from, -1) end
  if to then redis.call('HINCRBY', K.stages, to, 1) end
end

-- Appends one event to the event stream, with an explicit id `<n>-0` taken from a counter, so a
-- reader sees a gap in `n` when entries it had not read were trimmed.
local function emit(...)
  local n = redis.call('INCR', K.events_seq)
  redis.call('XADD', K.events, 'MAXLEN', '~', EVENTS_MAX, int(n) .. '-0', ...)
end

-- A tx event. Stages: P received, R propagated, A acknowledged, C confirmed (once per applied
-- block, with its count), B rolled back to pending, F finalized, D dropped.
local function emit_tx(hash, st, c, m, at)
  emit('k', 'tx', 'tx', hash, 'st', st, 'c', int(c), 'm', int(m), 'at', at or '')
end
