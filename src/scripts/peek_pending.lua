-- peek_pending(count) -> {hashes, records}
-- A small read of the pending queue (see SCRIPT_READ in src/mempool/txs.rs): its first `count`
-- txs in queue order, nothing removed, in one round trip. Records are returned as stored
-- (`<era>|<body>`) and decoded in Rust. Larger reads are plain commands: every body crossing
-- Lua costs Redis about three times what a plain HMGET does.
local hashes = redis.call('ZRANGE', K.pending, 0, ARGV[2] - 1)
if #hashes == 0 then return {hashes, {}} end
return {hashes, redis.call('HMGET', K.txs, unpack(hashes))}
