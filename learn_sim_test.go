package llmratelimit

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// A discrete-event simulation of the learned limits: gateways (each its
// own account state, no shared store) in front of one provider account
// that holds each call for a latency and reports its remaining taken at
// the call's arrival or at its answer, answering a 429 at once. It drives
// learn.go's own state and buckets, so the whole grid of latencies runs in
// a fraction of a second; latency_test.go checks the same through a real
// Caddy at two latencies, and bench/pool -table in real time.

type simEvent struct {
	at    float64 // seconds
	kind  int     // simOffer, simArrive or simAnswer
	gw    int
	tries int
	sent  sent
	rem   float64 // the provider's remaining as of the call's arrival
	ok    bool
	hint  float64 // a 429's retry-after, seconds
}

const (
	simOffer  = iota // a client request reaches a gateway
	simArrive        // a call reaches the provider
	simAnswer        // its answer reaches the gateway
)

type simQueue []*simEvent

func (q simQueue) Len() int           { return len(q) }
func (q simQueue) Less(i, j int) bool { return q[i].at < q[j].at }
func (q simQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)        { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type simRun struct {
	rpm        float64
	gateways   int
	latency    float64 // seconds
	answerTime bool
	learn      bool
	configured bool // the account's rpm is configured; else only learned
}

// simulate offers 3× the quota for 15 minutes and returns the share of
// the quota used and of the calls refused, measured after the warm-up.
func simulate(c simRun) (used, refused float64) {
	const dur = 900.0
	rng := rand.New(rand.NewPCG(1, 2))
	q := &simQueue{}
	type gateway struct {
		st   account
		cfg  Limits
		gate float64 // the zone's cooldown gate, open from then on
	}
	gws := make([]*gateway, c.gateways)
	for i := range gws {
		gws[i] = &gateway{}
		if c.configured {
			gws[i].cfg.RPM = int64(c.rpm)
		}
	}
	every := 60 / (3 * c.rpm / float64(c.gateways))
	for g := range gws {
		for t := float64(g) * every / float64(c.gateways); t < dur; t += every {
			heap.Push(q, &simEvent{at: t, kind: simOffer, gw: g})
		}
	}
	level, levelAt := c.rpm, 0.0 // the provider's bucket
	refill := func(now float64) {
		level = math.Min(c.rpm, level+(now-levelAt)*c.rpm/60)
		levelAt = now
	}
	from := math.Max(90, 2*c.latency+30)
	var ok, limited float64
	ns := func(t float64) int64 { return int64((t + 1) * 1e9) }
	for q.Len() > 0 {
		e := heap.Pop(q).(*simEvent)
		g := gws[e.gw]
		st := &g.st
		switch e.kind {
		case simOffer:
			nowNs := ns(e.at)
			st.learned.rise(nowNs)
			if lim := st.limits(g.cfg); lim.RPM > 0 {
				if st.rpm.advance(nowNs, lim.RPM) < 1 {
					continue // the gateway's own 429
				}
				st.rpm.level--
			}
			if c.learn && st.learned == nil {
				st.learned = newLearnedState(nowNs)
			}
			st.learned.count(1, demand{})
			heap.Push(q, &simEvent{at: math.Max(e.at, g.gate) + 0.01, kind: simArrive, gw: e.gw, sent: st.learned.snapshot(nowNs)})
		case simArrive:
			refill(e.at)
			a := &simEvent{kind: simAnswer, gw: e.gw, tries: e.tries, sent: e.sent}
			if a.ok = level >= 1; a.ok {
				level--
				a.at = e.at + c.latency*(0.9+0.2*rng.Float64())
			} else {
				a.at, a.hint = e.at+0.01, (1-level)/(c.rpm/60)
			}
			a.rem = level
			if e.at >= from {
				if a.ok {
					ok++
				} else {
					limited++
				}
			}
			heap.Push(q, a)
		case simAnswer:
			nowNs := ns(e.at)
			rem := e.rem
			if c.answerTime && e.ok {
				refill(e.at)
				rem = level
			}
			if st.learned != nil {
				r := newRateReport()
				r.limit[dimRequests], r.remaining[dimRequests], r.any = int64(c.rpm), int64(math.Floor(rem)), true
				status := 200
				if !e.ok {
					status = 429
				}
				st.learned.observe(&r, status, e.sent, &st.limitBuckets, g.cfg, nowNs)
			}
			if !e.ok && e.tries < 3 {
				// The retry waits for the hint behind the zone's gate and
				// is charged as a new call.
				g.gate = math.Max(g.gate, e.at+e.hint)
				if lim := st.limits(g.cfg); lim.RPM > 0 {
					st.rpm.add(nowNs, lim.RPM, -1)
				}
				st.learned.count(1, demand{})
				heap.Push(q, &simEvent{at: e.at + e.hint*(1+0.2*rng.Float64()) + 0.01, kind: simArrive, gw: e.gw, tries: e.tries + 1,
					sent: st.learned.snapshot(nowNs)})
			}
		}
	}
	return ok / (c.rpm * (dur - from) / 60), limited / math.Max(1, ok+limited)
}

// SPEC "Learned limits under real latencies", over the whole grid: a
// configured account uses its quota as well with learning on as off, at
// 0–120 s and with either kind of provider; two gateways that share a
// learned-only account with no store use ≥ 90 % of it with ≤ 2 % 429s.
func TestLearnedLimitsHoldOverTheLatencyGrid(t *testing.T) {
	for _, answerTime := range []bool{false, true} {
		for _, latency := range []float64{0, 10, 30, 60, 120} {
			name := fmt.Sprintf("answer-time %v, %vs", answerTime, latency)
			t.Run("configured, "+name, func(t *testing.T) {
				run := simRun{rpm: 120, gateways: 1, latency: latency, answerTime: answerTime, configured: true}
				off, _ := simulate(run)
				run.learn = true
				on, _ := simulate(run)
				if on < 0.97 || on < off-0.01 {
					t.Errorf("used %.3f with learning on, %.3f off", on, off)
				}
			})
			t.Run("learned by two gateways, "+name, func(t *testing.T) {
				used, refused := simulate(simRun{rpm: 600, gateways: 2, latency: latency, answerTime: answerTime, learn: true})
				if used < 0.90 || refused > 0.02 {
					t.Errorf("used %.3f with %.4f of the calls refused", used, refused)
				}
			})
		}
	}
}
