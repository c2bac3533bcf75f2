"""The shared credit ledger's Lua script and its reply codes (see ``ledger`` for the design).

One script, run with EVALSHA: every operation reads the Redis server's clock, sweeps the
reservations of owners whose lease lapsed, and answers with a code and a snapshot of the
counters, so that each process's view is as fresh as its last call.
"""

from __future__ import annotations

from typing import Final

from .connection import LEASE_LUA

__all__ = [
    "BUDGET",
    "GRANTED",
    "HALTED",
    "LOST",
    "OK",
    "PROBE_OUT",
    "REFUSED",
    "RESERVE",
    "SCRIPT",
    "SNAPSHOT",
    "WAIT",
]

# Reply codes, shared with the Lua text below.
GRANTED, WAIT, REFUSED, HALTED, LOST, OK = 0, 1, 2, 3, 4, 5
# Why a reservation was refused (the detail of WAIT and REFUSED).
PROBE_OUT, BUDGET, RESERVE = 0, 1, 2
# Fields of the snapshot that starts every reply, after the code.
SNAPSHOT: Final = 8

SCRIPT: Final = (
    """
-- KEYS: 1 state (hash), 2 held (hash: owner -> credits held), 3 owners (sorted set: owner ->
--       lease end), 4 expired (hash: hold -> credits made uncertain when its owner's lease
--       lapsed), 5 holds (hash: hold -> credits), a hold being "owner/id"
-- ARGV: 1 operation, 2 owner, 3 lease (us), 4 ttl (ms), 5.. operands
-- Every reply starts with a code and a snapshot of the counters (see snapshot()).
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local op, owner, lease, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local S, HELD, OWNERS, EXPIRED, HOLDS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function int(x) return string.format('%.0f', x) end
"""
    + LEASE_LUA
    + """
local function num(field) return tonumber(redis.call('HGET', S, field) or '0') end
local function opt(field)  -- nil when absent: the balance before any report, say
  local v = redis.call('HGET', S, field)
  if v then return tonumber(v) end
  return nil
end
local function add(field, by) if by ~= 0 then redis.call('HINCRBY', S, field, by) end end
local function unit() return math.max(num('unit'), 1) end
local function snapshot(code, ...)
  local reply = {code, opt('remaining') or -1, num('consumed'), num('reserved'),
                 num('uncertain'), num('unreported'), unit(), num('halted'), opt('reported') or -1}
  for _, v in ipairs({...}) do table.insert(reply, v) end
  return reply
end
local function keep()
  for _, k in ipairs({S, HELD, EXPIRED, HOLDS}) do redis.call('PEXPIRE', k, ttl) end
end
-- Attempts that went out and got no answer (or whose owner died): they may have been charged.
local function lost(amount)
  add('uncertain', amount); add('unreported', amount); add('lost', amount); add('epoch', 1)
end
-- What owners whose lease lapsed still held becomes uncertain.
local function sweep()
  local held, dead = redis.call('HGETALL', HELD), {}
  for i = 1, #held, 2 do
    local o, amount = held[i], tonumber(held[i + 1])
    if lease_state(o) ~= 'alive' then
      redis.call('HDEL', HELD, o)
      add('reserved', -amount)
      lost(amount)
      dead[o] = true
      if redis.call('HGET', S, 'probe') == o then redis.call('HDEL', S, 'probe') end
    end
  end
  if next(dead) then
    local holds = redis.call('HGETALL', HOLDS)
    for i = 1, #holds, 2 do
      if dead[string.match(holds[i], '^(.*)/[^/]*$')] then
        redis.call('HDEL', HOLDS, holds[i])
        redis.call('HSET', EXPIRED, holds[i], holds[i + 1])
      end
    end
  end
end

if op == 'reserve' then
  sweep()
  if not renew(owner) then keep(); return snapshot(4) end
  if num('halted') > 0 then keep(); return snapshot(3) end
  local floor, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
  local cost, reserved, remaining = unit(), num('reserved'), opt('remaining')
  local refusal = -1
  if budget >= 0 and num('consumed') + num('uncertain') + reserved + cost > budget then
    refusal = 1
  elseif remaining and remaining - reserved - num('unreported') - cost < floor then
    refusal = 2
  end
  if refusal >= 0 then
    keep()
    if reserved == 0 then return snapshot(2, refusal) end  -- nothing could give credits back
    return snapshot(1, refusal)
  end
  local probe = 0
  if not remaining and not opt('reported') then
    if redis.call('HEXISTS', S, 'probe') == 1 then keep(); return snapshot(1, 0) end
    probe = 1
    redis.call('HSET', S, 'probe', owner)
  end
  add('reserved', cost)
  redis.call('HINCRBY', HELD, owner, cost)
  redis.call('HSET', HOLDS, owner .. '/' .. ARGV[7], cost)
  keep()
  return snapshot(0, cost, probe, num('consumed'), num('lost'), num('epoch'))

elseif op == 'settle' then
  sweep()
  renew(owner)
  local hold, probe, outcome = owner .. '/' .. ARGV[15], ARGV[6], ARGV[7]
  local amount = tonumber(redis.call('HGET', HOLDS, hold) or '-1')
  if amount >= 0 then
    redis.call('HDEL', HOLDS, hold)
    if redis.call('HINCRBY', HELD, owner, -amount) <= 0 then redis.call('HDEL', HELD, owner) end
    add('reserved', -amount)
    if probe == '1' and redis.call('HGET', S, 'probe') == owner then
      redis.call('HDEL', S, 'probe')
    end
  else
    -- The owner's lease lapsed meanwhile and the hold was counted as uncertain: now the
    -- outcome is known. Neither here nor there: settled already (a write retried).
    amount = tonumber(redis.call('HGET', EXPIRED, hold) or '-1')
    if amount < 0 then keep(); return snapshot(5) end
    redis.call('HDEL', EXPIRED, hold)
    add('uncertain', -amount)
  end
  if outcome == 'unanswered' then
    lost(amount)
  elseif outcome == 'answered' then
    local spent, header, reported = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
    -- Charges the server may have made between this attempt's charge and the newest balance
    -- already seen: attempts settled since it was reserved, in flight, or gone uncertain since.
    local in_between = num('consumed') - tonumber(ARGV[11]) + num('reserved')
                       + num('lost') - tonumber(ARGV[12])
    add('consumed', spent)
    if header > unit() then redis.call('HSET', S, 'unit', header) end
    if spent > 0 and not opt('reported') then
      redis.call('HSET', S, 'reported', reported >= 0 and 1 or 0)
    end
    if reported >= 0 and tonumber(ARGV[13]) == num('epoch') then
      -- reserved after every unanswered attempt ended: the balance includes their charges
      redis.call('HSET', S, 'unreported', 0)
    end
    local current = opt('remaining')
    if reported < 0 then
      if current and spent > 0 then
        redis.call('HSET', S, 'remaining', math.max(0, current - spent))
      end
    else
      redis.call('HSET', S, 'reported', 1)
      -- The lowest report is the newest; a higher one only when no reordering explains it.
      if not current or reported <= current or reported > current + in_between * unit() then
        redis.call('HSET', S, 'remaining', reported)
      end
    end
    local status = tonumber(ARGV[14])
    if status == 402 or status == 403 then
      if num('halted') == 0 then redis.call('HSET', S, 'halted', status) end
      local r = opt('remaining')
      if status == 402 and (not r or r > 0) then redis.call('HSET', S, 'remaining', 0) end
    end
  end
  keep()
  return snapshot(5)

elseif op == 'renew' then
  sweep()
  local alive = renew(owner)
  keep()
  if not alive then return snapshot(4) end
  return snapshot(5)

elseif op == 'leave' then
  leave(owner)
  sweep()
  keep()
  return snapshot(5)

elseif op == 'status' then
  sweep()
  return snapshot(5)
end
return redis.error_reply('clipnormals ledger: unknown operation ' .. tostring(op))
"""
)
