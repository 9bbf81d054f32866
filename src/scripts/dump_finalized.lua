-- dump_finalized(from, lines) -> {lfirst, entries, records, replaced}
-- A small page of the finalized log (see SCRIPT_READ in src/mempool/txs.rs), in one round trip:
-- the entries holding the lines `from` (raised to `lfirst`, the first the log retains) to
-- `from + lines`, one more than the page returns (it tells the next cursor), oldest first; the
-- records of the page's lines, in order; and the P:replaced records of its lines (which take
-- precedence). Larger pages are plain commands (`log_page` in src/mempool/txs.rs): every entry
-- and record crossing Lua costs Redis about 0.4 µs per 300 bytes more.
local lfirst = math.max(meta_number('lfirst', redis.call('HGET', K.meta, 'lfirst')), 1)
local from = math.max(tonumber(ARGV[2]), lfirst)
local last = from + tonumber(ARGV[3])
-- Entry ids are `<last seq>-<first seq>`: the entries whose last line is in the range, then the
-- one reaching past it if it starts inside it.
local entries = redis.call('XRANGE', K.log, int(from) .. '-0', int(last))
local after = redis.call('XRANGE', K.log, int(last + 1) .. '-0', '+', 'COUNT', '1')[1]
if after then
  local first = tonumber(string.match(after[1], '%-(%d+)$') or '')
  -- An id that is not one of ours goes to Rust, which names it.
  if not first or first <= last then entries[#entries + 1] = after end
end
-- The hashes of lines `from` to `last - 1`: a line is `<F|D><hash><rest>`, its end the first
-- line break after the hash (raw bytes, which may hold one). Rust checks the rest.
local hashes = {}
for _, entry in ipairs(entries) do
  local seq = tonumber(string.match(entry[1], '%-(%d+)$') or '')
  local t = entry[2][2]
  if not seq or type(t) ~= 'string' then break end
  local p = 1
  while p <= #t and seq < last do
    if seq >= from then hashes[#hashes + 1] = string.sub(t, p + 1, p + 32) end
    local nl = string.find(t, '\n', p + 33, true)
    if not nl then break end
    p, seq = nl + 1, seq + 1
  end
end
local records = {}
if #hashes > 0 then records = redis.call('HMGET', K.txs, unpack(hashes)) end
return {int(lfirst), entries, records,
  redis.call('ZRANGE', K.replaced, int(from), int(last - 1), 'BYSCORE')}
