-- Shared head of the lease's scripts (acquire, renew, release, take_over, reset_lock): the Rust
-- side puts it after the `K` table of the script's keys (and after the `#!lua` header line on
-- Redis 7; see `Header` in src/scripts.rs), and `liveness.lua` after it where a script counts
-- liveness subscribers. These scripts run a few times per TTL, so they keep the convenience of
-- named arguments and one emit function; the scripts on the transactions' hot path do without
-- it.

-- ARGV[1] is common to every call: how many entries the event stream keeps. A script's own
-- arguments follow; `A` holds them from index 1.
local EVENTS_MAX = ARGV[1]
local A = {}
for i = 2, #ARGV do A[i - 1] = ARGV[i] end

-- No partial writes: a key of the wrong type must fail the call before its first write, named
-- (the Rust side makes it `Error::WrongType`). Redis 6.2 takes an error only as a string (see
-- `fail` in common.lua).
local function check_types(...)
  local expected = {
    lock = 'string', epoch = 'string', fence = 'string', meta = 'hash', events = 'stream',
  }
  for _, name in ipairs({...}) do
    local t = redis.call('TYPE', K[name]).ok
    if t ~= 'none' and t ~= expected[name] then
      local msg = 'BADTYPE ' .. K[name] .. ' :: holds a ' .. t .. ', expected a ' .. expected[name]
      if redis.REDIS_VERSION then error({err = msg}) end
      error(msg, 0)
    end
  end
end

local function int(n)
  return string.format('%d', n)
end

-- Appends one event to the event stream and returns its number `n`: the id is `<n>-0`, `n` from
-- the counter `ev` of P:meta, which every writing script advances by the number of events its
-- entry stands for (see src/events.rs), so a reader sees a gap in `n` when entries it had not
-- read were trimmed.
local function emit(...)
  local n = redis.call('HINCRBY', K.meta, 'ev', 1)
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
