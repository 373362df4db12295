package llmratelimit

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// waitQueue holds a zone's requests that do not fit now but may wait
// (max_wait). Requests of one key are served first in, first out; across
// keys the capacity is granted round-robin, one request per key with
// waiters in turn, so that a key with 10,000 waiters cannot starve a key
// with one. Nobody polls: after each change the queue computes when its
// next waiter can be served and arms one timer for that moment, and a
// request that finishes (a refund, a freed slot) wakes it at once.
//
// Lock order: queue.mu, then a shard's mu, then the zone's upMu.
type waitQueue struct {
	z    *zone
	mu   sync.Mutex
	keys map[keyHash]*keyWaiters
	ring []*keyWaiters // keys with waiters, in round-robin order
	next int           // the ring position whose turn it is
	n    int           // waiters in all
	// waiting mirrors n for readers without the lock: a finishing request
	// looks at it and takes the lock only when somebody waits.
	waiting atomic.Int64

	timerAt     int64 // unix ns; 0: no timer
	timerCancel context.CancelFunc
	closed      bool
}

// keyWaiters are one key's waiters, oldest first, with the sums of what
// they need, for predicting waits.
type keyWaiters struct {
	kh   keyHash
	lane lane
	list []*waiter
	need [4]float64 // by dimension: requests, tokens, input, output
}

// lane is a waiter's priority on the shared accounts: the interactive
// lane's waiters are granted before the batch lane's.
type lane uint8

const (
	laneInteractive lane = iota
	laneBatch
)

func laneOf(name string) lane {
	if name == "batch" {
		return laneBatch
	}
	return laneInteractive
}

// waiter is a request waiting in the queue. done is closed once it is
// decided: admitted (t, dec) or turned away (dec).
type waiter struct {
	q        ask
	deadline int64 // unix ns: past it, the waiter is turned away
	done     chan struct{}
	t        ticket
	dec      decision
}

func needs(d demand) [4]float64 {
	return [4]float64{1, d.in + d.out, d.in, d.out}
}

// admitOrWait admits a request now, or queues it for up to maxWait when it
// does not fit yet and would fit in time. The decision says why a request
// was turned away; waited is how long it queued.
func (z *zone) admitOrWait(ctx context.Context, q ask, maxWait time.Duration, maxQueue int, dryRun bool) (t ticket, dec decision, waited time.Duration, err error) {
	waited, err = z.admitOrWaitInto(ctx, &q, maxWait, maxQueue, dryRun, &t, &dec)
	return t, dec, waited, err
}

// admitOrWaitInto is admitOrWait writing the ticket and the decision into
// t and dec: the request path's form, which copies neither.
func (z *zone) admitOrWaitInto(ctx context.Context, q *ask, maxWait time.Duration, maxQueue int, dryRun bool, t *ticket, dec *decision) (waited time.Duration, err error) {
	start := now()
	if maxWait <= 0 || dryRun {
		z.admitInto(q, start.UnixNano(), dryRun, false, t, dec)
		return 0, nil
	}
	wq := &z.queue
	wq.mu.Lock()
	// A request may pass the queue only when it cannot take anything from
	// a waiter: nobody waits, or its key has no waiters and it shares no
	// upstream quota with them.
	_, keyWaits := wq.keys[q.kh]
	if wq.n == 0 || (!keyWaits && !q.shared()) {
		z.admitInto(q, start.UnixNano(), false, false, t, dec)
		if dec.ok || dec.never {
			wq.mu.Unlock()
			return 0, nil
		}
	} else if z.admitInto(q, start.UnixNano(), false, true, t, dec); dec.never {
		wq.mu.Unlock()
		return 0, nil
	}
	// It does not fit now. Would it within maxWait, behind the queue?
	predicted := wq.predict(*q, *dec, start.UnixNano())
	if predicted > maxWait || wq.n >= maxQueue || wq.closed {
		dec.wait = max(predicted, dec.wait)
		dec.queueFull = wq.n >= maxQueue
		wq.mu.Unlock()
		return 0, nil
	}
	w := &waiter{q: *q, deadline: start.Add(maxWait).UnixNano(), done: make(chan struct{})}
	wq.push(w)
	wq.dispatchLocked(start.UnixNano())
	wq.mu.Unlock()

	select {
	case <-w.done:
		*t, *dec = w.t, w.dec
		return now().Sub(start), nil
	case <-ctx.Done():
	}
	// The client went away: leave the queue, taking nothing.
	wq.mu.Lock()
	select {
	case <-w.done:
		if w.dec.ok { // admitted in the same instant: give it all back
			defer w.t.finish(now().UnixNano(), nil, true)
		}
	default:
		wq.remove(w)
		wq.dispatchLocked(now().UnixNano())
	}
	wq.mu.Unlock()
	*t, *dec = ticket{}, decision{}
	return now().Sub(start), ctx.Err()
}

