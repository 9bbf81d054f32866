-- watcher_info() -> {holder|false, pttl, epoch|false, applied|false}
return {
  redis.call('GET', K.lock), redis.call('PTTL', K.lock), redis.call('GET', K.epoch),
  redis.call('GET', K.applied),
}
