-- How many connections are subscribed, on this server, to the liveness channel of node `node`:
-- `live` is the start of those channels (`P:watcher:live:`, passed by the caller) and the node id
-- follows. Every candidate's wake connection subscribes to its own channel for as long as the
-- node runs (src/lease/liveness.rs), so 0 means that connection is not open here. -1 when the
-- caller does not check liveness (`live` empty).
local function subscribers(live, node)
  if live == '' then return -1 end
  return redis.call('PUBSUB', 'NUMSUB', live .. node)[2]
end
