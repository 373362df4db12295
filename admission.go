package llmratelimit

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Admission has two stores: the zone's own buckets in this process, or the
// shared store (Redis) that several gateway instances decide on together.
// The handler and the ticket never ask which: the handler admits through
// its admitter, and an admitted ticket charges its retries and settles
// through its hold.

// admitter decides a request, waiting within max_wait where the store
// queues: it fills t (the request's hold, the zero ticket when nothing is
// held) and dec, and says how long the request actually waited (0 for one
// decided on its first try). An error is the client gone while it waited,
// or errStoreDown.
type admitter interface {
	admit(ctx context.Context, q *ask, t *ticket, dec *decision) (waited time.Duration, err error)
}

// hold is where an admitted request's reservation lives.
type hold interface {
	// chargeRetry counts one more upstream call on the account that
	// serves the request: a retry is a new call, its tokens the ones
	// already reserved.
	chargeRetry(t *ticket, nowNs int64)
	// settle gives back or takes the difference between the reservation
	// and the usage (u; refund: all of it), and releases the request's
	// concurrency slots.
	settle(t *ticket, nowNs int64, u *usage, refund bool)
	// learn takes an attempt's answer (its status and rate-limit
	// headers) into what is learned of the account that served it.
	learn(t *ticket, nowNs int64, status int, h http.Header)
	// coolDown cools the serving pool account down for cool after it
	// answered 429 or 529 (never shortening a cooldown).
	coolDown(t *ticket, nowNs int64, cool time.Duration)
	// failover cools the serving pool account down and moves the request
	// to another that can take it now, charging it there; false: none can.
	failover(t *ticket, nowNs int64, cool time.Duration) bool
}

// localAdmitter admits on the zone's own buckets, queueing fairly within
// max_wait.
type localAdmitter struct{ h *Handler }

func (a localAdmitter) admit(ctx context.Context, q *ask, t *ticket, dec *decision) (time.Duration, error) {
	h := a.h
	return h.zone.admitOrWaitInto(ctx, q, time.Duration(h.MaxWait), h.MaxQueue, h.DryRun, t, dec)
}

// sharedAdmitter admits on the shared store, with its failure policy.
type sharedAdmitter struct{ h *Handler }

func (a sharedAdmitter) admit(ctx context.Context, q *ask, t *ticket, dec *decision) (waited time.Duration, err error) {
	*t, *dec, waited, err = a.h.admitShared(ctx, *q)
	return waited, err
}

// localHold is a reservation on the zone's own buckets.
type localHold struct{}

func (localHold) chargeRetry(t *ticket, nowNs int64) { t.chargeRetryLocal(nowNs) }

func (localHold) settle(t *ticket, nowNs int64, u *usage, refund bool) {
	t.settle(nowNs, u, refund)
	t.z.queue.wake()
}

func (localHold) learn(t *ticket, nowNs int64, status int, h http.Header) {
	t.learnLocal(nowNs, status, h)
}

func (localHold) coolDown(t *ticket, nowNs int64, cool time.Duration) { t.coolDownLocal(nowNs, cool) }

func (localHold) failover(t *ticket, nowNs int64, cool time.Duration) bool {
	return t.failoverLocal(nowNs, cool)
}

// sharedHold is a reservation in the shared store.
type sharedHold struct{ rt *redisTicket }

func (s sharedHold) chargeRetry(*ticket, int64) { s.rt.chargeRetry() }

func (s sharedHold) coolDown(t *ticket, _ int64, cool time.Duration) {
	if s.rt.acct != nil {
		s.rt.move(t, cool, false)
	}
}

func (s sharedHold) failover(t *ticket, _ int64, cool time.Duration) bool {
	return s.rt.acct != nil && s.rt.move(t, cool, true)
}

func (s sharedHold) settle(t *ticket, nowNs int64, u *usage, refund bool) {
	spent, cost, ok := s.rt.finish(t.a.d, t.a.spend, u, refund)
	if b := t.a.spend; ok && len(b.b.alerts) > 0 && b.b.crossed(spent-cost, spent) {
		t.z.alertBudget(budgetCrossing{kh: t.a.kh, tier: t.a.tier, b: b.b, before: spent - cost, after: spent,
			resetsAt: time.Unix(s.rt.resetsAt, 0), shared: true})
	}
	if t.z != nil {
		t.z.countSharedUsage(t, nowNs, u, refund, cost)
	}
}

var errStoreDown = errors.New("the shared store cannot be reached")

// admitShared decides a request on the shared store. A request that does
// not fit waits for the wait Redis computed and asks again, within
// max_wait: no polling in between. waited is the time spent in those
// waits only, not in the calls to Redis: a request admitted on its first
// try waited 0 (outcome allowed, no queue_wait observation). When Redis
// cannot be reached, fail open decides on this instance's own buckets
// (and counts the error), fail closed returns errStoreDown.
func (h *Handler) admitShared(ctx context.Context, q ask) (t ticket, dec decision, waited time.Duration, err error) {
	start, maxWait := now(), time.Duration(h.MaxWait)
	for {
		h.zone.sawShared(&q)
		t, dec, err = h.rs.admit(ctx, h.Zone, q)
		if err != nil {
			if ctx.Err() != nil {
				return ticket{}, decision{}, waited, ctx.Err()
			}
			h.zone.m.storeErrors.Inc()
			h.rs.warn("redis store unreachable: deciding "+map[bool]string{true: "on this instance alone (fail open)", false: "503 (fail closed)"}[h.rs.failOpen], err)
			if !h.rs.failOpen {
				return ticket{}, decision{}, 0, errStoreDown
			}
			t, dec, more, err := h.zone.admitOrWait(ctx, q, maxWait-now().Sub(start), h.MaxQueue, h.DryRun)
			return t, dec, waited + more, err
		}
		t.z = h.zone // its metrics
		if !dec.ok && h.DryRun && isPool(q.accts) {
			t.acfg = q.accts[0] // dry_run forwards what did not fit: to the first account
		}
		// max_wait bounds the whole time spent deciding, round trips included.
		if dec.ok || dec.never || h.DryRun || maxWait <= 0 || now().Sub(start)+dec.wait > maxWait {
			return t, dec, waited, nil
		}
		slept := now()
		err = sleep(ctx, dec.wait)
		waited += now().Sub(slept)
		if err != nil {
			return ticket{}, decision{}, waited, err
		}
	}
}

// Interface guards.
var (
	_ admitter = localAdmitter{}
	_ admitter = sharedAdmitter{}
	_ hold     = localHold{}
	_ hold     = sharedHold{}
)
