package llmratelimit

import (
	"net/http"
	"time"
)

// ticket is an admitted (or dry-run-forwarded) request's hold on its key
// and on the upstream quota: what it reserved, and the concurrency slots it
// must give back.
//
// All of its methods are in this file. finish, chargeRetry, learn,
// coolDown and failover go through t.h, the hold (admission.go): a
// localHold calls the methods named *Local here and settle, which work on
// the zone's own buckets; a sharedHold works in the shared store.
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

// clampToBuckets lets a request that the token buckets cannot serve at its
// full output reservation through with a smaller one (clamp_max_tokens),
// if its input and clampMin output tokens per choice fit.
func (t *ticket) clampToBuckets(a *admission, dec *decision, nowNs int64) {
	n := max(t.a.choices, 1)
	out, ok := a.clampOutput(nowNs, t.a.d.in, t.a.d.out, float64(t.a.clampMin*n))
	if !ok {
		return
	}
	perChoice := int64(out) / n
	out = float64(perChoice * n)
	a.clampOutput(nowNs, t.a.d.in, out, out) // whole choices
	saved := dec.clamped
	if v := a.try(nowNs); v.ok {
		dec.verdict = v
		t.a.d.out = out
		dec.clamped = perChoice
		return
	}
	dec.clamped = saved
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

// countUsage counts a request that settles on the zone's own buckets in
// its key's usage. The caller holds the key's shard lock.
func (t *ticket) countUsage(day int32, c *counted, cost int64) {
	u := &t.ks.use
	if u.day != day {
		if u.requests != 0 {
			t.s.spill(t.a.kh.prefix(), t.a.tier, u)
		}
		u.day = day
	}
	u.add(c, cost)
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

// learnLocal takes what an attempt's answer said about its quota: into
// its account's state, or, for a key that went upstream itself, the key's.
func (t *ticket) learnLocal(nowNs int64, status int, h http.Header) {
	if !t.a.learn || (t.acct == nil && !t.a.learnKey) || t.s == nil {
		return
	}
	r, ok := rateLimitsOf(h, time.Unix(0, nowNs))
	if !ok && status != http.StatusTooManyRequests {
		return
	}
	// An account's state is guarded by the zone's upMu, a key's by its
	// shard's lock.
	state, lb, cfg, mu := &t.ks.learned, &t.ks.limitBuckets, t.a.lim, &t.s.mu
	if t.acct != nil {
		state, lb, cfg, mu = &t.acct.learned, &t.acct.limitBuckets, t.acfg.lim, &t.z.upMu
	}
	mu.Lock()
	defer mu.Unlock()
	if *state == nil {
		if !ok {
			return // a 429 without headers, before anything was learned
		}
		*state = newLearnedState(nowNs)
	}
	(*state).observe(&r, status, t.sent, lb, cfg, nowNs)
}

// coolDownLocal puts the ticket's pool account in cooldown for cool after
// it answered 429 or 529, without moving the request (its answer goes to
// the client as it is).
func (t *ticket) coolDownLocal(nowNs int64, cool time.Duration) {
	if t.acct == nil || !t.acfg.pool {
		return
	}
	t.z.upMu.Lock()
	defer t.z.upMu.Unlock()
	t.coolLocked(nowNs, cool)
}

// coolLocked counts the 429 and lengthens the account's cooldown to
// nowNs+cool, never shortening it. The caller holds z.upMu.
func (t *ticket) coolLocked(nowNs int64, cool time.Duration) {
	st := t.acct
	st.rateLimited++
	if until := nowNs + int64(min(max(cool, 0), maxDuration)); until > st.cooldownUntil {
		t.z.m.cooldown(t.acfg.name, float64(until-max(st.cooldownUntil, nowNs))/1e9)
		st.cooldownUntil = until
	}
}

// failoverLocal cools the ticket's account down for cool (a later hint may
// lengthen a cooldown, never shorten it) and moves the request to another
// account that can take it now: the failed attempt's tokens go back to the
// first account, whose request still counts, and the new account is
// charged a request and the reservation. false: no other account can take
// it now, and the request stays where it is.
func (t *ticket) failoverLocal(nowNs int64, cool time.Duration) bool {
	if t.acct == nil || !t.acfg.pool {
		return false
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.z.upMu.Lock()
	defer t.z.upMu.Unlock()
	st := t.acct
	t.coolLocked(nowNs, cool)
	var a admission
	ac, next, _ := t.z.chooseAccount(&a, t.a.accts, t.a.d, nil, st, nowNs, !t.debited)
	if next == nil {
		return false
	}
	if t.debited {
		var learned Limits
		st.settle(st.limitsOf(&t.acfg.lim, &learned), nowNs, t.a.d.in, t.a.d.out)
		next.learned.count(1, t.a.d)
	}
	st.inflight--
	next.inflight++
	next.calls++
	t.acct, t.acfg = next, ac
	t.sent = next.learned.snapshot(nowNs)
	t.ks.lastAccount = next
	return true
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
