package llmratelimit

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"
)

// Under contention for a shared account, waiters of the interactive lane
// are granted before the batch lane's, and the batch lane is still served.
func TestInteractiveLaneIsGrantedBeforeBatch(t *testing.T) {
	clk.setManual(t)
	z := newZone("lanes-test")
	defer z.Destruct()
	up := unnamed(Limits{RPM: 60}) // one request a second
	for i := 0; i < 60; i++ {
		tk, dec := z.admit(ask{kh: hashKey("warm"), accts: up}, now().UnixNano(), false, false)
		if !dec.ok {
			t.Fatalf("warm-up %d rejected", i)
		}
		tk.finish(now().UnixNano(), nil, false)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		lane   lane
		waited time.Duration
		ok     bool
	}
	out := make(chan result, 200)
	wait := func(key string, l lane) {
		go func() {
			tk, dec, waited, err := z.admitOrWait(ctx, ask{kh: hashKey(key), accts: up, lane: l}, time.Hour, 10000, false)
			if err == nil && dec.ok {
				tk.finish(now().UnixNano(), nil, false)
			}
			out <- result{l, waited, err == nil && dec.ok}
		}()
	}
	// A batch job: 40 keys with 2 requests each, all waiting. Round-robin
	// alone would make a newcomer wait behind every one of those keys.
	const batch = 80
	for i := 0; i < batch; i++ {
		wait(fmt.Sprint("batch-", i%40), laneBatch)
		eventually(t, "batch waiter queued", func() bool { return z.queue.length() == i+1 })
	}
	// Interactive users arrive one every 2 seconds while the batch waits.
	var waits [2][]time.Duration
	queued := batch
	for tick := 0; tick < batch+20; tick++ {
		if tick%2 == 0 && tick < 40 {
			wait(fmt.Sprint("user-", tick%3), laneInteractive)
			queued++
			eventually(t, "interactive waiter queued", func() bool { return z.queue.length()+len(waits[0])+len(waits[1]) == queued })
		}
		clk.Advance(time.Second)
		r := <-out
		if !r.ok {
			t.Fatalf("tick %d: a waiter was turned away", tick)
		}
		waits[r.lane] = append(waits[r.lane], r.waited)
	}
	if len(waits[laneInteractive]) != 20 || len(waits[laneBatch]) != batch {
		t.Fatalf("served %d interactive and %d batch, want 20 and %d", len(waits[laneInteractive]), len(waits[laneBatch]), batch)
	}
	p99 := func(d []time.Duration) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[(len(s)*99+99)/100-1]
	}
	pi, pb := p99(waits[laneInteractive]), p99(waits[laneBatch])
	t.Logf("queue wait p99: interactive %v, batch %v", pi, pb)
	if pi > pb/10 {
		t.Fatalf("interactive p99 %v is more than 10%% of batch p99 %v", pi, pb)
	}
}
