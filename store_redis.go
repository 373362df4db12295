package llmratelimit

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// leaseTTL is how long a concurrency slot held in Redis lives if its
// instance dies before giving it back.
var leaseTTL = 10 * time.Minute

// luaBuckets is the bucket arithmetic that both scripts share, written
// once: a bucket is a hash {l: level, t: time in µs} refilled at limit per
// minute; an absent one is full. level_at reads a bucket's level at now;
// store_level writes it back. The hash must live at least until the
// bucket is full again (capped, so that a bucket deep in debt still gets a
// valid TTL), after which it may be dropped: a full bucket and no hash are
// the same. A PEXPIRE costs more than the arithmetic of a bucket, so the
// hash remembers (x, µs) when it was set to expire, and store_level sets
// it again only when that comes too soon, then with luaSlackMs to spare:
// about once a minute per busy bucket instead of on every write.
var luaBuckets = `
local X = {}
local function level_at(key, limit, now)
  local h = redis.call('HMGET', key, 'l', 't', 'x')
  X[key] = tonumber(h[3])
  if not h[1] then return limit end
  return math.min(limit, tonumber(h[1]) + (now - tonumber(h[2])) * limit / 60000000)
end
local function store_level(key, limit, level, now)
  local ttl = math.min(math.ceil((limit - level) * 60000 / limit) + 1000, 100000000000000)
  if (X[key] or 0) < now + ttl * 1000 then
    ttl = ttl + ` + strconv.FormatInt(luaSlackMs, 10) + `
    X[key] = now + ttl * 1000
    redis.call('HSET', key, 'l', tostring(level), 't', tostring(now), 'x', tostring(X[key]))
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('HSET', key, 'l', tostring(level), 't', tostring(now))
  end
end
` + luaNow + `
local nb, nl = tonumber(ARGV[1]), tonumber(ARGV[2])
`

// luaSlackMs is how much longer than needed a script makes a hash live
// when it sets its TTL, so that it need not set it again for as long.
const luaSlackMs = 60_000

