package llmratelimit

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// upstreamLog records what reached the upstream.
type upstreamLog struct {
	mu     sync.Mutex
	bodies []string
	times  []time.Time
}

func (l *upstreamLog) record(r *http.Request) int {
	b, _ := io.ReadAll(r.Body)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bodies = append(l.bodies, string(b))
	l.times = append(l.times, clk.Now())
	return len(l.bodies)
}

func (l *upstreamLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.bodies)
}

func TestRetriesUpstream429WithHintsThenServesThe200(t *testing.T) {
	mustLoad(t, "zone retry_hint\nrpm 10\ntpm 100000")
	var log upstreamLog
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if log.record(r) <= 2 {
			w.Header().Set("retry-after-ms", "50")
			w.Header().Set("X-From-429", "yes")
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(429)
			fmt.Fprint(w, "slow down, this body is longer than the good one's would be if it were cut")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"ok","usage":{"prompt_tokens":7,"completion_tokens":3}}`)
	})
	clk.takeSleeps()
	r := send(t, "/v1/chat/completions", "sk-retry", chatBody)
	if r.status != 200 || r.body != `{"id":"ok","usage":{"prompt_tokens":7,"completion_tokens":3}}` {
		t.Fatalf("client got %d %q", r.status, r.body)
	}
	if r.header.Get("X-From-429") != "" {
		t.Errorf("a header of a thrown-away 429 leaked: %v", r.header)
	}
	if ct := r.header.Values("Content-Type"); len(ct) != 1 || ct[0] != "application/json" {
		t.Errorf("Content-Type %q, want the 200's own only", ct)
	}
	if cl := r.header.Values("Content-Length"); len(cl) > 1 || (len(cl) == 1 && cl[0] != strconv.Itoa(len(r.body))) {
		t.Errorf("Content-Length %q for a body of %d", cl, len(r.body))
	}
	if got := r.header.Get("x-llm-ratelimit-attempts"); got != "3" {
		t.Errorf("x-llm-ratelimit-attempts = %q, want 3", got)
	}
	if log.count() != 3 || log.bodies[0] != chatBody || log.bodies[1] != chatBody || log.bodies[2] != chatBody {
		t.Errorf("upstream saw %d bodies, want 3 identical: %q", log.count(), log.bodies)
	}
	// Three upstream calls, one debit of the key.
	if r := send(t, "/v1/chat/completions", "sk-retry", chatBody); r.header.Get("x-ratelimit-remaining-requests") != "8" {
		t.Errorf("remaining requests after the retried request and one more: %q, want 8", r.header.Get("x-ratelimit-remaining-requests"))
	}
	waits := clk.takeSleeps()
	if len(waits) != 2 {
		t.Fatalf("slept %v, want two waits", waits)
	}
	for _, w := range waits {
		if w < 50*time.Millisecond || w > 60*time.Millisecond {
			t.Errorf("wait %v: want the 50ms hint stretched by at most the 0.2 jitter", w)
		}
	}
}

func TestGivesUpWhenTheHintPassesMaxTotal(t *testing.T) {
	mustLoad(t, "zone retry_giveup\ntpm 100000\nretry {\n\tmax_total 10s\n}")
	var log upstreamLog
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		log.record(r)
		w.Header().Set("Retry-After", "600")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(429)
		fmt.Fprint(w, `{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","code":"rate_limit_exceeded"}}`)
	})
	r := send(t, "/v1/chat/completions", "sk-giveup", chatBody)
	if r.status != 429 || r.header.Get("Retry-After") != "600" || !strings.Contains(r.body, "Rate limit reached for gpt-4o") {
		t.Fatalf("want the upstream's own 429 handed through, got %d %v %s", r.status, r.header, r.body)
	}
	if log.count() != 1 {
		t.Errorf("upstream calls = %d, want 1", log.count())
	}
	// The tokens came back; the request still counts.
	setUpstream(t, noUsage)
	r = send(t, "/v1/chat/completions", "sk-giveup", chatBody)
	if rem := intHeader(t, r, "x-ratelimit-remaining-tokens"); rem < 100000-200 {
		t.Errorf("remaining tokens %d: the given-up request was not refunded", rem)
	}
}

