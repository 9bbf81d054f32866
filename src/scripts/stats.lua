-- stats() -> {{P, R, A, C counts}, log length, holder|false, pttl, epoch|false, applied|false, H}
check_types('stages', 'log', 'lock', 'epoch', 'applied', 'height')
local counts = redis.call('HMGET', K.stages, 'P', 'R', 'A', 'C')
for i = 1, 4 do counts[i] = num(K.stages, counts[i]) end
return {
  counts, redis.call('XLEN', K.log), redis.call('GET', K.lock), redis.call('PTTL', K.lock),
  redis.call('GET', K.epoch), redis.call('GET', K.applied), height(),
}
