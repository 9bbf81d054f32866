-- check_access(live) -> {'<command> <key or channel>', ...}: what a node sends that the connected
-- user may not run, checked once at open. A refusal met later, in the middle of a script, would
-- leave the writes the script made before it (Redis does not undo them): the lock set by an
-- acquisition whose PUBLISH is refused, an event for a tx that is not stored. Empty when every
-- command is allowed, or on a server without ACL checks for scripts (before Redis 7).
-- `live` is this node's liveness channel ('' when it checks no liveness).
local live = ARGV[2]
if not redis.acl_check_cmd then return {} end
local missing = {}
local function need(...)
  if not redis.acl_check_cmd(...) then
    local args = {...}
    table.insert(missing, args[1] .. ' ' .. (args[2] or ''))
  end
end
-- Strings: the lock, its fence and the epoch.
for _, key in ipairs({K.lock, K.epoch, K.fence}) do
  need('get', key); need('set', key, '0'); need('type', key)
end
need('set', K.lock, '0', 'PX', '1'); need('pexpire', K.lock, '1'); need('pttl', K.lock)
need('del', K.lock); need('incr', K.epoch)
-- Hashes.
for _, key in ipairs({K.meta, K.txs}) do
  need('hget', key, 'f'); need('hmget', key, 'f'); need('hset', key, 'f', 'v')
  need('hincrby', key, 'f', '1'); need('hsetnx', key, 'f', 'v'); need('hdel', key, 'f')
  need('hexists', key, 'f'); need('exists', key); need('type', key)
end
-- Sorted sets.
for _, key in ipairs({K.chain, K.pending, K.inflight, K.marks, K.confirmed, K.points, K.done}) do
  need('zadd', key, '0', 'm'); need('zrem', key, 'm'); need('zcard', key); need('zscore', key, 'm')
  need('zmscore', key, 'm'); need('zrange', key, '0', '1')
  need('zremrangebyscore', key, '0', '1'); need('del', key); need('type', key)
end
-- Streams.
for _, key in ipairs({K.log, K.events}) do
  need('xadd', key, '1-0', 'f', 'v'); need('xrange', key, '-', '+'); need('xlen', key)
  need('xtrim', key, 'MINID', '1'); need('type', key)
  need('xread', 'COUNT', '1', 'BLOCK', '1', 'STREAMS', key, '0')
end
-- The wake channel.
need('publish', K.wake, 'm'); need('subscribe', K.wake); need('unsubscribe', K.wake)
-- Liveness: the node's own channel, and the count of its subscribers (liveness.lua).
if live ~= '' then
  need('subscribe', live); need('pubsub', 'numsub', live)
end
-- Large reads: plain commands, some in a MULTI (src/mempool/txs.rs).
need('multi'); need('exec')
need('ping')
-- The memory figures (stats.lua, and the lease thread now and then).
need('info', 'memory')
return missing
