package llmratelimit

import (
	"math"
	"time"
)

// bucket is a token bucket for one per-minute limit. Its capacity is the
// limit and it refills continuously at limit/60 per second, so a bucket left
// alone is full again one minute after it was empty. It starts full.
//
// A bucket stores only its level and the time of that level; the limit is
// passed in on every call, so a config reload that changes a limit applies
// to the live level at once (a level above a lowered capacity is clamped).
// The level may go negative: settling a request that used more than it
// reserved puts the bucket into debt, which refill pays off first.
//
// bucket is not safe for concurrent use; the key's shard lock guards it.
type bucket struct {
	level float64 // tokens available at `at`
	at    int64   // unix nanoseconds of level; 0 = never used, i.e. full
}

// nanosPerMinute converts a per-minute limit into a per-nanosecond rate.
const nanosPerMinute = float64(time.Minute)

// maxDuration caps every wait computed from tokens, so that a bucket in
// deep debt gives a very long wait rather than an overflow (a float too
// large for int64 converts to a negative Duration on amd64). About 146
// years: far past any retry, and still addable to a unix-nanosecond time.
const maxDuration = time.Duration(1 << 62)

// The two conversions between tokens and time, as in x/time/rate. Every
// refill and every wait goes through them.

// durationFromTokens is how long a bucket of this limit takes to refill n
// tokens, rounded up, capped at maxDuration; 0 for n <= 0.
func durationFromTokens(limit int64, n float64) time.Duration {
	if !(n > 0) || limit <= 0 {
		return 0
	}
	ns := math.Ceil(n * nanosPerMinute / float64(limit))
	if !(ns < float64(maxDuration)) {
		return maxDuration
	}
	return time.Duration(ns)
}

// tokensFromDuration is how many tokens a bucket of this limit refills in
// d.
func tokensFromDuration(limit int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(d) * float64(limit) / nanosPerMinute
}

// advance refills the bucket up to nowNs and returns its level.
func (b *bucket) advance(nowNs int64, limit int64) float64 {
	capacity := float64(limit)
	if b.at == 0 {
		b.level, b.at = capacity, nowNs
		return b.level
	}
	if nowNs > b.at {
		b.level += tokensFromDuration(limit, time.Duration(nowNs-b.at))
		b.at = nowNs
	}
	if b.level > capacity {
		b.level = capacity
	}
	return b.level
}

// add puts n tokens back (n > 0, a refund) or takes them (n < 0, a late
// charge that may leave debt). The level never passes the capacity.
func (b *bucket) add(nowNs int64, limit int64, n float64) {
	b.advance(nowNs, limit)
	b.level = math.Min(b.level+n, float64(limit))
}

// untilFull is the time until the bucket is full again (after advance).
func (b *bucket) untilFull(limit int64) time.Duration {
	return durationFromTokens(limit, float64(limit)-b.level)
}

// fullAt is the unix-nanosecond time at which the bucket is full again; 0
// for a bucket never used.
func (b *bucket) fullAt(limit int64) int64 {
	if limit <= 0 || b.at == 0 {
		return 0
	}
	return b.at + int64(b.untilFull(limit))
}

// dimension is the kind of a limit.
type dimension uint8

const (
	dimRequests dimension = iota
	dimTokens
	dimInput
	dimOutput
	dimConcurrency
	dimKeys     // the zone's max_keys
	dimCooldown // every account that serves the request is cooling down
	dimCount    // how many dimensions there are
)

// scope says whose bucket a limit belongs to.
type scope uint8

const (
	scopeKey scope = iota
	scopeModel
	scopeUpstream // the zone's shared upstream quota
)

// use is one bucket that a request debits in an admission.
type use struct {
	b     *bucket
	limit int64
	need  float64
	dim   dimension
	scope scope
}

// verdict is the outcome of an admission over several buckets.
type verdict struct {
	ok bool
	// never: the need exceeds a bucket's capacity; waiting cannot help.
	never bool
	// wait until every bucket could serve the request.
	wait time.Duration
	// blocking is the bucket that decided a rejection: the one with the
	// longest wait, or the one that can never fit.
	blocking use
	// available in the blocking bucket, rounded down, before the decision.
	available int64
}

