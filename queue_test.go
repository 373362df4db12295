package llmratelimit

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestUpstreamBucketIsSharedAndKeyLimitsStillApply(t *testing.T) {
	z := newZone("shared-upstream-test")
	defer z.Destruct()
	up := Limits{RPM: 30}
	keys := []struct {
		name string
		lim  Limits
	}{{"a", Limits{RPM: 100}}, {"b", Limits{RPM: 100}}, {"c", Limits{RPM: 5}}}
	type grant struct {
		at  time.Duration
		key int
	}
	var grants []grant
	start := int64(1_000 * sec)
	for step := time.Duration(0); step < 3*time.Minute; step += 100 * time.Millisecond {
		for i, k := range keys {
			tk, dec := z.admit(ask{kh: hashKey(k.name), lim: k.lim, accts: unnamed(up)}, start+int64(step), false, false)
			if dec.ok {
				grants = append(grants, grant{step, i})
				tk.finish(start+int64(step), nil, false)
			}
		}
	}
	// Every minute-long window after the first minute's burst (the bucket
	// starts full) admits at most the upstream's rpm, all keys together,
	// and key c at most its own 5.
	for from := time.Minute; from+time.Minute <= 3*time.Minute; from += 10 * time.Second {
		total, perKey := 0, make([]int, 3)
		for _, g := range grants {
			if g.at >= from && g.at < from+time.Minute {
				total++
				perKey[g.key]++
			}
		}
		if total > 31 {
			t.Errorf("window from %v: %d admitted, upstream rpm is 30", from, total)
		}
		if perKey[2] > 6 {
			t.Errorf("window from %v: key c admitted %d, its rpm is 5", from, perKey[2])
		}
		if total < 29 {
			t.Errorf("window from %v: only %d admitted: the upstream quota is not used", from, total)
		}
	}
	// Over the whole first minute: the full bucket plus one minute's refill.
	first := 0
	for _, g := range grants {
		if g.at < time.Minute {
			first++
		}
	}
	if first > 60 {
		t.Errorf("first minute admitted %d, more than capacity + refill (60)", first)
	}
}

// queueResult is a waiter's outcome.
type queueResult struct {
	key    string
	dec    decision
	waited time.Duration
	err    error
}

// startWaiter runs admitOrWait in a goroutine and reports its outcome on
// out.
func startWaiter(z *zone, ctx context.Context, key string, lim, up Limits, maxWait time.Duration, maxQueue int, out chan<- queueResult) {
	go func() {
		tk, dec, waited, err := z.admitOrWait(ctx, ask{kh: hashKey(key), lim: lim, accts: unnamed(up)}, maxWait, maxQueue, false)
		if err == nil && dec.ok {
			tk.finish(now().UnixNano(), nil, false)
		}
		out <- queueResult{key, dec, waited, err}
	}()
}

func TestQueueGrantsRoundRobinAcrossKeys(t *testing.T) {
	clk.setManual(t)
	z := newZone("fairness-test")
	defer z.Destruct()
	up := Limits{RPM: 60} // one request a second
	// Use the upstream's whole bucket up.
	for i := 0; i < 60; i++ {
		tk, dec := z.admit(ask{kh: hashKey("warm"), accts: unnamed(up)}, now().UnixNano(), false, false)
		if !dec.ok {
			t.Fatalf("warm-up %d rejected", i)
		}
		tk.finish(now().UnixNano(), nil, false)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan queueResult, 1100)
	for i := 0; i < 1000; i++ {
		startWaiter(z, ctx, "flood", Limits{}, up, 2*time.Hour, 10000, out)
	}
	eventually(t, "1000 waiters of key A", func() bool { return z.queue.length() == 1000 })
	for i := 0; i < 10; i++ {
		startWaiter(z, ctx, "small", Limits{}, up, 2*time.Hour, 10000, out)
	}
	eventually(t, "10 more waiters of key B", func() bool { return z.queue.length() == 1010 })

	var order []string
	for len(order) < 20 {
		clk.Advance(time.Second)
		r := <-out
		if r.err != nil || !r.dec.ok {
			t.Fatalf("grant %d: %+v", len(order), r)
		}
		order = append(order, r.key)
	}
	small := 0
	for _, k := range order {
		if k == "small" {
			small++
		}
	}
	if small != 10 {
		t.Errorf("key B got %d of the first 20 grants, want all 10 (round-robin): %v", small, order)
	}
	cancel()
	for i := 0; i < 990; i++ {
		if r := <-out; r.err == nil {
			t.Fatalf("a cancelled waiter was not cancelled: %+v", r)
		}
	}
	if n := z.queue.length(); n != 0 {
		t.Errorf("%d waiters left after every client went away", n)
	}
}

