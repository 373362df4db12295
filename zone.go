package llmratelimit

import (
	"math"
	"sync"
	"sync/atomic"
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
	calib  sync.Map // model block name or "*" → *modelCalib
	shards [shardCount]shard
	gate   gate // the upstream cooldown gate (retry.go)
	queue  waitQueue

	// The provider accounts (the unnamed upstream block is the account
	// "default"), taken only by requests that an account serves, after the
	// key's shard lock.
	upMu     sync.Mutex
	accounts map[string]*account
	pick     choice // the account choice's scratch, guarded by upMu

	m     *zoneMetrics
	nkeys atomic.Int64 // keys with state, against max_keys

	costs   costTotals
	budgets atomic.Pointer[map[string]*budget] // the latest config's, by tier
	// shared is the latest config's shared store and unnamed upstream
	// quota, when the zone is shared: the stats read Redis.
	shared      atomic.Pointer[sharedZone]
	ledgerDirty atomic.Bool // spend changed since the ledger was last saved
	ledgerMu    sync.Mutex
	ledger      *ledger // where spend is saved across restarts, or nil
	alerts      alertSinks
	use         zoneUsage // the usage record for billing (billing.go)
	flushOnce   sync.Once // starts the flusher (ledger.go)

	done chan struct{}
}

type shard struct {
	mu   sync.Mutex
	keys map[keyPrefix]*keyState
	// spend is the spend of the keys that a budget applies to; unlike
	// keys, the sweeper never drops it (the ledger keeps it).
	spend map[keyPrefix]*keySpend
	// seen is the keys this instance decided through the shared store
	// (for the stats endpoint).
	seen map[keyPrefix]seenKey
	// days keeps today's usage of keys the sweeper dropped (keyinfo.go).
	days map[keyPrefix]dayUsage
	use  usageShard // usage counted since the last flush (billing.go)
}

// keyState is everything the zone keeps for one key. It is small and holds
// no history, so a million idle keys cost little, and the sweeper drops it
// once it is back to the state a new key would have.
type keyState struct {
	limitBuckets
	models map[string]*limitBuckets // per key × model block name
	// lastAccount is the account that served the key's last request
	// (affinity: providers cache prompts per account).
	lastAccount *account
	// learned is the key's own quota as its provider's headers told it
	// (a zone without accounts: the client's key went upstream).
	learned  *learnedState
	inflight int64
	idleAt   int64 // unix ns when every bucket is full again
	stats    keyStats
	use      keyUsage // usage counted since the last flush (billing.go)
}

func newZone(name string) *zone {
	z := &zone{name: name, done: make(chan struct{}), m: newZoneMetrics(name)}
	z.queue.z = z
	for i := range z.shards {
		z.shards[i].keys = make(map[keyPrefix]*keyState)
	}
	go z.sweeper()
	return z
}

// Destruct stops the sweeper when the last config using the zone lets go.
func (z *zone) Destruct() error {
	close(z.done)
	z.queue.close()
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
func (z *zone) sweep(nowNs int64) (dropped int) {
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kh, ks := range s.keys {
			if ks.inflight == 0 && ks.idleAt <= nowNs {
				s.parkDay(kh, ks.stats.today, nowNs)
				s.keepUsage(kh, ks)
				delete(s.keys, kh)
				z.nkeys.Add(-1)
				dropped++
			}
		}
		// Spend that no period can still count (nothing in flight, and
		// nothing spent, or spent in a period that began more than the
		// longest one ago), and keys decided through Redis long ago.
		for kp, sp := range s.spend {
			if sp.reserved == 0 && (sp.spent == 0 || nowNs/1e9-sp.start > staleSpend) {
				delete(s.spend, kp)
			}
		}
		for kp, k := range s.seen {
			if nowNs-k.at > int64(staleSeen) {
				delete(s.seen, kp)
			}
		}
		s.dropOldDays(nowNs)
		s.mu.Unlock()
	}
	return dropped
}

// staleSpend is longer than any budget period, in seconds; staleSeen is
// how long the stats of a shared zone keep showing a key this instance no
// longer decides.
const (
	staleSpend = 32 * 24 * 3600
	staleSeen  = 10 * time.Minute
)

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

// inFlight counts the zone's requests in flight, over every shard: for the
// gauge, read when scraped rather than kept per request.
func (z *zone) inFlight() int64 {
	var n int64
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for _, ks := range s.keys {
			n += ks.inflight
		}
		s.mu.Unlock()
	}
	return n
}

