-- watcher_info() -> {holder|false, pttl, epoch|false, tip|false}
-- `tip` is the newest entry of the applied chain (see confirm.lua).
return {
  redis.call('GET', K.lock), redis.call('PTTL', K.lock), redis.call('GET', K.epoch),
  redis.call('ZRANGE', K.chain, -1, -1)[1] or false,
}
