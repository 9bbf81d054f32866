-- events_snapshot() -> {last event number, P:confirmed entries, P:points entries}
-- What an event reader starts from (src/events.rs): the number of the last event, and the
-- Confirmed txs with their blocks, from which it derives the Confirmed events of the blocks
-- that follow. Read-only, and atomic: the entries after that number start from this state.
return {redis.call('HGET', K.meta, 'ev') or '0', redis.call('ZRANGE', K.confirmed, 0, -1),
  redis.call('ZRANGE', K.points, 0, -1)}
