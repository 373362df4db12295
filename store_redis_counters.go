package llmratelimit

import (
	"math"
	"strconv"
	"time"
)

// A shared key's counters live in Redis, so that every instance's stats
// show the same figures: one hash per key, {prefix + zone}:<key_id>:stats,
// in the zone's hash slot, written by the admission script (a request
// admitted) and the settle script (its tokens), never by a round trip of
// their own. Its fields:
//
//	n, i, o      requests, input tokens, output tokens since the hash was
//	             created (it expires statsTTL after its last write)
//	bK, rK, tK   ring slot K (0..statsSlots-1): the slot's number (Redis
//	             time in µs / statsSlotUs), its requests and its tokens
//
// The last minute is the slots of the last minute, with the oldest slot
// weighted by the share of it still inside the minute: a sliding window
// within one slot's width, in a fixed 3 + 3×statsSlots fields.
const (
	statsSlotUs = 5_000_000
	statsSlots  = 60_000_000/statsSlotUs + 1
)

// statsTTL is how long a key's shared counters outlive its last request:
// longer than any instance keeps showing a key it no longer decides
// (staleSeen), and than a request may be in flight (leaseTTL), so that a
// settle does not find them gone.
const statsTTL = staleSeen + 5*time.Minute

// statsTTLArg is statsTTL in milliseconds, boxed once for the scripts'
// arguments.
var statsTTLArg any = statsTTL.Milliseconds()

// luaCounters is the counting that both scripts share, after luaBuckets:
// count_key adds req requests and tin + tout tokens to a key's counters
// at now (µs), resetting a ring slot that still holds an older slot's
// counts, and makes the hash live at least ttl ms more (setting its TTL
// only when it would expire sooner, as store_level does, its expiry in
// field x).
var luaCounters = `
local CB, CR, CT = {` + luaNames("b") + `}, {` + luaNames("r") + `}, {` + luaNames("t") + `}
local function count_key(key, now, req, tin, tout, ttl)
  local slot = math.floor(now / ` + strconv.Itoa(statsSlotUs) + `)
  local k = slot % ` + strconv.Itoa(statsSlots) + ` + 1
  local tok = tin + tout
  local h = redis.call('HMGET', key, CB[k], 'x')
  if tonumber(h[1]) == slot then
    if req ~= 0 then redis.call('HINCRBY', key, CR[k], req) end
    if tok ~= 0 then redis.call('HINCRBY', key, CT[k], tok) end
  elseif req ~= 0 or tok ~= 0 then
    redis.call('HSET', key, CB[k], tostring(slot), CR[k], req, CT[k], tok)
  end
  if req ~= 0 then redis.call('HINCRBY', key, 'n', req) end
  if tin ~= 0 then redis.call('HINCRBY', key, 'i', tin) end
  if tout ~= 0 then redis.call('HINCRBY', key, 'o', tout) end
  if (tonumber(h[2]) or 0) < now + ttl * 1000 then
    ttl = ttl + ` + strconv.FormatInt(luaSlackMs, 10) + `
    redis.call('HSET', key, 'x', tostring(now + ttl * 1000))
    redis.call('PEXPIRE', key, ttl)
  end
end
-- count_day adds to a key's usage of one UTC day (dayKey): field x holds
-- the hash's expiry, set once, when the hash is made.
local function count_day(key, exp, req, tin, tout, cost)
  if redis.call('HSETNX', key, 'x', exp) == 1 then redis.call('PEXPIREAT', key, exp) end
  if req ~= 0 then redis.call('HINCRBY', key, 'n', req) end
  if tin ~= 0 then redis.call('HINCRBY', key, 'i', tin) end
  if tout ~= 0 then redis.call('HINCRBY', key, 'o', tout) end
  if cost ~= 0 then redis.call('HINCRBY', key, 'c', cost) end
end
`

// A shared key's usage of each UTC day (key_info's usage_today) is a hash
// of its own, {prefix + zone}:<key_id>:day:<utcDay>, with n, i, o and c:
// the requests admitted, the input and output tokens and the cost
// (nano-dollars) settled that day. The day is the package clock's, as a
// budget's period is. The hash expires dayKeySlack after its day ends.
const dayKeySlack = time.Hour

// dayKey is the hash of a key's usage on day (utcDay).
func dayKey(keyBase string, day int64) string {
	return keyBase + "day:" + strconv.FormatInt(day, 10)
}

// dayExpireAt is when the hash of day expires, in unix ms.
func dayExpireAt(day int64) int64 {
	return (day+1)*nsPerDay/int64(time.Millisecond) + dayKeySlack.Milliseconds()
}

// spendKey is the hash of a key's budget in the period that starts at
// start: {s: spent, r: reserved}, in nano-dollars.
func spendKey(base, keyID string, start time.Time) string {
	return base + "spend:" + keyID + ":" + strconv.FormatInt(start.Unix(), 10)
}

// luaNames is the ring's field names with prefix p, slot 0 first, as a
// Lua table's items.
func luaNames(p string) string {
	var b []byte
	for k := range statsSlots {
		if k > 0 {
			b = append(b, ", "...)
		}
		b = append(b, "'"+p+strconv.Itoa(k)+"'"...)
	}
	return string(b)
}

// counterFields are the hash's fields in the order sharedCounters reads
// them: n, i, o, then every slot's b, r and t.
var counterFields = func() []string {
	f := []string{"n", "i", "o"}
	for k := range statsSlots {
		s := strconv.Itoa(k)
		f = append(f, "b"+s, "r"+s, "t"+s)
	}
	return f
}()

// sharedCounters are a key's counters as Redis holds them.
type sharedCounters struct {
	requests, inTokens, outTokens int64
	reqLastMinute, tokLastMinute  int64
}

// readCounters turns the values of counterFields (HMGET: strings, or nil
// for absent fields) into the counters at nowUs, Redis's time in µs.
func readCounters(vals []any, nowUs int64) sharedCounters {
	num := func(i int) int64 {
		if i >= len(vals) {
			return 0
		}
		s, _ := vals[i].(string)
		n, _ := strconv.ParseInt(s, 10, 64)
		return n
	}
	c := sharedCounters{requests: num(0), inTokens: num(1), outTokens: num(2)}
	cur := nowUs / statsSlotUs
	inOldest := 1 - float64(nowUs%statsSlotUs)/statsSlotUs // the oldest slot's share still in the minute
	var req, tok float64
	for k := range statsSlots {
		if 3+3*k >= len(vals) || vals[3+3*k] == nil {
			continue
		}
		w := 1.0
		switch age := cur - num(3+3*k); {
		case age < 0 || age >= statsSlots:
			continue // a slot of another minute
		case age == statsSlots-1:
			w = inOldest
		}
		req += w * float64(num(4+3*k))
		tok += w * float64(num(5+3*k))
	}
	c.reqLastMinute, c.tokLastMinute = int64(math.Round(req)), int64(math.Round(tok))
	return c
}
