package llmratelimit

import (
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// A pool of provider accounts shared through Redis. Each account is one
// hash in the zone's hash slot, {prefix + zone}:a:<name>, with its leases
// (concurrency slots) in a sorted set beside it, and each key's affinity
// (the account that served its last request) is a string. Every
// instance decides on the same state: the account is chosen inside the
// key's admission script, a 429 that one instance sees cools the account
// for all, and an answer's learned limits and remaining cap are applied
// by a script too. The account hash's fields, by dimension d (1 requests,
// 2 tokens, 3 input, 4 output, the order of learn.go's):
//
//	bd, ud   the bucket's level and when it was written (µs); absent: full
//	cool     cooling down until (µs)
//	Ld, Sd   the learned limit per minute, and when it was last said (µs)
//	f, rise  the learned rate factor and when it last rose (absent: nothing learned)
//	cut, q   the last decrease and the last 429 seen (µs)
//	pk       the factor at the last decrease
//	Ad       what was admitted through the state (to read remaining against)
//	calls, rl attempts sent, attempts answered 429 or 529
//
// An account's hash and lease set have no TTL (see acct_flush); a key's
// affinity lives affinityTTL after it last changed.

// luaPool is the account arithmetic that the pool scripts share, after
// luaNow. It mirrors learn.go and account.go: the same rise, the same
// limits in force, the same order of choice.
var luaPool = `
local L_DEC, L_INC, L_KNEE, L_PROBE, L_MIN, L_QUIET = ` +
	ftoa(learnDecrease) + `, ` + ftoa(learnIncrease) + `, ` + ftoa(learnKnee) + `, ` + ftoa(learnProbe) + `, ` +
	ftoa(learnMinFactor) + `, ` + strconv.FormatInt(learnQuiet.Microseconds(), 10) + `
-- Field names by dimension, made once: a string built per use costs more
-- than the arithmetic around it.
local FB, FU, FL, FS, FA = {'b1', 'b2', 'b3', 'b4'}, {'u1', 'u2', 'u3', 'u4'}, {'L1', 'L2', 'L3', 'L4'}, {'S1', 'S2', 'S3', 'S4'}, {'A1', 'A2', 'A3', 'A4'}
local function put(s, k, v)
  s[k] = v
  s.__w = s.__w or {}
  s.__w[k] = true
end
local function acct_load(key, now)
  local h = redis.call('HGETALL', key)
  local s = {}
  for i = 1, #h, 2 do s[h[i]] = tonumber(h[i + 1]) end
  -- The rate climbs back (as learnedState.rise); at 1 it is where it
  -- stays, and nothing is written.
  if s.f and s.f < 1 and s.rise and now > s.rise then
    local dt = (now - s.rise) / 1000000
    local f, knee = s.f, (s.pk or 0) * L_KNEE
    if f < knee then
      local climb = math.min(dt, (knee - f) / L_INC)
      f = f + L_INC * climb
      dt = dt - climb
    end
    put(s, 'f', math.min(1, f + L_INC * L_PROBE * dt))
    put(s, 'rise', now)
  end
  return s
end
-- acct_flush writes what changed. An account's hash has no TTL: a zone
-- has few accounts, and their state (a cooldown, learned limits) is worth
-- keeping. Numbers are written as tostring does (14 digits: times to
-- 100 µs), as the key's buckets are.
local function acct_flush(key, s)
  if not s.__w then return end
  local args = {}
  for k in pairs(s.__w) do
    args[#args + 1] = k
    args[#args + 1] = s[k]
  end
  redis.call('HSET', key, unpack(args))
  s.__w = nil
end
local function acct_limits(s, cfg)
  local out = {}
  for d = 1, 4 do
    local c, l = cfg[d], s[FL[d]]
    if s.f and l and l > 0 then
      local e = math.max(math.floor(l * s.f), 1)
      if c == 0 or e < c then c = e end
    end
    out[d] = c
  end
  return out
end
local function acct_level(s, d, limit, now)
  local l = s[FB[d]]
  if not l then return limit end
  return math.min(limit, l + (now - (s[FU[d]] or now)) * limit / 60000000)
end
local function acct_set_level(s, d, level, now)
  put(s, FB[d], level)
  put(s, FU[d], now)
end
local function acct_learned(s)
  for d = 1, 4 do
    if (s[FL[d]] or 0) > 0 then return 1 end
  end
  return 0
end
-- acct_snapshot is an attempt's sent snapshot: whole numbers (the
-- demand's tokens are), returned as integers.
local function acct_snapshot(s, now)
  return {now, s.A1 or 0, s.A2 or 0, s.A3 or 0, s.A4 or 0, acct_learned(s)}
end
-- The pool's accounts: 7 arguments each from ARGV[ai] (name, priority,
-- rpm, tpm, itpm, otpm, concurrent), 2 keys each from KEYS[ki] (the hash,
-- the leases). An account's table is made when first used (most
-- admissions touch only the key's affinity); find is an index by name.
local function pool_accounts(ai, na, ki)
  local A = setmetatable({n = na}, {__index = function(A, i)
    if type(i) ~= 'number' or i < 1 or i > na then return nil end
    local o, k = ai + 7 * (i - 1), ki + 2 * (i - 1)
    local a = {name = ARGV[o], prio = tonumber(ARGV[o + 1]),
      cfg = {tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])},
      conc = tonumber(ARGV[o + 6]), key = KEYS[k], lkey = KEYS[k + 1]}
    rawset(A, i, a)
    return a
  end})
  local function find(name)
    for i = 1, na do
      if ARGV[ai + 7 * (i - 1)] == name then return i end
    end
  end
  return A, find
end
local function acct_state(a, now)
  if not a.s then
    a.s = acct_load(a.key, now)
    a.lim = acct_limits(a.s, a.cfg)
  end
  return a.s
end
-- Whether account a can take need now; else its verdict {kind (1
-- cooldown, 2 concurrency, 3 bucket), wait µs, limit, level, never, dim}.
local function acct_try(a, need, now)
  local s = acct_state(a, now)
  if s.cool and s.cool > now then return false, {1, s.cool - now, 0, 0, 0, 0} end
  if a.conc > 0 and redis.call('ZCARD', a.lkey) >= a.conc then
    -- Full: drop the leases of instances that died, then count again.
    redis.call('ZREMRANGEBYSCORE', a.lkey, '-inf', now)
    if redis.call('ZCARD', a.lkey) >= a.conc then return false, {2, 1000000, a.conc, 0, 0, 0} end
  end
  local w, v = 0, nil
  for d = 1, 4 do
    local lim = a.lim[d]
    if lim > 0 then
      local lvl = acct_level(s, d, lim, now)
      if need[d] > lim then return false, {3, 0, lim, lvl, 1, d} end
      if lvl < need[d] then
        local x = (need[d] - lvl) * 60000000 / lim
        if x > w then w, v = x, {3, x, lim, lvl, 0, d} end
      end
    end
  end
  if w > 0 then return false, v end
  return true, nil
end
local function acct_room(a, now)
  local s = acct_state(a, now)
  local room = 1
  for d = 1, 4 do
    local lim = a.lim[d]
    if lim > 0 then room = math.min(room, acct_level(s, d, lim, now) / lim) end
  end
  return room
end
-- pool_choose picks the account for need: the affinity (index aff) if it
-- can take it, else by priority, then headroom, then config order; never
-- excl. nil and the best verdict when none can: the shortest wait, or
-- never when none ever could.
local function pool_choose(A, need, aff, excl, now)
  local best, allnever = nil, true
  local function failed(v)
    if v[5] == 0 then
      if allnever or v[2] < best[2] then best = v end
      allnever = false
    elseif not best then
      best = v
    end
  end
  if aff and aff ~= excl then
    local ok, v = acct_try(A[aff], need, now)
    if ok then return aff, nil end
    failed(v)
  end
  local order = {}
  for i = 1, A.n do
    if i ~= excl and i ~= aff then
      order[#order + 1] = i
      A[i].room = acct_room(A[i], now)
    end
  end
  table.sort(order, function(x, y)
    local a, b = A[x], A[y]
    if a.prio ~= b.prio then return a.prio < b.prio end
    if a.room ~= b.room then return a.room > b.room end
    return x < y
  end)
  for _, i in ipairs(order) do
    local ok, v = acct_try(A[i], need, now)
    if ok then return i, nil end
    failed(v)
  end
  if not best then best = {1, 0, 0, 0, 1, 0} end
  return nil, best
end
-- pool_take debits need (take: the tokens too) from account a, holds a
-- lease, counts the call and makes a the key's affinity (cur: the
-- affinity as it is). The account's lease set is not given a TTL: the
-- accounts are few, and full sets drop their dead leases.
local function pool_take(a, need, now, take, learn, lease, lttl, affkey, cur)
  local s = acct_state(a, now)
  if learn == 1 and not s.f then
    put(s, 'f', 1)
    put(s, 'rise', now)
  end
  if take == 1 then
    for d = 1, 4 do
      local lim = a.lim[d]
      if lim > 0 then acct_set_level(s, d, acct_level(s, d, lim, now) - need[d], now) end
    end
    if s.f then
      for d = 1, 4 do put(s, FA[d], (s[FA[d]] or 0) + need[d]) end
    end
  end
  put(s, 'calls', (s.calls or 0) + 1)
  acct_flush(a.key, s)
  if a.conc > 0 then redis.call('ZADD', a.lkey, now + lttl, lease) end
  if cur ~= a.name then
    -- Set when it changes only: an affinity that expires while the key
    -- keeps its account is chosen again by the order, and set again.
    redis.call('SET', affkey, a.name, 'PX', ` + strconv.FormatInt(affinityTTL.Milliseconds(), 10) + `)
  end
  return acct_snapshot(s, now)
end
-- acct_give gives an account need's tokens back (not its request).
local function acct_give(a, need, now)
  local s = acct_state(a, now)
  for d = 2, 4 do
    local lim = a.lim[d]
    if lim > 0 and need[d] ~= 0 then acct_set_level(s, d, math.min(lim, acct_level(s, d, lim, now) + need[d]), now) end
  end
end
`

// affinityTTL is how long a key's affinity outlives its last request.
const affinityTTL = time.Hour

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// poolSection is the admission script's pool part, run when the key's
// own buckets, leases and budget let the request through: after the
// counters' TTL and the day's expiry come na (0: no pool), the demand's
// input and output tokens, learn, the lease's id and TTL (µs), then the
// accounts (see pool_accounts); the keys after the counters' and the
// day's are the key's affinity, then each account's two.
const poolSection = `
local pi = sidx + 2
local na = tonumber(ARGV[pi] or '0')
local A, need, chosen, pv, snap, affname
if na > 0 then
  local din, dout = tonumber(ARGV[pi + 1]), tonumber(ARGV[pi + 2])
  need = {1, din + dout, din, dout}
  local find
  A, find = pool_accounts(pi + 6, na, sk + 3)
  if never == 0 and wait == 0 and full == 0 then
    affname = redis.call('GET', KEYS[sk + 2])
    chosen, pv = pool_choose(A, need, affname and find(affname), nil, now)
  end
end
`

// poolTake is the admission script's pool part once the request is
// admitted.
const poolTake = `
  if chosen then snap = pool_take(A[chosen], need, now, 1, tonumber(ARGV[pi + 3]), ARGV[pi + 4], tonumber(ARGV[pi + 5]), KEYS[sk + 2], affname) end
`

// poolReply appends the pool's part of the admission's reply: {chosen
// (0: none), sent_at, admitted ×4, learned, verdict ×6}.
const poolReply = `
if na > 0 then
  local n = #out
  out[n + 1] = chosen or 0
  snap = snap or {0, 0, 0, 0, 0, 0}
  for i = 1, 6 do out[n + 1 + i] = snap[i] end
  if pv then
    for i = 1, 6 do out[n + 7 + i] = tostring(pv[i]) end
  else
    for i = 1, 6 do out[n + 7 + i] = 0 end
  end
end
`

// poolReplyLen is the length of that part.
const poolReplyLen = 1 + 6 + 6

// poolMoveScript cools an account down after it answered 429 or 529
// (never shortening a cooldown), and with move set moves the request to
// another account that can take it now, in one step: the old account gets
// the tokens back and its lease freed, the new one is charged (with take)
// and leased. KEYS: the key's affinity, then the accounts' (as
// pool_accounts). ARGV: cool (µs), move, the old account's index, din,
// dout, take, learn, the old lease, the new lease, the lease TTL (µs),
// na, then the accounts. It returns {cooldown added (µs), chosen (0:
// none), sent snapshot ×6}.
var poolMoveScript = redis.NewScript(luaNow + luaPool + `
local cool, move, old = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local din, dout, take, learn = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local oldLease, newLease, lttl, na = ARGV[8], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local A = pool_accounts(12, na, 2)
local need = {1, din + dout, din, dout}
local o = A[old]
local s = acct_state(o, now)
put(s, 'rl', (s.rl or 0) + 1)
local added, upto = 0, now + cool
if upto > (s.cool or 0) then
  added = upto - math.max(s.cool or 0, now)
  put(s, 'cool', upto)
end
local out = {tostring(added), 0}
if move == 1 then
  local chosen = pool_choose(A, need, nil, old, now)
  if chosen then
    if take == 1 then acct_give(o, need, now) end
    if o.conc > 0 then redis.call('ZREM', o.lkey, oldLease) end
    acct_flush(o.key, s)
    out[2] = chosen
    for _, x in ipairs(pool_take(A[chosen], need, now, take, learn, newLease, lttl, KEYS[1])) do out[#out + 1] = x end
    return out
  end
end
acct_flush(o.key, s)
return out
`)

// poolRetryScript counts a retry on the account that serves it: one more
// request in its bucket (debt allowed) and one more call. KEYS: the
// account's hash. ARGV: its configured rpm, tpm, itpm, otpm. It returns
// the new attempt's sent snapshot.
var poolRetryScript = redis.NewScript(luaNow + luaPool + `
local a = {key = KEYS[1], cfg = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}}
local s = acct_state(a, now)
if a.lim[1] > 0 then acct_set_level(s, 1, acct_level(s, 1, a.lim[1], now) - 1, now) end
if s.f then put(s, 'A1', (s.A1 or 0) + 1) end
put(s, 'calls', (s.calls or 0) + 1)
acct_flush(a.key, s)
return acct_snapshot(s, now)
`)

// poolLearnScript takes one answer's rate-limit report into an account,
// as learnedState.observe does in process: the learned limits, the rate
// cut of a 429 that follows another (at most once per round trip, across
// instances: the call must have been sent after the last cut), and each
// bucket capped at what the provider can have left. KEYS: the account's
// hash. ARGV: status, report (0: the answer said nothing), limit ×4,
// remaining ×4 (-1: not said), the sent snapshot's at, admitted ×4 and
// learned, the configured rpm, tpm, itpm, otpm.
var poolLearnScript = redis.NewScript(luaNow + luaPool + `
local status, report = tonumber(ARGV[1]), tonumber(ARGV[2])
local a = {key = KEYS[1], cfg = {tonumber(ARGV[17]), tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20])}}
local s = acct_state(a, now)
if not s.f then
  if report == 0 then return 0 end
  put(s, 'f', 1)
  put(s, 'rise', now)
end
for d = 1, 4 do
  local l = tonumber(ARGV[2 + d])
  if l > 0 then
    put(s, FL[d], l)
    put(s, FS[d], now)
  end
end
local sentAt, sentLearned = tonumber(ARGV[11]), tonumber(ARGV[16])
if status == 429 then
  if sentLearned == 1 and sentAt > (s.cut or 0) and s.q and now - s.q <= L_QUIET then
    put(s, 'pk', s.f)
    put(s, 'f', math.max(L_MIN, s.f * L_DEC))
    put(s, 'cut', now)
    put(s, 'rise', now)
  end
  put(s, 'q', now)
end
local lim = acct_limits(s, a.cfg)
for d = 1, 4 do
  local rem = tonumber(ARGV[6 + d])
  if rem >= 0 and lim[d] > 0 then
    local level = acct_level(s, d, lim[d], now)
    local rate = lim[d]
    if (s[FL[d]] or 0) > 0 then rate = s[FL[d]] end
    local arrival = rem + rate * (now - sentAt) / 60000000 - ((s[FA[d]] or 0) - tonumber(ARGV[11 + d]))
    local cap = math.max(rem, arrival)
    if level > cap then acct_set_level(s, d, cap, now) end
  end
end
acct_flush(a.key, s)
return 1
`)