// admission is an all-or-nothing debit over the buckets that apply to one
// request. It is built on the stack and used under the key's lock.
type admission struct {
	uses [12]use
	n    int
}

func (a *admission) add(b *bucket, limit int64, need float64, d dimension, s scope) {
	if limit <= 0 || a.n == len(a.uses) {
		return
	}
	a.uses[a.n] = use{b: b, limit: limit, need: need, dim: d, scope: s}
	a.n++
}

// try debits every bucket if each can serve its need now; otherwise it
// debits none and reports the wait and the blocking bucket.
func (a *admission) try(nowNs int64) (v verdict) {
	a.tryInto(nowNs, &v)
	return v
}

// tryInto is try writing its verdict into v.
func (a *admission) tryInto(nowNs int64, v *verdict) {
	if a.checkInto(nowNs, v); v.ok {
		a.debit()
	}
}

// concurrencyFull is the verdict when a concurrency cap is reached: the
// buckets are brought up to date for the headers, and the caller is told
// to come back in a second.
func (a *admission) concurrencyFull(nowNs int64, limit int64, sc scope) verdict {
	for i := 0; i < a.n; i++ {
		a.uses[i].b.advance(nowNs, a.uses[i].limit)
	}
	return verdict{wait: time.Second, blocking: use{limit: limit, need: 1, dim: dimConcurrency, scope: sc}}
}

// check decides without debiting: ok when every bucket can serve its need
// now, else the wait and the blocking bucket.
func (a *admission) check(nowNs int64) (v verdict) {
	a.checkInto(nowNs, &v)
	return v
}

// checkInto is check writing its verdict into v.
func (a *admission) checkInto(nowNs int64, v *verdict) {
	*v = verdict{}
	for i := 0; i < a.n; i++ {
		u := &a.uses[i]
		level := u.b.advance(nowNs, u.limit)
		if u.need > float64(u.limit) {
			if !v.never {
				*v = verdict{never: true, blocking: *u, available: floorNonNeg(level)}
			}
			continue
		}
		if level >= u.need || v.never {
			continue
		}
		if w := durationFromTokens(u.limit, u.need-level); w > v.wait {
			v.wait, v.blocking, v.available = w, *u, floorNonNeg(level)
		}
	}
	if v.never || v.wait > 0 {
		if v.never {
			v.wait = 0
		}
		return
	}
	v.ok = true
}

// clampOutput is the largest output, at most out and at least minOut,
// that the token buckets can serve now with the input in: ok is false when
// a bucket that the output does not change (requests, input tokens) is the
// one that blocks, or when less than minOut fits. With ok, the needs of
// the tokens and output buckets are set to it.
func (a *admission) clampOutput(nowNs int64, in, out, minOut float64) (float64, bool) {
	fit := out
	for i := 0; i < a.n; i++ {
		u := &a.uses[i]
		level := min(u.b.advance(nowNs, u.limit), float64(u.limit))
		switch u.dim {
		case dimTokens:
			fit = min(fit, level-in)
		case dimOutput:
			fit = min(fit, level)
		default:
			if level < u.need || u.need > float64(u.limit) {
				return 0, false
			}
		}
	}
	fit = math.Floor(fit)
	if fit < minOut {
		return 0, false
	}
	for i := 0; i < a.n; i++ {
		switch u := &a.uses[i]; u.dim {
		case dimTokens:
			u.need = in + fit
		case dimOutput:
			u.need = fit
		}
	}
	return fit, true
}

// limitBuckets are the per-minute buckets of one scope (a key, a key ×
// model, the upstream account).
type limitBuckets struct {
	rpm, tpm, itpm, otpm bucket
}

