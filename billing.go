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
// counted since.
type keyUsage struct {
	day      int32 // the UTC day counted
	requests int32 // a flush interval's requests of one key: far below 2^31
	in       int64 // input tokens, cached ones included
	cached   int64 // the part of in read from the provider's prompt cache
	out      int64 // output tokens
	cost     int64 // nano-dollars
}

// usageDelta is a key's counts taken from its accumulator.
type usageDelta struct {
	kp   keyPrefix
	tier string
	u    keyUsage
}

// sharedUsage is the accumulator of a key decided on Redis, which has no
// keyState here.
type sharedUsage struct {
	u    keyUsage
	tier string
}

// usageShard is a shard's usage waiting for the flusher, beside the
// accumulators in its keys' states. Its memory is bounded by the keys
// that finished a request since the last flush.
type usageShard struct {
	// spilled are counts that lost their accumulator before the flusher
	// took them: a day that ended (a key busy across midnight), a key
	// state that the sweeper dropped.
	spilled []usageDelta
	shared  map[keyPrefix]*sharedUsage
}

// zoneUsage is the zone's usage record: whether finished requests are
// counted (usage_retention is not off), and the book the flusher keeps
// them in.
type zoneUsage struct {
	on   atomic.Bool
	mu   sync.Mutex
	book *usageBook
}

// add counts one finished request in u: its counted tokens (all the
// input read, cached input included, and the cached part, as the answer
// reported them; none when refunded; else its reservation, a stream cut
// short) and its cost. The tokens are bounded (countedTokens), so their
// sums cannot overflow; the cost saturates. The caller holds the key's
// shard lock.
func (u *keyUsage) add(c *counted, cost int64) {
	u.requests++
	u.in += c.read
	u.cached += c.cached
	u.out += c.out
	u.cost = satAdd(u.cost, cost)
}

// spill sets aside the counts of u, which leave their accumulator before
// the flusher takes them (midnight passed since it last came, or the
// sweeper drops the key's state), and empties u. The caller holds the
// shard's lock.
func (s *shard) spill(kp keyPrefix, tier string, u *keyUsage) {
	s.use.spilled = append(s.use.spilled, usageDelta{kp: kp, tier: tier, u: *u})
	*u = keyUsage{}
}

// countSharedUsage counts a request settled on Redis in its key's usage,
// under the key's shard lock.
func (z *zone) countSharedUsage(t *ticket, nowNs int64, u *usage, refund bool, cost int64) {
	if !z.use.on.Load() {
		return
	}
	kp := t.a.kh.prefix()
	s := z.shard(t.a.kh)
	s.mu.Lock()
	su := s.use.shared[kp]
	if su == nil {
		if s.use.shared == nil {
			s.use.shared = make(map[keyPrefix]*sharedUsage)
		}
		su = new(sharedUsage)
		s.use.shared[kp] = su
	}
	if day := dayOf(nowNs); su.u.day != day {
		if su.u.requests != 0 {
			s.spill(kp, su.tier, &su.u)
		}
		su.u.day = day
	}
	su.tier = t.a.tier
	c := countedTokens(&t.a.d, u, refund)
	su.u.add(&c, cost)
	s.mu.Unlock()
}

// keepUsage sets aside the counts of a key state the sweeper drops. The
// caller holds the shard's lock.
func (s *shard) keepUsage(kp keyPrefix, ks *keyState) {
	if ks.use.requests != 0 {
		s.spill(kp, ks.stats.tier, &ks.use)
	}
}

// drainUsage appends the shard's counts to into and empties its
// accumulators: a walk over its keys, as the sweeper's. The caller holds
// the shard's lock.
func (s *shard) drainUsage(into []usageDelta) []usageDelta {
	into = append(into, s.use.spilled...)
	clear(s.use.spilled)
	s.use.spilled = s.use.spilled[:0]
	for kp, ks := range s.keys {
		if ks.use.requests != 0 {
			into = append(into, usageDelta{kp: kp, tier: ks.stats.tier, u: ks.use})
			ks.use = keyUsage{}
		}
	}
	for kp, su := range s.use.shared {
		into = append(into, usageDelta{kp: kp, tier: su.tier, u: su.u})
	}
	clear(s.use.shared)
	return into
}

// drainUsage takes the counts of every shard, one shard lock at a time.
func (z *zone) drainUsage(into []usageDelta) []usageDelta {
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		into = s.drainUsage(into)
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
