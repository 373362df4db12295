package llmratelimit

import (
	"sync"
	"sync/atomic"
	"time"
)

// Usage for billing (SPEC "Usage for billing (admin API)"): every
// finished request adds to its key's usage of the UTC day it finished in:
// one request, its input tokens (cached ones included), the cached part,
// its output tokens and its cost. The hot path only adds to an
// accumulator under the key's shard lock, which it holds anyway: the
// keyUsage in the key's state, or for a key decided on Redis a small map
// in the shard. The zone's flusher (ledger.go) takes the accumulators every
// ledgerFlush and keeps them with the ledger (billing_store.go: Caddy's
// storage; billing_redis.go: Redis under store redis), where the admin API
// (billing_admin.go) reads them. A crash loses what the flusher had not yet
// taken: at most ledgerFlush of usage, as for spend.

// nsPerDay is a UTC day in nanoseconds: days are counted from 1970-01-01.
const nsPerDay = int64(24 * time.Hour)

// dayOf is the UTC day that holds the instant nowNs (unix ns, after 1970).
func dayOf(nowNs int64) int32 { return int32(nowNs / nsPerDay) }

// dayString is a UTC day as YYYY-MM-DD.
func dayString(day int32) string {
	return time.Unix(int64(day)*86400, 0).UTC().Format(time.DateOnly)
}

// parseDay reads a YYYY-MM-DD date as a UTC day.
func parseDay(s string) (int32, bool) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil || t.Year() < 1970 || t.Year() > 9999 {
		return 0, false
	}
	return dayOf(t.UnixNano()), true
}

// keyUsage is what a key's finished requests used since the flusher last
// took it, all on one UTC day. requests is 0 exactly when nothing was
// counted since; an accumulator with counts is on its shard's list once.
type keyUsage struct {
	day      int32 // the UTC day counted
	requests int32 // a flush interval's requests of one key: far below 2^31
	in       int64 // input tokens, cached ones included
	cached   int64 // the part of in read from the provider's prompt cache
	out      int64 // output tokens
	cost     int64 // nano-dollars
}

// usageRef is an accumulator that holds counts, with its key and tier.
type usageRef struct {
	kp   keyPrefix
	tier string
	u    *keyUsage
}

// usageDelta is a key's counts taken from its accumulator.
type usageDelta struct {
	kp   keyPrefix
	tier string
	u    keyUsage
}

// usageShard is a shard's usage waiting for the flusher. Its memory is
// bounded by the keys that finished a request since the last flush.
type usageShard struct {
	dirty []usageRef // the accumulators with counts
	// spilled are counts of a day that ended before the flusher took
	// them (a key busy across midnight).
	spilled []usageDelta
	// shared are the accumulators of keys decided on Redis, which have
	// no keyState here.
	shared map[keyPrefix]*keyUsage
}

// zoneUsage is the zone's usage record: whether finished requests are
// counted (usage_retention is not off), and the book the flusher keeps
// them in.
type zoneUsage struct {
	on   atomic.Bool
	mu   sync.Mutex
	book *usageBook
}

// billedTokens are the tokens a finished request counts in its key's
// usage: the usage its answer reported (all the input read, cached input
// included, and the cached part), none when refunded, else its
// reservation (a stream cut short), as the stats count it.
func billedTokens(d *demand, u *usage, refund bool) (in, cached, out int64) {
	switch {
	case refund:
	case u != nil:
		c := u.clamped()
		in, cached, out = max(c.Read, c.Input), c.Cached, c.Output
	default:
		in, out = int64(d.in), int64(d.out)
	}
	return in, cached, out
}

// count adds one finished request to u, the accumulator of key kp in
// shard s, on the UTC day of nowNs. The caller holds the shard's lock.
func (s *shard) countUsage(kp keyPrefix, tier string, u *keyUsage, nowNs int64, in, cached, out, cost int64) {
	day := dayOf(nowNs)
	switch {
	case u.requests == 0:
		u.day = day
		s.use.dirty = append(s.use.dirty, usageRef{kp: kp, tier: tier, u: u})
	case u.day != day:
		// Midnight passed since the flusher last came: yesterday's counts
		// wait apart, and u (still on the list) counts today.
		s.use.spilled = append(s.use.spilled, usageDelta{kp: kp, tier: tier, u: *u})
		*u = keyUsage{day: day}
	}
	u.requests++
	u.in = satAdd(u.in, in)
	u.cached = satAdd(u.cached, cached)
	u.out = satAdd(u.out, out)
	u.cost = satAdd(u.cost, cost)
}

// countUsage counts a request that settles on the zone's own buckets in
// its key's usage. The caller holds the key's shard lock.
func (t *ticket) countUsage(nowNs int64, u *usage, refund bool, cost int64) {
	in, cached, out := billedTokens(&t.a.d, u, refund)
	t.s.countUsage(t.a.kh.prefix(), t.a.tier, &t.ks.use, nowNs, in, cached, out, cost)
}

// countSharedUsage counts a request settled on Redis in its key's usage,
// under the key's shard lock: such a key has no keyState here.
func (z *zone) countSharedUsage(t *ticket, nowNs int64, u *usage, refund bool, cost int64) {
	if !z.use.on.Load() {
		return
	}
	in, cached, out := billedTokens(&t.a.d, u, refund)
	kp := t.a.kh.prefix()
	s := z.shard(t.a.kh)
	s.mu.Lock()
	ku := s.use.shared[kp]
	if ku == nil {
		if s.use.shared == nil {
			s.use.shared = make(map[keyPrefix]*keyUsage)
		}
		ku = new(keyUsage)
		s.use.shared[kp] = ku
	}
	s.countUsage(kp, t.a.tier, ku, nowNs, in, cached, out, cost)
	s.mu.Unlock()
}

// drain appends the shard's counts to into and empties its accumulators.
// The caller holds the shard's lock.
func (us *usageShard) drain(into []usageDelta) []usageDelta {
	into = append(into, us.spilled...)
	for _, r := range us.dirty {
		into = append(into, usageDelta{kp: r.kp, tier: r.tier, u: *r.u})
		*r.u = keyUsage{}
	}
	// Let go of the states of keys swept since, and of a spike's room.
	clear(us.spilled)
	clear(us.dirty)
	if cap(us.dirty) > 1024 && 4*len(us.dirty) < cap(us.dirty) {
		us.dirty = nil
	}
	us.dirty, us.spilled = us.dirty[:0], us.spilled[:0]
	clear(us.shared)
	return into
}

// drainUsage takes the counts of every shard, one shard lock at a time.
func (z *zone) drainUsage(into []usageDelta) []usageDelta {
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		into = s.use.drain(into)
		s.mu.Unlock()
	}
	return into
}

// bookOf is the zone's usage book, or nil when none was attached.
func (z *zone) bookOf() *usageBook {
	z.use.mu.Lock()
	defer z.use.mu.Unlock()
	return z.use.book
}