// sharedZone is what the stats of a shared zone need.
type sharedZone struct {
	rs   *redisStore
	up   Limits
	pool []*accountCfg // the named accounts shared in Redis, for the stats
}

// demand is what one request asks of the buckets, after estimation.
type demand struct {
	in, out float64
	model   *Model // nil when no model block applies
	// raw is the input estimate before any factor; modelFactor the model
	// factor applied to it; calib the model's calibration (nil with
	// calibrate off).
	raw, modelFactor float64
	calib            *modelCalib
}

// ask is one request's claim on a zone: whose it is, the limits that apply
// to it and what it needs.
type ask struct {
	kh      keyHash
	known   bool   // named by api_key or keys_file: never turned away by max_keys
	maxKeys int    // the zone's cap on keys with state; 0: none
	tier    string // for stats
	lim     Limits // the key's (its tier or the defaults)
	// accts are the provider accounts that can serve the request (the
	// unnamed upstream block, or the pool's accounts for its model); nil:
	// none applies.
	accts []*accountCfg
	// learn: the provider's rate-limit headers are learned (learn_limits);
	// learnKey: they describe this key (a zone without accounts).
	learn, learnKey bool
	lane            lane // the queue lane of the key's tier
	d               demand
	spend           *spendAsk // nil: no price and no budget apply
	// clampMin > 0: the output reservation may shrink to fit, down to
	// clampMin tokens per choice of choices (clamp_max_tokens).
	clampMin, choices int64
}

// shared tells whether the request takes a shared account's quota.
func (q *ask) shared() bool { return len(q.accts) > 0 }

// unnamedUpstream is the unnamed upstream block's quota (zero: none); the
// shared store keeps only that one account.
func (q *ask) unnamedUpstream() Limits {
	if len(q.accts) == 1 && !q.accts[0].pool {
		return q.accts[0].lim
	}
	return Limits{}
}

// decision is the outcome of zone.admit.
type decision struct {
	verdict
	qs        quotaSet // for the rate-limit headers, every kind
	queueFull bool     // turned away because max_queue requests already wait
	// overBudget: turned away because the worst case does not fit what is
	// left of the key's budget (spent, reserved, worst and resetsAt say
	// the rest, in nano-dollars).
	overBudget bool
	spent      int64
	reserved   int64 // worst cases of the key's requests in flight
	worst      int64 // this request's worst case
	resetsAt   int64 // unix seconds
	// clamped > 0: the output reservation was cut to this many tokens
	// per choice to fit the budget (clamp_max_tokens).
	clamped int64
}

// admit decides a request in one step under its key's shard lock (and the
// zone's upstream lock when an upstream quota applies): the concurrency
// caps, then all-or-nothing over the key's buckets, the key × model buckets
// and the upstream buckets. When the request fits, its reservation is
// debited and its slots taken. With dryRun a request that does not fit
// still gets its slots (it will be forwarded) but debits nothing. With
// peek nothing changes: the decision is only computed.
func (z *zone) admit(q ask, nowNs int64, dryRun, peek bool) (t ticket, dec decision) {
	z.admitInto(&q, nowNs, dryRun, peek, &t, &dec)
	return t, dec
}

