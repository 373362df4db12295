package llmratelimit

import (
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// zones holds every zone's state. A zone outlives config reloads: the new
// config's Provision takes it before the old config's Cleanup lets it go.
var zones = caddy.NewUsagePool()

// shardCount spreads keys over independent locks so that no request takes a
// global lock.
const shardCount = 64

// sweepInterval is how often a zone drops keys whose buckets are all full
// again and that have nothing in flight.
const sweepInterval = time.Minute

// zone is the state of one zone: every key's buckets, sharded by key.
type zone struct {
	name   string
	shards [shardCount]shard
	gate   gate // the upstream cooldown gate (retry.go)
	done   chan struct{}
}

type shard struct {
	mu   sync.Mutex
	keys map[keyHash]*keyState
	_    [40]byte // keep shards on separate cache lines
}

// limitBuckets are the per-minute buckets of one scope.
type limitBuckets struct {
	rpm, tpm, itpm, otpm bucket
}

// keyState is everything the zone keeps for one key. It is small and holds
// no history, so a million idle keys cost little, and the sweeper drops it
// once it is back to the state a new key would have.
type keyState struct {
	limitBuckets
	models   map[string]*limitBuckets // per key × model block name
	inflight int64
	idleAt   int64 // unix ns when every bucket is full again
}

func newZone(name string) *zone {
	z := &zone{name: name, done: make(chan struct{})}
	for i := range z.shards {
		z.shards[i].keys = make(map[keyHash]*keyState)
	}
	go z.sweeper()
	return z
}

// Destruct stops the sweeper when the last config using the zone lets go.
func (z *zone) Destruct() error {
	close(z.done)
	return nil
}

func (z *zone) shard(kh keyHash) *shard { return &z.shards[kh[0]%shardCount] }

func (z *zone) sweeper() {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-z.done:
			return
		case <-t.C:
			z.sweep(now().UnixNano())
		}
	}
}

// sweep drops keys that are idle: nothing in flight and every bucket full,
// which is exactly the state a key that was never seen has.
func (z *zone) sweep(now int64) (dropped int) {
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kh, ks := range s.keys {
			if ks.inflight == 0 && ks.idleAt <= now {
				delete(s.keys, kh)
				dropped++
			}
		}
		s.mu.Unlock()
	}
	return dropped
}

// keyCount counts the keys the zone holds.
func (z *zone) keyCount() int {
	n := 0
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		n += len(s.keys)
		s.mu.Unlock()
	}
	return n
}

// inflight reports a key's requests in flight (0 for an unknown key).
func (z *zone) inflight(kh keyHash) int64 {
	s := z.shard(kh)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ks, ok := s.keys[kh]; ok {
		return ks.inflight
	}
	return 0
}

// demand is what one request asks of the buckets, after estimation.
type demand struct {
	in, out float64
	model   *Model // nil when no model block applies
}

// ticket is an admitted (or dry-run-forwarded) request's hold on its key:
// what it reserved, and the concurrency slot it must give back.
type ticket struct {
	s       *shard
	ks      *keyState
	mb      *limitBuckets // key × model buckets, or nil
	lim     Limits
	d       demand
	debited bool // false for a request that dry_run let through
}

// decision is the outcome of zone.admit.
type decision struct {
	verdict
	req, tok quota // for the x-ratelimit-* headers
}

// admit decides a request for a key in one step under the key's shard lock:
// the concurrency cap, then all-or-nothing over the key's buckets and the
// key × model buckets. When the request fits, its reservation is debited
// and a slot taken. With dryRun a request that does not fit still gets a
// slot (it will be forwarded) but debits nothing.
func (z *zone) admit(kh keyHash, lim Limits, d demand, nowNs int64, dryRun bool) (ticket, decision) {
	s := z.shard(kh)
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := s.keys[kh]
	if ks == nil {
		ks = new(keyState)
		s.keys[kh] = ks
	}
	t := ticket{s: s, ks: ks, lim: lim, d: d}
	var a admission
	addBuckets(&a, &ks.limitBuckets, lim, d, scopeKey)
	if d.model != nil {
		if ks.models == nil {
			ks.models = make(map[string]*limitBuckets, 1)
		}
		t.mb = ks.models[d.model.Name]
		if t.mb == nil {
			t.mb = new(limitBuckets)
			ks.models[d.model.Name] = t.mb
		}
		addBuckets(&a, t.mb, d.model.Limits, d, scopeModel)
	}

	var dec decision
	if lim.Concurrent > 0 && ks.inflight >= lim.Concurrent {
		for i := 0; i < a.n; i++ {
			a.uses[i].b.advance(nowNs, a.uses[i].limit)
		}
		dec.verdict = verdict{
			wait:      time.Second,
			blocking:  use{limit: lim.Concurrent, need: 1, dim: dimConcurrency},
			available: 0,
		}
	} else {
		dec.verdict = a.try(nowNs)
	}
	dec.req, dec.tok = a.quotas()
	if dec.ok || dryRun {
		ks.inflight++
		t.debited = dec.ok
	}
	ks.touch(lim, t.mb, d.model)
	return t, dec
}

func addBuckets(a *admission, lb *limitBuckets, lim Limits, d demand, sc scope) {
	a.add(&lb.rpm, lim.RPM, 1, dimRequests, sc)
	a.add(&lb.tpm, lim.TPM, d.in+d.out, dimTokens, sc)
	a.add(&lb.itpm, lim.ITPM, d.in, dimInput, sc)
	a.add(&lb.otpm, lim.OTPM, d.out, dimOutput, sc)
}

// finish settles a ticket and gives its slot back. With u != nil the token
// buckets are settled to the actual usage (a refund or a late charge, which
// may leave debt); with refund the whole token reservation goes back (the
// request still counts); with neither the reservation stands.
func (t *ticket) finish(nowNs int64, u *usage, refund bool) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.ks.inflight--
	if !t.debited {
		return
	}
	var dIn, dOut float64 // tokens to give back (negative: to take)
	switch {
	case refund:
		dIn, dOut = t.d.in, t.d.out
	case u != nil:
		dIn, dOut = t.d.in-float64(u.Input), t.d.out-float64(u.Output)
	default:
		return
	}
	settle(&t.ks.limitBuckets, t.lim, nowNs, dIn, dOut)
	if t.mb != nil {
		settle(t.mb, t.d.model.Limits, nowNs, dIn, dOut)
	}
	var ml *Model
	if t.mb != nil {
		ml = t.d.model
	}
	t.ks.touch(t.lim, t.mb, ml)
}

func settle(lb *limitBuckets, lim Limits, nowNs int64, dIn, dOut float64) {
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

// touch records when the key's buckets will all be full again, for the
// sweeper.
func (ks *keyState) touch(lim Limits, mb *limitBuckets, m *Model) {
	idle := ks.limitBuckets.fullAt(lim)
	if mb != nil {
		if t := mb.fullAt(m.Limits); t > idle {
			idle = t
		}
	}
	if idle > ks.idleAt {
		ks.idleAt = idle
	}
}

func (lb *limitBuckets) fullAt(lim Limits) int64 {
	var at int64
	for _, p := range [...]struct {
		b     *bucket
		limit int64
	}{{&lb.rpm, lim.RPM}, {&lb.tpm, lim.TPM}, {&lb.itpm, lim.ITPM}, {&lb.otpm, lim.OTPM}} {
		if p.limit <= 0 || p.b.at == 0 {
			continue
		}
		if t := p.b.at + int64(p.b.untilFull(p.limit)); t > at {
			at = t
		}
	}
	return at
}
