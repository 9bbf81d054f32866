-- reset_lock(expected_holder) -> the holder that was removed | false
-- The operator's reset: deletes the lock only if it is held by `expected_holder` (any holder when
-- that is empty), so a reset aimed at a stuck node cannot remove a lock someone else just took.
-- The fence goes too (see acquire.lua), so the lock is free for anyone at once. The epoch stays
-- (it only ever grows); followers are woken, and the event stream records the release.
local expected = A[1]
check_types('lock', 'fence', 'epoch', 'events', 'meta')
local holder = redis.call('GET', K.lock) or redis.call('GET', K.fence)
if not holder or (expected ~= '' and holder ~= expected) then return false end
redis.call('DEL', K.lock, K.fence)
redis.call('PUBLISH', K.wake, 'released')
emit('k', 'released', 'node', holder, 'epoch', redis.call('GET', K.epoch) or '0')
return holder