// admitInto is admit writing its outcome into t and dec, without copying
// the ask, the ticket or the decision on the way: the request path's form.
// q is not changed; t.a is the ask as admitted (its input calibrated for
// the key, its output maybe clamped). t is the zero ticket unless the
// request holds something.
func (z *zone) admitInto(q *ask, nowNs int64, dryRun, peek bool, t *ticket, dec *decision) {
	*dec = decision{}
	s := z.shard(q.kh)
	s.mu.Lock()
	defer s.mu.Unlock()
	if q.shared() {
		z.upMu.Lock()
		defer z.upMu.Unlock()
	}
	ks := s.keys[q.kh.prefix()]
	if ks == nil {
		if !q.known && q.maxKeys > 0 && z.nkeys.Load() >= int64(q.maxKeys) {
			// A key flood: no state for one more unknown key until the
			// sweeper frees some. Keys with state and configured keys go on.
			*t = ticket{}
			dec.verdict = verdict{wait: sweepInterval, blocking: use{limit: int64(q.maxKeys), dim: dimKeys}}
			return
		}
		ks = new(keyState)
		s.keys[q.kh.prefix()] = ks
		z.nkeys.Add(1)
		if len(s.days) > 0 {
			s.unparkDay(q.kh.prefix(), ks)
		}
	}
	*t = ticket{}
	t.h, t.z, t.s, t.ks, t.a = localHold{}, z, s, ks, *q
	qa := &t.a // the ask as this admission changes it
	if qa.d.calib != nil {
		// The key's own correction, relative to its model's.
		qa.d.in = math.Ceil(qa.d.raw * qa.d.modelFactor * ks.stats.calib.factor())
	}
	if qa.spend != nil && qa.spend.b != nil {
		var ok bool
		if t.sp, t.worst, ok = z.fitBudget(s, qa, dec, nowNs); !ok {
			*t = ticket{}
			return
		}
	}
	var learned Limits
	lim := t.keyLimits(nowNs, &learned)
	var a admission
	ks.limitBuckets.admitInto(&a, lim, &qa.d, scopeKey)
	if qa.d.model != nil {
		if ks.models == nil {
			ks.models = make(map[string]*limitBuckets, 1)
		}
		t.mb = ks.models[qa.d.model.Name]
		if t.mb == nil {
			t.mb = new(limitBuckets)
			ks.models[qa.d.model.Name] = t.mb
		}
		t.mb.admitInto(&a, &qa.d.model.Limits, &qa.d, scopeModel)
	}

	switch {
	case lim.Concurrent > 0 && ks.inflight >= lim.Concurrent:
		dec.verdict = a.concurrencyFull(nowNs, lim.Concurrent, scopeKey)
	case !qa.shared() && peek:
		a.checkInto(nowNs, &dec.verdict)
	case !qa.shared():
		a.tryInto(nowNs, &dec.verdict)
		if !dec.ok && qa.clampMin > 0 {
			t.clampToBuckets(&a, dec, nowNs)
		}
	case len(qa.accts) == 1 && !qa.accts[0].pool:
		// The unnamed upstream block: one account, in the same admission.
		ac := qa.accts[0]
		st := ac.st
		if st == nil {
			st = z.accountState(ac.name)
		}
		st.learned.rise(nowNs)
		var learnedUp Limits
		st.admitInto(&a, st.limitsOf(&ac.lim, &learnedUp), &qa.d, scopeUpstream)
		st.cfg = ac.lim
		switch {
		case ac.lim.Concurrent > 0 && st.inflight >= ac.lim.Concurrent:
			dec.verdict = a.concurrencyFull(nowNs, ac.lim.Concurrent, scopeUpstream)
		case peek:
			dec.verdict = a.check(nowNs)
		default:
			dec.verdict = a.try(nowNs)
		}
		t.acfg, t.acct = ac, st
	default:
		// A pool: the key's own buckets first (when they block, no account
		// helps), then the account that serves the attempt.
		if dec.verdict = a.check(nowNs); dec.ok {
			t.acfg, t.acct = z.chooseAccountInto(&a, qa.accts, &qa.d, ks.lastAccount, nil, nowNs, peek, &dec.verdict)
		}
	}
	a.quotaSet(&dec.qs)
	if peek {
		*t = ticket{}
		return
	}
	if !dec.ok && !dryRun {
		ks.touch(lim, t.mb, qa.d.model)
		*t = ticket{}
		return
	}
	ks.inflight++
	if qa.shared() {
		if t.acct == nil { // dry_run forwards what did not fit: to the first account
			t.acfg, t.acct = qa.accts[0], z.accountState(qa.accts[0].name)
		}
		t.acct.inflight++
		t.acct.calls++
		ks.lastAccount = t.acct
		if qa.learn && t.acct.learned == nil {
			t.acct.learned = newLearnedState(nowNs)
		}
		if dec.ok {
			t.acct.learned.count(1, qa.d)
		}
		t.sent = t.acct.learned.snapshot(nowNs)
	} else if qa.learnKey {
		if dec.ok {
			ks.learned.count(1, qa.d)
		}
		t.sent = ks.learned.snapshot(nowNs)
	}
	t.debited = dec.ok
	ks.stats.admitted(nowNs, qa.tier, lim) // the limits in force, learned ones included
	ks.stats.today.admitted(dayOf(nowNs))
	if t.sp != nil && dec.ok {
		t.sp.reserved += t.worst
	} else {
		t.sp = nil
	}
	// No touch: the key holds a request in flight, which the sweeper never
	// drops, and the request's finish touches it.
}