// luaNow is Redis's own clock in µs, the one clock of every script.
const luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
`

// admitScript makes the whole admission decision on Redis's own clock:
// every bucket must serve its need and every lease set must have room, or
// nothing changes. With a budget (its hash {s: spent, r: reserved} in
// nano-dollars, one per key and period, after the buckets and leases), the
// worst case must fit what is left of it first, and is reserved in the same
// step. After the budget's arguments (0: none) come a TTL in ms for the
// key's counters (a key; store_redis_counters.go) and the expiry (unix ms)
// of the key's usage of the day (the next key), where an admitted request
// counts. It returns {ok, never, wait_us, blocking bucket
// (-1: the budget), full lease set, levels..., spent}; the caller turns
// the blocking bucket's level into its wait with durationFromTokens, as
// for the in-process buckets.
var admitScript = redis.NewScript(admitSrc)

var admitSrc = luaBuckets + luaCounters + luaPool + `
local bi = 2 + 2*nb + 3*nl + 1
local hasb, spent, bk = tonumber(ARGV[bi] or '0'), 0, nil
local sidx = bi + (hasb == 1 and 4 or 1)
local sttl = tonumber(ARGV[sidx] or '0')
local sk = nb + nl + hasb + 1
if hasb == 1 then
  bk = KEYS[nb + nl + 1]
  local h = redis.call('HMGET', bk, 's', 'r')
  spent = tonumber(h[1] or '0')
  if spent + tonumber(h[2] or '0') + tonumber(ARGV[bi + 2]) > tonumber(ARGV[bi + 1]) then
    local out = {0, 1, '0', -1, 0}
    for i = 1, nb do out[#out + 1] = tostring(level_at(KEYS[i], tonumber(ARGV[1 + 2*i]), now)) end
    out[#out + 1] = tostring(spent)
    out[#out + 1] = h[2] or '0' -- reserved by requests in flight
    return out
  end
end
local levels, wait, blocking, never = {}, 0, 0, 0
for i = 1, nb do
  local limit, need = tonumber(ARGV[1 + 2*i]), tonumber(ARGV[2 + 2*i])
  local level = level_at(KEYS[i], limit, now)
  levels[i] = level
  if need > limit then
    if never == 0 then never, blocking = 1, i end
  elseif never == 0 and level < need then
    local w = (need - level) * 60000000 / limit
    if w > wait then wait, blocking = w, i end
  end
end
local base, full = 2 + 2*nb, 0
if never == 0 and wait == 0 then
  for j = 1, nl do
    local k, lim = KEYS[nb + j], tonumber(ARGV[base + 3*j - 2])
    if redis.call('ZCARD', k) >= lim then
      -- Full: drop the leases of instances that died, then count again.
      redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
      if redis.call('ZCARD', k) >= lim then full = j break end
    end
  end
end
` + poolSection + `
local out
if never == 1 or wait > 0 or full > 0 or (na > 0 and not chosen) then
  out = {0, never, tostring(math.ceil(wait)), blocking, full}
else
  for i = 1, nb do
    local limit, need = tonumber(ARGV[1 + 2*i]), tonumber(ARGV[2 + 2*i])
    levels[i] = levels[i] - need
    store_level(KEYS[i], limit, levels[i], now)
  end
  for j = 1, nl do
    local k, ttl = KEYS[nb + j], tonumber(ARGV[base + 3*j])
    redis.call('ZADD', k, now + ttl, ARGV[base + 3*j - 1])
    redis.call('PEXPIRE', k, math.ceil(ttl / 1000) + 1000)
  end
  if hasb == 1 then
    redis.call('HINCRBY', bk, 'r', ARGV[bi + 2])
    redis.call('PEXPIREAT', bk, ARGV[bi + 3])
  end
  if sttl > 0 then count_key(KEYS[sk], now, 1, 0, 0, sttl) end
  if tonumber(ARGV[sidx + 1] or '0') > 0 then count_day(KEYS[sk + 1], ARGV[sidx + 1], 1, 0, 0, 0) end
` + poolTake + `
  out = {1, 0, '0', 0, 0}
end
for i = 1, nb do out[#out + 1] = tostring(levels[i]) end
out[#out + 1] = tostring(spent)
` + poolReply + `
return out
`

// settleScript gives tokens back (or takes more, into debt), releases
// the request's leases and, with a budget, replaces the worst case
// reserved with the cost. After the budget's arguments (0: none), a TTL
// in ms and the request's input and output tokens count on the key's
// counters (a key), and with the expiry (unix ms) of the day's usage and
// the cost, on the key's usage of the day (the next key). It returns the
// budget's spend after the cost was added (0 without a budget): HINCRBY
// adds one settle at a time, so the spend before it is that less the
// cost, and no two settles of any instances span the same spend
// (budget_alert.go).
var settleScript = redis.NewScript(settleSrc)

var settleSrc = luaBuckets + luaCounters + luaPool + `
for i = 1, nb do
  local limit, delta = tonumber(ARGV[1 + 2*i]), tonumber(ARGV[2 + 2*i])
  if delta ~= 0 then
    store_level(KEYS[i], limit, math.min(limit, level_at(KEYS[i], limit, now) + delta), now)
  end
end
for j = 1, nl do redis.call('ZREM', KEYS[nb + j], ARGV[2 + 2*nb + j]) end
local bi = 2 + 2*nb + nl + 1
local spent_after = 0
if tonumber(ARGV[bi] or '0') == 1 then
  local bk = KEYS[nb + nl + 1]
  redis.call('HINCRBY', bk, 'r', -tonumber(ARGV[bi + 1]))
  spent_after = redis.call('HINCRBY', bk, 's', ARGV[bi + 2])
  redis.call('PEXPIREAT', bk, ARGV[bi + 3])
end
local hasb = tonumber(ARGV[bi] or '0') == 1 and 1 or 0
local si = bi + (hasb == 1 and 4 or 1)
local sk = nb + nl + hasb + 1
if tonumber(ARGV[si] or '0') > 0 then
  count_key(KEYS[sk], now, 0, tonumber(ARGV[si + 1]), tonumber(ARGV[si + 2]), tonumber(ARGV[si]))
end
if tonumber(ARGV[si + 3] or '0') > 0 then
  count_day(KEYS[sk + 1], ARGV[si + 3], 0, tonumber(ARGV[si + 1]), tonumber(ARGV[si + 2]), tonumber(ARGV[si + 4]))
end
if tonumber(ARGV[si + 5] or '0') == 1 then
  -- The pool's account: its tokens settled, its lease freed.
  local p = si + 6
  local a = {key = KEYS[sk + 2], lkey = KEYS[sk + 3],
    cfg = {tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5]), tonumber(ARGV[p + 6])}}
  local din, dout = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  if din ~= 0 or dout ~= 0 then
    acct_give(a, {0, din + dout, din, dout}, now)
    acct_flush(a.key, a.s)
  end
  if tonumber(ARGV[p + 7]) > 0 then redis.call('ZREM', a.lkey, ARGV[p]) end
end
return spent_after
`

// redisTicket is an admitted request's hold on the shared store.
type redisTicket struct {
	rs       *redisStore
	keys     []string // bucket keys, then lease keys, then the budget's
	nb       int
	limits   []int64
	dims     []dimension
	leaseIDs []string
	// With a budget: the worst case reserved, when the budget's hash
	// expires (a day after its period), and when its period ends (unix
	// seconds).
	budget                    bool
	worst, expireAt, resetsAt int64
	zone                      string
	// The shared upstream's request bucket, which every retry charges.
	upRPMKey string
	upRPM    int64
	// The zone's and the key's key prefixes, and the pool account that
	// serves the request (nil: no pool).
	base, keyBase string
	acct          *redisAcct
	day           int64 // the utcDay of the admission, whose usage is keys' last
}

// chargeRetry counts a retry as one more call on the shared upstream's
// request bucket in Redis (debt allowed), as in process: its tokens are
// the ones already reserved.
func (rt *redisTicket) chargeRetry() {
	if rt.acct != nil {
		rt.poolChargeRetry()
		return
	}
	if rt.upRPM <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), rt.rs.timeout)
	defer cancel()
	if err := settleScript.Run(ctx, rt.rs.client, []string{rt.upRPMKey}, 1, 0, rt.upRPM, "-1").Err(); err != nil {
		rt.rs.warn("charging a retry in redis failed", err)
	}
}

// admit decides a request on Redis. The error is a store failure.
func (rs *redisStore) admit(ctx context.Context, zoneName string, q ask) (ticket, decision, error) {
	base := rs.zoneBase(zoneName)
	// Room for every bucket (3 scopes × 4 kinds), the 2 lease sets, the
	// budget and the counters: the slices are allocated once.
	uses := make([]use, 0, 12)
	keys := make([]string, 0, 12+2+3)
	add := func(prefix string, lim Limits, sc scope) {
		for _, b := range [...]struct {
			name  string
			limit int64
			need  float64
			dim   dimension
		}{{"rpm", lim.RPM, 1, dimRequests}, {"tpm", lim.TPM, q.d.in + q.d.out, dimTokens}, {"itpm", lim.ITPM, q.d.in, dimInput}, {"otpm", lim.OTPM, q.d.out, dimOutput}} {
			if b.limit > 0 {
				uses = append(uses, use{limit: b.limit, need: b.need, dim: b.dim, scope: sc})
				keys = append(keys, prefix+b.name)
			}
		}
	}
	keyBase := base + q.kh.id() + ":"
	add(keyBase, q.lim, scopeKey)
	if q.d.model != nil {
		add(keyBase+"m:"+q.d.model.Name+":", q.d.model.Limits, scopeModel)
	}
	up := q.unnamedUpstream()
	add(base+"upstream:", up, scopeUpstream)
	nb := len(keys)
	// Room for the buckets', the 2 lease sets', the budget's, the
	// counters' and the day's arguments.
	args := make([]any, 2, 2+2*nb+3*2+4+2)
	args[0], args[1] = nb, 0
	for _, u := range uses {
		args = append(args, u.limit, strconv.FormatFloat(math.Ceil(u.need), 'f', -1, 64))
	}
	var leaseLimits []int64
	var leaseScopes []scope
	var leaseIDs []string
	for _, l := range [...]struct {
		key   string
		limit int64
		sc    scope
	}{{keyBase + "leases", q.lim.Concurrent, scopeKey}, {base + "upstream:leases", up.Concurrent, scopeUpstream}} {
		if l.limit > 0 {
			id := rs.instance + ":" + strconv.FormatUint(rs.leaseSeq.Add(1), 10)
			keys = append(keys, l.key)
			leaseLimits = append(leaseLimits, l.limit)
			leaseScopes = append(leaseScopes, l.sc)
			leaseIDs = append(leaseIDs, id)
			args = append(args, l.limit, id, leaseTTL.Microseconds())
		}
	}
	args[1] = len(leaseIDs)
	var worst, expireAt int64
	var resetsAt time.Time
	hasBudget := q.spend != nil && q.spend.b != nil
	if hasBudget {
		b := q.spend.b
		start := b.period.start(now())
		resetsAt = b.period.next(start)
		worst = q.spend.worst(q.d.in, q.d.out)
		expireAt = resetsAt.Add(24 * time.Hour).UnixMilli()
		keys = append(keys, spendKey(base, q.kh.id(), start))
		args = append(args, 1, b.nano, worst, expireAt)
	} else {
		args = append(args, 0)
	}
	keys = append(keys, keyBase+"stats") // the key's counters
	args = append(args, statsTTLArg)
	day := utcDay(now().UnixNano())
	keys = append(keys, dayKey(keyBase, day)) // and its usage today
	args = append(args, dayExpireAt(day))
	ownKeys, ownArgs := len(keys), len(args)
	pool := isPool(q.accts)
	if pool {
		keys = poolKeys(keys, base, keyBase, q.accts)
		args = append(args, len(q.accts), strconv.FormatFloat(math.Ceil(q.d.in), 'f', -1, 64), strconv.FormatFloat(math.Ceil(q.d.out), 'f', -1, 64),
			b2i(q.learn), rs.instance+":"+strconv.FormatUint(rs.leaseSeq.Add(1), 10), leaseTTL.Microseconds())
		args = poolArgs(args, q.accts)
	}

	reply, err := rs.batch.run(admitScript, keys, args)
	if err != nil {
		return ticket{}, decision{}, err
	}
	res, isSlice := reply.([]any)
	if !isSlice {
		return ticket{}, decision{}, fmt.Errorf("store redis: unexpected reply %T", reply)
	}
	hasPool := pool && len(res) == 6+nb+poolReplyLen // the budget's refusal has no pool part
	overBudget := len(res) == 7+nb                   // it has what is reserved instead
	if len(res) != 6+nb && !hasPool && !overBudget {
		return ticket{}, decision{}, fmt.Errorf("store redis: unexpected reply of %d values", len(res))
	}
	var chosen int64
	if hasPool {
		chosen, _ = res[6+nb].(int64)
	}
	spent, _ := strconv.ParseFloat(fmt.Sprint(res[5+nb]), 64)
	ok, _ := res[0].(int64)
	never, _ := res[1].(int64)
	blocking, _ := res[3].(int64)
	full, _ := res[4].(int64)
	levels := make([]float64, nb)
	for i := range levels {
		if levels[i], err = strconv.ParseFloat(fmt.Sprint(res[5+i]), 64); err != nil {
			return ticket{}, decision{}, fmt.Errorf("store redis: unexpected level %v", res[5+i])
		}
	}
	var dec decision
	for i, u := range uses {
		b := bucket{level: levels[i], at: 1}
		dec.qs.considerUse(&b, u.limit, u.dim)
	}
	switch {
	case ok == 1:
		dec.ok = true
		rt := &redisTicket{rs: rs, keys: keys[:ownKeys:ownKeys], nb: nb, leaseIDs: leaseIDs, budget: hasBudget, worst: worst, expireAt: expireAt, resetsAt: resetsAt.Unix(), zone: zoneName,
			upRPMKey: base + "upstream:rpm", upRPM: up.RPM, base: base, keyBase: keyBase, day: day}
		rt.limits, rt.dims = make([]int64, len(uses)), make([]dimension, len(uses))
		for i, u := range uses {
			rt.limits[i], rt.dims[i] = u.limit, u.dim
		}
		t := ticket{h: sharedHold{rt}, a: q, debited: true}
		if pool {
			if chosen < 1 || int(chosen) > len(q.accts) {
				return ticket{}, decision{}, fmt.Errorf("store redis: admitted without an account (%v)", res[6+nb])
			}
			rt.acct = &redisAcct{accts: q.accts, idx: int(chosen) - 1, lease: args[ownArgs+4].(string)}
			rt.setSent(res[7+nb : 13+nb])
			t.acfg = rt.acctCfg()
		}
		return t, dec, nil
	case blocking == -1:
		dec.overBudget, dec.never = true, true
		dec.spent, dec.worst, dec.resetsAt = int64(spent), worst, resetsAt.Unix()
		if overBudget {
			r, _ := strconv.ParseFloat(fmt.Sprint(res[6+nb]), 64)
			dec.reserved = int64(r)
		}
	case full > 0:
		dec.verdict = verdict{wait: time.Second, blocking: use{limit: leaseLimits[full-1], need: 1, dim: dimConcurrency, scope: leaseScopes[full-1]}}
	case hasPool && never == 0 && blocking == 0:
		// The key's own quota let it through; no account of the pool can.
		if dec.verdict, err = poolVerdict(res[13+nb:], q.d); err != nil {
			return ticket{}, decision{}, err
		}
	case blocking > 0:
		u := uses[blocking-1]
		dec.verdict = verdict{never: never == 1, wait: durationFromTokens(u.limit, u.need-levels[blocking-1]), blocking: u, available: floorNonNeg(levels[blocking-1])}
	}
	return ticket{}, dec, nil
}

// finish settles the request's buckets in Redis and releases its leases;
// with a budget, the worst case reserved becomes what the request cost.
// It returns, when the budget was settled, the key's spend in the period
// after this cost was added, and the cost.
func (rt *redisTicket) finish(d demand, sa *spendAsk, u *usage, refund bool) (spent, cost int64, ok bool) {
	var dIn, dOut float64
	switch {
	case refund:
		dIn, dOut = d.in, d.out
	case u != nil:
		dIn, dOut = d.in-float64(u.Input), d.out-float64(u.Output)
	}
	args := make([]any, 2, 2+2*len(rt.limits)+len(rt.leaseIDs)+9)
	args[0], args[1] = rt.nb, len(rt.leaseIDs)
	for i, lim := range rt.limits {
		var delta float64
		switch rt.dims[i] {
		case dimTokens:
			delta = dIn + dOut
		case dimInput:
			delta = dIn
		case dimOutput:
			delta = dOut
		}
		args = append(args, lim, strconv.FormatFloat(delta, 'f', -1, 64))
	}
	for _, id := range rt.leaseIDs {
		args = append(args, id)
	}
	budgetArgs := false
	if sa != nil {
		switch {
		case refund:
		case u != nil:
			cost = sa.cost(*u)
		case rt.budget:
			cost = rt.worst
		default:
			cost = sa.worst(d.in, d.out)
		}
		if cost > 0 {
			metricCost.WithLabelValues(rt.zone, sa.label).Add(usd(cost))
		}
		if rt.budget {
			args = append(args, 1, rt.worst, cost, rt.expireAt)
			budgetArgs = true
		}
	}
	if !budgetArgs {
		args = append(args, 0)
	}
	c := countedTokens(&d, u, refund)
	day := utcDay(now().UnixNano()) // tokens and cost count on the day they settle
	args = append(args, statsTTLArg, c.in, c.out, dayExpireAt(day), cost)
	keys := rt.keys
	if day != rt.day {
		keys = append(keys[:len(keys)-1:len(keys)-1], dayKey(rt.keyBase, day))
	}
	if rt.acct != nil {
		keys, args = rt.poolSettle(keys, args, dIn, dOut)
	}
	res, err := rt.rs.batch.run(settleScript, keys, args)
	if err != nil {
		rt.rs.warn("settling in redis failed; leases expire on their own", err)
		return 0, 0, false
	}
	spent, ok = res.(int64)
	return spent, cost, ok && budgetArgs
}
