-- check_status(hash) -> false (unknown) | {'P'} | {'I', H, score, points, marks}
--   | {'L', log entry id | false, its fields, done score}
-- A live tx (pending or inflight) wins over an older line of the same hash in the log. For a
-- logged tx, the log entry that holds its line (the first whose id, `<last seq>-<first seq>`,
-- is at or above its sequence; decoded in Rust, which picks the line).
local hash = ARGV[2]
if redis.call('ZSCORE', K.pending, hash) then return {'P'} end
local score = redis.call('ZSCORE', K.inflight, hash)
if score then
  return {'I', redis.call('HGET', K.meta, 'H') or '0', score, redis.call('ZRANGE', K.points, 0, -1),
    redis.call('ZRANGE', K.marks, 0, -1, 'WITHSCORES')}
end
local done = redis.call('ZSCORE', K.done, hash)
if not done then return false end
local seq = math.floor(tonumber(done) / 2)
local entry = redis.call('XRANGE', K.log, string.format('%d-0', seq), '+', 'COUNT', 1)[1]
if not entry then return {'L', false, {}, done} end
return {'L', entry[1], entry[2], done}
