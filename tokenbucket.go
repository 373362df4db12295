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

// advance refills the bucket up to now and returns its level.
func (b *bucket) advance(now int64, limit int64) float64 {
	capacity := float64(limit)
	if b.at == 0 {
		b.level, b.at = capacity, now
		return b.level
	}
	if now > b.at {
		b.level += float64(now-b.at) * capacity / nanosPerMinute
		b.at = now
	}
	if b.level > capacity {
		b.level = capacity
	}
	return b.level
}

// add puts n tokens back (n > 0, a refund) or takes them (n < 0, a late
// charge that may leave debt). The level never passes the capacity.
func (b *bucket) add(now int64, limit int64, n float64) {
	b.advance(now, limit)
	b.level = math.Min(b.level+n, float64(limit))
}

// durationFor is how long a bucket of this limit takes to refill n tokens.
func durationFor(limit int64, n float64) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(n * nanosPerMinute / float64(limit)))
}

// untilFull is the time until the bucket is full again (after advance).
func (b *bucket) untilFull(limit int64) time.Duration {
	return durationFor(limit, float64(limit)-b.level)
}

// dimension is the kind of a limit.
type dimension uint8

const (
	dimRequests dimension = iota
	dimTokens
	dimInput
	dimOutput
	dimConcurrency
	dimKeys // the zone's max_keys
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
func (a *admission) try(now int64) verdict {
	v := a.check(now)
	if v.ok {
		for i := 0; i < a.n; i++ {
			a.uses[i].b.level -= a.uses[i].need
		}
	}
	return v
}

// concurrencyFull is the verdict when a concurrency cap is reached: the
// buckets are brought up to date for the headers, and the caller is told
// to come back in a second.
func (a *admission) concurrencyFull(now int64, limit int64, sc scope) verdict {
	for i := 0; i < a.n; i++ {
		a.uses[i].b.advance(now, a.uses[i].limit)
	}
	return verdict{wait: time.Second, blocking: use{limit: limit, need: 1, dim: dimConcurrency, scope: sc}}
}

// check decides without debiting: ok when every bucket can serve its need
// now, else the wait and the blocking bucket.
func (a *admission) check(now int64) verdict {
	var v verdict
	for i := 0; i < a.n; i++ {
		u := &a.uses[i]
		level := u.b.advance(now, u.limit)
		if u.need > float64(u.limit) {
			if !v.never {
				v = verdict{never: true, blocking: *u, available: floorNonNeg(level)}
			}
			continue
		}
		if level >= u.need || v.never {
			continue
		}
		if w := durationFor(u.limit, u.need-level); w > v.wait {
			v.wait, v.blocking, v.available = w, *u, floorNonNeg(level)
		}
	}
	if v.never || v.wait > 0 {
		if v.never {
			v.wait = 0
		}
		return v
	}
	v.ok = true
	return v
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
	set       bool
	limit     int64
	remaining int64
	reset     time.Duration
}

// consider keeps the bucket with the least remaining.
func (q *quota) consider(b *bucket, limit int64) {
	rem := floorNonNeg(b.level)
	if q.set && rem >= q.remaining {
		return
	}
	*q = quota{set: true, limit: limit, remaining: rem, reset: b.untilFull(limit)}
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
