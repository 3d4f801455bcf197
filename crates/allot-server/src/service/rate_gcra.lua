-- Weighted GCRA over several keys, all or nothing, in one atomic step.
-- KEYS[i]: one rate key per meter (all sharing one hash tag, so one cluster slot).
-- ARGV[1]: now in microseconds (the caller's clock, so tests can inject time).
-- ARGV[2]: "1" to consume, "0" to only look.
-- Then per key i, three values: emission interval (microseconds per unit), tolerance
-- (microseconds: burst × interval), weight (units this request uses).
-- A key holds its theoretical arrival time (TAT) in microseconds and expires once idle.
-- Returns { allowed (1/0), index of the first refusing key (0 if none), wait in microseconds,
--           TAT of every key after the decision... }.
local now = tonumber(ARGV[1])
local consume = ARGV[2] == '1'
local tats = {}
local new_tats = {}
for i = 1, #KEYS do
  local base = 3 + (i - 1) * 3
  local interval = tonumber(ARGV[base])
  local tolerance = tonumber(ARGV[base + 1])
  local weight = tonumber(ARGV[base + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local new_tat = tat + weight * interval
  local wait = new_tat - tolerance - now
  if wait > 0 then
    local reply = { 0, i, math.ceil(wait) }
    for j = 1, #KEYS do
      local t = tats[j] or tonumber(redis.call('GET', KEYS[j]) or now)
      if t < now then t = now end
      reply[3 + j] = string.format('%.0f', t)
    end
    return reply
  end
  new_tats[i] = new_tat
end
local reply = { 1, 0, 0 }
for i = 1, #KEYS do
  local t = tats[i]
  if consume then
    t = new_tats[i]
    redis.call('SET', KEYS[i], string.format('%.0f', t), 'PX', math.ceil((t - now) / 1000) + 1000)
  end
  reply[3 + i] = string.format('%.0f', t)
end
return reply