// admitInto adds the buckets of lb that lim limits to an admission, with
// what the demand needs of each.
func (lb *limitBuckets) admitInto(a *admission, lim *Limits, d *demand, sc scope) {
	a.add(&lb.rpm, lim.RPM, 1, dimRequests, sc)
	a.add(&lb.tpm, lim.TPM, d.in+d.out, dimTokens, sc)
	a.add(&lb.itpm, lim.ITPM, d.in, dimInput, sc)
	a.add(&lb.otpm, lim.OTPM, d.out, dimOutput, sc)
}

// settle gives back dIn input and dOut output tokens (negative: takes
// more, into debt) on the token buckets that lim limits: the other half of
// an admission, once the request's actual usage is known.
func (lb *limitBuckets) settle(lim *Limits, nowNs int64, dIn, dOut float64) {
	if lim.TPM > 0 {
		lb.tpm.add(nowNs, lim.TPM, dIn+dOut)
	}
	if lim.ITPM > 0 {
		lb.itpm.add(nowNs, lim.ITPM, dIn)
	}
	if lim.OTPM > 0 {
		lb.otpm.add(nowNs, lim.OTPM, dOut)
	}
}

// fullAt is when every bucket of lb is full again (unix ns).
func (lb *limitBuckets) fullAt(lim *Limits) int64 {
	return max(lb.rpm.fullAt(lim.RPM), lb.tpm.fullAt(lim.TPM), lb.itpm.fullAt(lim.ITPM), lb.otpm.fullAt(lim.OTPM))
}

// floorNonNeg rounds a level down for display; debt shows as 0.
func floorNonNeg(x float64) int64 {
	if x <= 0 {
		return 0
	}
	return int64(x)
}

// quota is what the x-ratelimit-* headers say about one kind of limit: the
// most constraining bucket among those that apply.
type quota struct {
	set   bool
	limit int64
	level float64 // the bucket's level; remaining and reset follow from it
}

// remaining is the bucket's level rounded down, never negative.
func (q quota) remaining() int64 { return floorNonNeg(q.level) }

// reset is the time until the bucket is full again.
func (q quota) reset() time.Duration { return durationFromTokens(q.limit, float64(q.limit)-q.level) }

// consider keeps the bucket with the least remaining. Only the level is
// kept: remaining and reset are worked out when the headers are written.
func (q *quota) consider(b *bucket, limit int64) {
	if q.set && b.level >= q.level {
		return
	}
	*q = quota{set: true, limit: limit, level: b.level}
}

// quotas reports the requests and tokens headers from the uses of an
// admission, as the buckets stand now.
func (a *admission) quotas() (req, tok quota) {
	for i := 0; i < a.n; i++ {
		u := &a.uses[i]
		if u.dim == dimRequests {
			req.consider(u.b, u.limit)
		} else {
			tok.consider(u.b, u.limit)
		}
	}
	return req, tok
}

// quotaSet is what the rate-limit headers of one response say: requests
// and tokens (the most constraining token bucket of any kind), and each
// kind of token bucket on its own; each dialect's setQuotaHeaders writes
// the ones its header family has.
type quotaSet struct {
	req, tok, tpm, itpm, otpm quota
}

// considerUse adds a bucket to the quota of its kind (and to tok).
func (qs *quotaSet) considerUse(b *bucket, limit int64, d dimension) {
	switch d {
	case dimRequests:
		qs.req.consider(b, limit)
		return
	case dimTokens:
		qs.tpm.consider(b, limit)
	case dimInput:
		qs.itpm.consider(b, limit)
	case dimOutput:
		qs.otpm.consider(b, limit)
	}
	qs.tok.consider(b, limit)
}

// quotaSet is every header quota of an admission's uses, as the buckets
// stand now.
func (a *admission) quotaSet(qs *quotaSet) {
	*qs = quotaSet{}
	for i := 0; i < a.n; i++ {
		u := &a.uses[i]
		qs.considerUse(u.b, u.limit, u.dim)
	}
}

// debit takes every bucket's need (after a check that said ok).
func (a *admission) debit() {
	for i := 0; i < a.n; i++ {
		a.uses[i].b.level -= a.uses[i].need
	}
}

// durationNs is a span of unix nanoseconds as a Duration.
func durationNs(ns int64) time.Duration { return time.Duration(ns) }
