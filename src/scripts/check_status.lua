-- check_status(hash) -> false (unknown) | {'P'} | {'I', H, score, points, marks}
--   | {'L', log status line | false, done score}
-- A live tx (pending or inflight) wins over an older entry of the same hash in the log. For a
-- logged tx, the status line of its log entry (`<F|D><hash><c>|<m>|<point>`, decoded in Rust),
-- without the record after it (an entry without the line break comes whole: Rust finds it bad).
local hash = ARGV[2]
if redis.call('ZSCORE', K.pending, hash) then return {'P'} end
local score = redis.call('ZSCORE', K.inflight, hash)
if score then
  return {'I', redis.call('HGET', K.meta, 'H') or '0', score, redis.call('ZRANGE', K.points, 0, -1),
    redis.call('ZRANGE', K.marks, 0, -1, 'WITHSCORES')}
end
local done = redis.call('ZSCORE', K.done, hash)
if not done then return false end
local id = string.format('%d-0', math.floor(tonumber(done) / 2))
local entry = redis.call('XRANGE', K.log, id, id)[1]
if not entry then return {'L', false, done} end
local t = entry[2][2]
local nl = string.find(t, '\n', 34, true)
return {'L', nl and string.sub(t, 1, nl - 1) or t, done}