func TestMaxWaitAdmitsAfterTheRefillOrRejectsUpFront(t *testing.T) {
	clk.setManual(t)
	z := newZone("maxwait-test")
	defer z.Destruct()
	lim := Limits{RPM: 1} // a request a minute
	q := ask{kh: hashKey("k"), lim: lim}
	tk, dec, _, err := z.admitOrWait(context.Background(), q, 90*time.Second, 2, false)
	if err != nil || !dec.ok {
		t.Fatalf("first request rejected: %v %+v", err, dec)
	}
	tk.finish(now().UnixNano(), nil, false)

	// The second fits within max_wait: it waits exactly the refill time.
	out := make(chan queueResult, 4)
	startWaiter(z, context.Background(), "k", lim, Limits{}, 90*time.Second, 2, out)
	eventually(t, "the second request to queue", func() bool { return z.queue.length() == 1 })

	// The third would be served after the second: 120s > max_wait. It is
	// rejected at once, with that honest wait.
	_, dec, waited, err := z.admitOrWait(context.Background(), q, 90*time.Second, 2, false)
	if err != nil || dec.ok || waited != 0 || dec.wait != 2*time.Minute {
		t.Fatalf("third: err=%v ok=%v waited=%v wait=%v, want an immediate rejection with a 2m wait", err, dec.ok, waited, dec.wait)
	}

	// A cancelled waiter frees its place and takes nothing.
	ctx, cancel := context.WithCancel(context.Background())
	startWaiter(z, ctx, "k", Limits{RPM: 1}, Limits{}, 3*time.Minute, 2, out)
	eventually(t, "a second waiter", func() bool { return z.queue.length() == 2 })
	// A key with no waiters and no shared quota passes a full queue.
	tk, dec, _, err = z.admitOrWait(context.Background(), ask{kh: hashKey("other"), lim: Limits{RPM: 1}}, time.Hour, 2, false)
	if err != nil || !dec.ok {
		t.Fatalf("another key's request waited behind k's queue: %v %+v", err, dec)
	}
	tk.finish(now().UnixNano(), nil, false)
	// max_queue 2 is reached: another of k's is turned away at once.
	_, dec, _, err = z.admitOrWait(context.Background(), q, time.Hour, 2, false)
	if err != nil || dec.ok || !dec.queueFull {
		t.Fatalf("queue overflow: err=%v ok=%v queueFull=%v", err, dec.ok, dec.queueFull)
	}
	cancel()
	if r := <-out; r.err == nil {
		t.Fatalf("the cancelled waiter: %+v", r)
	}
	eventually(t, "the cancelled waiter to leave", func() bool { return z.queue.length() == 1 })

	clk.Advance(59 * time.Second)
	select {
	case r := <-out:
		t.Fatalf("granted before the refill: %+v", r)
	default:
	}
	clk.Advance(time.Second)
	r := <-out
	if r.err != nil || !r.dec.ok || r.waited != time.Minute {
		t.Fatalf("second request: %+v, want admitted after exactly 1m", r)
	}
}

func TestUpstreamLimitIsNamedAndChargedPerRetry(t *testing.T) {
	mustLoad(t, "zone upstream_http\nrpm 100\nupstream {\n\trpm 10\n}")
	var calls int
	var mu sync.Mutex
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			w.Header().Set("retry-after-ms", "10")
			w.WriteHeader(429)
			return
		}
		noUsage(w, r)
	})
	if r := send(t, "/v1/chat/completions", "sk-up1", chatBody); r.status != 200 {
		t.Fatalf("retried request: %d", r.status)
	}
	// One admission + one retry = 2 upstream requests; this one is the 3rd.
	r := send(t, "/v1/chat/completions", "sk-up2", chatBody)
	if got := r.header.Get("x-ratelimit-remaining-requests"); got != "7" {
		t.Errorf("remaining requests %q, want 7 (the shared upstream's, after a retry was charged)", got)
	}
	for i := 0; i < 7; i++ {
		if r := send(t, "/v1/chat/completions", fmt.Sprintf("sk-up-more-%d", i), chatBody); r.status != 200 {
			t.Fatalf("upstream request %d of 10: %d %s", 4+i, r.status, r.body)
		}
	}
	r = send(t, "/v1/chat/completions", "sk-up3", chatBody)
	if r.status != 429 || r.header.Get("x-ratelimit-limit-requests") != "10" {
		t.Fatalf("11th upstream request: %d %v", r.status, r.header)
	}
	if msg := r.errorBody(t).Error.Message; !strings.Contains(msg, "shared upstream quota") {
		t.Errorf("message does not name the shared upstream quota: %q", msg)
	}
}

func TestQueuedRequestGoesThroughWhenCapacityComes(t *testing.T) {
	mustLoad(t, "zone queue_http\nrpm 1\nmax_wait 2m")
	clk.setManual(t)
	if r := send(t, "/v1/chat/completions", "sk-q", chatBody); r.status != 200 {
		t.Fatal(r.status)
	}
	done := make(chan reply, 1)
	go func() { done <- send(t, "/v1/chat/completions", "sk-q", chatBody) }()
	z := zoneOf(t, "queue_http")
	eventually(t, "the request to queue", func() bool { return z.queue.length() == 1 })
	clk.Advance(time.Minute)
	if r := <-done; r.status != 200 {
		t.Fatalf("queued request: %d %s", r.status, r.body)
	}
}