func TestClientCancelDuringAWaitReleasesAndRefunds(t *testing.T) {
	mustLoad(t, "zone retry_cancel\ntpm 100000")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("retry-after-ms", "1000")
		w.WriteHeader(429)
	})
	clk.setManual(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := client.Do(newReq(t, "/v1/chat/completions", "sk-cancel", chatBody).WithContext(ctx)); err == nil {
			resp.Body.Close()
		}
	}()
	eventually(t, "the request to wait for its retry", func() bool { return clk.sleeping() == 1 })
	z, kh := zoneOf(t, "retry_cancel"), hashKey("sk-cancel")
	if z.inflight(kh) != 1 {
		t.Fatalf("in flight = %d during the wait", z.inflight(kh))
	}
	cancel()
	<-done
	eventually(t, "the slot to come back", func() bool { return z.inflight(kh) == 0 })
	if clk.sleeping() != 0 {
		t.Errorf("a wait outlived its client")
	}
	setUpstream(t, noUsage)
	// The cooldown gate the 429 closed is still shut on the fake clock.
	clk.Advance(2 * time.Second)
	r := send(t, "/v1/chat/completions", "sk-cancel", chatBody)
	if rem := intHeader(t, r, "x-ratelimit-remaining-tokens"); rem < 100000-200 {
		t.Errorf("remaining tokens %d: the cancelled request was not refunded", rem)
	}
}

func TestNonRetryable429sReachTheUpstreamOnce(t *testing.T) {
	for _, tc := range []struct{ name, path, body string }{
		{"openai insufficient_quota", "/v1/chat/completions", `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}`},
		{"anthropic spend limit", "/v1/messages", `{"type":"error","error":{"type":"enforced_spend_limit_reached","message":"spend limit"}}`},
		{"request too large", "/v1/chat/completions", `{"error":{"message":"Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 45000.","type":"tokens","code":"rate_limit_exceeded"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustLoad(t, "zone nonretry\nrpm 100")
			var calls atomic.Int32
			setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				w.Header().Set("Retry-After", "1")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(429)
				fmt.Fprint(w, tc.body)
			})
			body := chatBody
			if tc.path == "/v1/messages" {
				body = messagesBody
			}
			r := send(t, tc.path, "sk-nr", body)
			if r.status != 429 || r.body != tc.body || r.header.Get("x-should-retry") != "false" {
				t.Fatalf("got %d %v %s", r.status, r.header, r.body)
			}
			if calls.Load() != 1 {
				t.Errorf("upstream calls = %d, want 1", calls.Load())
			}
		})
	}
}

func TestCooldownGateHoldsTheZoneUntilTheHint(t *testing.T) {
	mustLoad(t, "zone gate\nrpm 1000")
	var log upstreamLog
	var opens atomic.Int64 // unix ns at which the gate opens
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if log.record(r) == 1 {
			opens.Store(clk.Now().Add(time.Second).UnixNano())
			w.Header().Set("retry-after", "1")
			w.WriteHeader(429)
			return
		}
		noUsage(w, r)
	})
	clk.setManual(t)
	results := make(chan int, 20)
	do := func() {
		r := sendReq(t, newReq(t, "/v1/chat/completions", "sk-gate", chatBody))
		results <- r.status
	}
	go do()
	eventually(t, "the first request to wait for its retry", func() bool { return clk.sleeping() == 1 })
	for i := 0; i < 19; i++ {
		go do()
	}
	eventually(t, "19 requests to wait at the gate", func() bool { return clk.sleeping() == 20 })
	if n := log.count(); n != 1 {
		t.Fatalf("upstream saw %d requests while the gate was closed, want 1", n)
	}
	clk.Advance(2 * time.Second) // past every stretched wait
	for i := 0; i < 20; i++ {
		if s := <-results; s != 200 {
			t.Errorf("a client got %d", s)
		}
	}
	if n := log.count(); n != 21 {
		t.Errorf("upstream saw %d requests, want 21 (20 + one retry)", n)
	}
	for i, at := range log.times[1:] {
		if at.UnixNano() < opens.Load() {
			t.Errorf("request %d reached the upstream at %v, before the gate opened", i+2, at)
		}
	}
}

func TestRetryOffHandsThe429StraightThrough(t *testing.T) {
	mustLoad(t, "zone retryoff\nrpm 100\nretry off")
	var calls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("retry-after-ms", "10")
		w.WriteHeader(429)
	})
	if r := send(t, "/v1/chat/completions", "sk-off", chatBody); r.status != 429 || calls.Load() != 1 {
		t.Fatalf("status %d after %d calls", r.status, calls.Load())
	}
}
