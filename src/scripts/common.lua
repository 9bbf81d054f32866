-- Helpers shared by the scripts that need them (the Rust side puts this file in front of a
-- script's own only when the script asks for it: every definition costs a little on each call).
-- `K` names the script's keys; ARGV[1] of every script is the events' `MAXLEN ~`.

-- Fails the call with `msg`, `<CODE> <detail>`. Redis 7 takes an error table and replies with
-- that code; Redis 6.2 takes only a string, and wraps it in its own message, where the Rust side
-- finds the code (see `Error::from_redis`).
local function fail(msg)
  if redis.REDIS_VERSION then error({err = msg}) end
  error(msg, 0)
end

-- Fails the call, naming where bad data sits (the Rust side makes it `Error::Corrupt`). Hashes
-- are raw bytes, so a field is named by its hex.
local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

local function corrupt(key, detail)
  fail('CORRUPT ' .. key .. ' :: ' .. detail)
end

-- A whole number as a command's argument or part of one. Redis 7.0 turns a Lua number argument
-- into text with printf('%.17g'), and Lua's `..` with printf('%.14g'): each costs Redis about as
-- much as a whole SET (measured: `HINCRBY k f 1` in a script 1.4 SETs dearer than with '1').
-- '%d' costs a fraction of that, and the numbers a script sends are whole and below 2^53. So the
-- hot scripts send no Lua number to Redis and concatenate none.
local function int(n)
  return string.format('%d', n)
end

-- Counts or misses of an event entry, one per tx: as one number when they are all the same
-- (the usual case), else comma-separated (src/events/entries.rs reads both).
local function compact(list)
  for i = 2, #list do
    if list[i] ~= list[1] then
      local text = {}
      for j = 1, #list do text[j] = int(list[j]) end
      return table.concat(text, ',')
    end
  end
  return list[1] and int(list[1]) or ''
end

-- A numeric field of P:meta (absent: 0).
local function meta_number(field, value)
  if not value then return 0 end
  local n = tonumber(value)
  if not n or n < 0 or n % 1 ~= 0 then
    corrupt(K.meta .. ' ' .. field, 'not a number: ' .. string.format('%q', value))
  end
  return n
end

-- No partial writes: a script checks the type of each key it writes but has not read before its
-- first write (a read fails with WRONGTYPE before anything is stored), naming the key.
local function expect_types(list)
  for i = 1, #list, 2 do
    local t = redis.call('TYPE', list[i]).ok
    if t ~= 'none' and t ~= list[i + 1] then
      fail('BADTYPE ' .. list[i] .. ' :: holds a ' .. t .. ', expected a ' .. list[i + 1])
    end
  end
end

-- Runs a command whose tail, `args[from..to]` (by default all of `args`; a slice of ARGV needs
-- no copy), may be longer than Lua's unpack takes (a few thousand values): in chunks of `step`
-- (even, so pairs stay together), concatenating array replies.
local function variadic(cmd, key, opt, args, step, from, to)
  step, from, to = step or 4000, from or 1, to or #args
  if to - from < step then
    if opt then return redis.call(cmd, key, opt, unpack(args, from, to)) end
    return redis.call(cmd, key, unpack(args, from, to))
  end
  local out = {}
  for i = from, to, step do
    local last = math.min(i + step - 1, to)
    local r
    if opt then r = redis.call(cmd, key, opt, unpack(args, i, last))
    else r = redis.call(cmd, key, unpack(args, i, last)) end
    if type(r) == 'table' then for j = 1, #r do out[#out + 1] = r[j] end end
  end
  return out
end