// predict estimates when a request would be served behind the waiters
// ahead of it: its key's waiters, and, on the shared upstream quota, one
// request of every other waiting key per round until its turn.
func (wq *waitQueue) predict(q ask, dec decision, nowNs int64) time.Duration {
	if dec.ok || dec.blocking.limit <= 0 || int(dec.blocking.dim) >= len(keyWaiters{}.need) {
		return dec.wait // it fits now, or freed slots or keys wake the queue: no better guess
	}
	own := wq.keys[q.kh]
	rounds := 1
	if own != nil {
		rounds += len(own.list)
	}
	dim := dec.blocking.dim
	ahead := 0.0
	if own != nil {
		ahead = own.need[dim]
	}
	if dec.blocking.scope == scopeUpstream {
		for _, k := range wq.ring {
			if k == own {
				continue
			}
			if len(k.list) <= rounds {
				ahead += k.need[dim]
			} else {
				ahead += k.need[dim] / float64(len(k.list)) * float64(rounds)
			}
		}
	}
	return dec.wait + durationFromTokens(dec.blocking.limit, ahead)
}

func (wq *waitQueue) push(w *waiter) {
	if wq.keys == nil {
		wq.keys = make(map[keyHash]*keyWaiters)
	}
	k := wq.keys[w.q.kh]
	if k == nil {
		k = &keyWaiters{kh: w.q.kh, lane: w.q.lane}
		wq.keys[w.q.kh] = k
		wq.ring = append(wq.ring, k)
	}
	k.list = append(k.list, w)
	for i, n := range needs(w.q.d) {
		k.need[i] += n
	}
	wq.n++
	wq.waiting.Store(int64(wq.n))
}

// remove takes a waiter out, wherever it stands.
func (wq *waitQueue) remove(w *waiter) {
	k := wq.keys[w.q.kh]
	if k == nil {
		return
	}
	for i, o := range k.list {
		if o == w {
			k.list = append(k.list[:i], k.list[i+1:]...)
			for j, n := range needs(w.q.d) {
				k.need[j] -= n
			}
			wq.n--
			wq.waiting.Store(int64(wq.n))
			break
		}
	}
	if len(k.list) == 0 {
		wq.dropKey(k)
	}
}

func (wq *waitQueue) dropKey(k *keyWaiters) {
	delete(wq.keys, k.kh)
	for i, o := range wq.ring {
		if o == k {
			wq.ring = append(wq.ring[:i], wq.ring[i+1:]...)
			if wq.next > i {
				wq.next--
			}
			break
		}
	}
	if len(wq.ring) == 0 {
		wq.next = 0
	} else {
		wq.next %= len(wq.ring)
	}
}

// decide takes the head waiter of k out with its decision.
func (wq *waitQueue) decide(k *keyWaiters, t ticket, dec decision) {
	w := k.list[0]
	k.list[0] = nil
	k.list = k.list[1:]
	for j, n := range needs(w.q.d) {
		k.need[j] -= n
	}
	wq.n--
	wq.waiting.Store(int64(wq.n))
	w.t, w.dec = t, dec
	close(w.done)
	if len(k.list) == 0 {
		wq.dropKey(k)
	}
}

