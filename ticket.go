package llmratelimit

import (
	"net/http"
	"time"
)

// ticket is an admitted (or dry-run-forwarded) request's hold on its key
// and on the upstream quota: what it reserved, and the concurrency slots it
// must give back.
type ticket struct {
	h       hold // where the reservation lives; nil: nothing is held
	z       *zone
	s       *shard
	ks      *keyState
	mb      *limitBuckets // key × model buckets, or nil
	a       ask
	acct    *account    // the account serving the current attempt, or nil
	acfg    *accountCfg // its config
	sent    sent        // the current attempt, for what its answer says
	debited bool        // false for a request that dry_run let through
	done    bool        // finished: finish does nothing more
	sp      *keySpend   // the key's spend under a budget, or nil
	worst   int64       // the worst-case cost reserved on sp, nano-dollars
}

// keyLimits is the key's limits in force: its tier's, with what its
// provider's headers taught applied when the key itself went upstream.
// The caller holds the key's shard lock.
func (t *ticket) keyLimits(nowNs int64, scratch *Limits) *Limits {
	if !t.a.learnKey {
		return &t.a.lim // by pointer: copies of a Limits stall on store forwarding
	}
	t.ks.learned.rise(nowNs)
	*scratch = t.ks.learned.limits(t.a.lim)
	return scratch
}

// finish settles a ticket and gives its slots back, once: later calls do
// nothing. With u != nil the token buckets are settled to the actual usage
// (a refund or a late charge, which may leave debt); with refund the whole
// token reservation goes back (the request still counts); with neither the
// reservation stands. Waiters of the zone are then told that capacity may
// have come back.
func (t *ticket) finish(nowNs int64, u *usage, refund bool) {
	if t.done {
		return
	}
	t.done = true
	if !refund {
		t.a.d.calibrateModel(u)
	}
	if t.h == nil {
		return // nothing was taken (a dry_run request past max_keys)
	}
	t.h.settle(t, nowNs, u, refund)
}

func (t *ticket) settle(nowNs int64, u *usage, refund bool) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if t.acct != nil {
		t.z.upMu.Lock()
		defer t.z.upMu.Unlock()
		t.acct.inflight--
	}
	t.ks.inflight--
	c := countedTokens(&t.a.d, u, refund)
	t.ks.stats.finished(nowNs, c.in, c.out)
	if !refund {
		t.a.d.calibrateKey(u, &t.ks.stats.calib)
	}
	var cost int64
	if t.a.spend != nil && t.debited {
		cost = t.z.settleCost(t, nowNs, u, refund)
	}
	day := dayOf(nowNs) // key_info's usage today, and the usage for billing
	t.ks.stats.today.settled(day, c.in, c.out, cost)
	if t.z.use.on.Load() {
		t.countUsage(day, &c, cost)
	}
	var learned Limits
	lim := t.keyLimits(nowNs, &learned)
	var dIn, dOut float64 // tokens to give back (negative: to take)
	switch {
	case refund:
		dIn, dOut = t.a.d.in, t.a.d.out
	case u != nil:
		dIn, dOut = t.a.d.in-float64(u.Input), t.a.d.out-float64(u.Output)
	}
	if t.debited && (refund || u != nil) {
		t.ks.limitBuckets.settle(lim, nowNs, dIn, dOut)
		if t.mb != nil {
			t.mb.settle(&t.a.d.model.Limits, nowNs, dIn, dOut)
		}
		if t.acct != nil {
			var learnedUp Limits
			t.acct.settle(t.acct.limitsOf(&t.acfg.lim, &learnedUp), nowNs, dIn, dOut)
		}
	}
	// The reservation (settled or standing) decides when the key is idle.
	var ml *Model
	if t.mb != nil {
		ml = t.a.d.model
	}
	t.ks.touch(lim, t.mb, ml)
}

// chargeRetry counts one more upstream call against the upstream's request
// bucket: a retry is a new call. Its tokens are the ones already reserved.
func (t *ticket) chargeRetry(nowNs int64) {
	if t.h != nil {
		t.h.chargeRetry(t, nowNs)
	}
}

// learn takes what an attempt's answer said about its quota (its
// rate-limit headers, a 429) into the store that holds the request.
func (t *ticket) learn(nowNs int64, status int, h http.Header) {
	if t.h != nil && t.a.learn {
		t.h.learn(t, nowNs, status, h)
	}
}

// coolDown puts the ticket's pool account in cooldown for cool after it
// answered 429 or 529, without moving the request (its answer goes to the
// client as it is).
func (t *ticket) coolDown(nowNs int64, cool time.Duration) {
	if t.h != nil {
		t.h.coolDown(t, nowNs, cool)
	}
}

// failover cools the ticket's pool account down for cool and moves the
// request to another account that can take it now; false when none can
// (the request stays where it is) or the request has no pool account.
func (t *ticket) failover(nowNs int64, cool time.Duration) bool {
	return t.h != nil && t.h.failover(t, nowNs, cool)
}

// chargeRetryLocal is chargeRetry on the zone's own account buckets.
func (t *ticket) chargeRetryLocal(nowNs int64) {
	if t.acct == nil {
		return
	}
	t.z.upMu.Lock()
	t.acct.calls++
	if lim := t.acct.limits(t.acfg.lim); t.debited && lim.RPM > 0 {
		t.acct.rpm.add(nowNs, lim.RPM, -1)
		t.acct.learned.count(1, demand{})
	}
	t.sent = t.acct.learned.snapshot(nowNs)
	t.z.upMu.Unlock()
}

// touch records when the key's buckets will all be full again, for the
// sweeper.
func (ks *keyState) touch(lim *Limits, mb *limitBuckets, m *Model) {
	idle := ks.limitBuckets.fullAt(lim)
	if mb != nil {
		if t := mb.fullAt(&m.Limits); t > idle {
			idle = t
		}
	}
	if idle > ks.idleAt {
		ks.idleAt = idle
	}
}