// wake re-runs the queue after capacity may have come back.
func (wq *waitQueue) wake() {
	if wq.waiting.Load() == 0 {
		return
	}
	wq.mu.Lock()
	if wq.n > 0 {
		wq.dispatchLocked(now().UnixNano())
	}
	wq.mu.Unlock()
}

// dispatchLocked grants what can be granted now, in round-robin order over
// the keys' head waiters, turns away waiters past their deadline, and arms
// the timer for the next moment something can change.
func (wq *waitQueue) dispatchLocked(nowNs int64) {
	next := int64(math.MaxInt64)
	// Waiters past their deadline leave first, whatever their turn.
	for i := 0; i < len(wq.ring); {
		k := wq.ring[i]
		if w := k.list[0]; w.deadline <= nowNs {
			_, dec := wq.z.admit(w.q, nowNs, false, true)
			if !dec.ok {
				dec.wait = max(dec.wait, time.Second)
				wq.decide(k, ticket{}, dec)
				i = 0 // the ring may have changed
				continue
			}
		}
		i++
	}
	for len(wq.ring) > 0 {
		granted, blocked := false, false
		// The interactive lane first, then the batch lane; within a lane,
		// round-robin over the keys.
		for pass := laneInteractive; pass <= laneBatch && !granted && !blocked; pass++ {
			for i := 0; i < len(wq.ring); i++ {
				idx := (wq.next + i) % len(wq.ring)
				k := wq.ring[idx]
				if k.lane != pass {
					continue
				}
				w := k.list[0]
				t, dec := wq.z.admit(w.q, nowNs, false, false)
				if dec.ok || dec.never {
					wq.decide(k, t, dec)
					if len(wq.ring) > 0 && wq.ring[idx%len(wq.ring)] == k {
						wq.next = (idx + 1) % len(wq.ring) // k keeps waiters: next key's turn
					} else if len(wq.ring) > 0 {
						wq.next = idx % len(wq.ring) // k left the ring: the key after it moved into idx
					}
					granted = true
					break
				}
				if dec.blocking.dim != dimConcurrency {
					next = min(next, nowNs+int64(max(dec.wait, time.Millisecond)))
				}
				if dec.blocking.scope == scopeUpstream {
					blocked = true
					break // the shared quota goes to whoever's turn it is
				}
			}
		}
		if !granted {
			break
		}
	}
	for _, k := range wq.ring {
		next = min(next, k.list[0].deadline)
	}
	wq.arm(next)
}

// arm sets the queue's one timer to fire at `at` (unix ns).
func (wq *waitQueue) arm(at int64) {
	if wq.n == 0 || at == math.MaxInt64 {
		wq.disarm()
		return
	}
	if wq.timerCancel != nil && wq.timerAt == at {
		return
	}
	wq.disarm()
	ctx, cancel := context.WithCancel(context.Background())
	wq.timerAt, wq.timerCancel = at, cancel
	go func() {
		if sleepUntil(ctx, time.Unix(0, at)) == nil {
			wq.mu.Lock()
			if wq.timerAt == at {
				wq.timerAt, wq.timerCancel = 0, nil
			}
			wq.dispatchLocked(now().UnixNano())
			wq.mu.Unlock()
		}
	}()
}

func (wq *waitQueue) disarm() {
	if wq.timerCancel != nil {
		wq.timerCancel()
		wq.timerAt, wq.timerCancel = 0, nil
	}
}

// close turns every waiter away and stops the timer: the zone is gone.
func (wq *waitQueue) close() {
	wq.mu.Lock()
	defer wq.mu.Unlock()
	wq.closed = true
	for len(wq.ring) > 0 {
		k := wq.ring[0]
		wq.decide(k, ticket{}, decision{verdict: verdict{wait: time.Second}})
	}
	wq.disarm()
}

// length is the number of waiters.
func (wq *waitQueue) length() int {
	wq.mu.Lock()
	defer wq.mu.Unlock()
	return wq.n
}
