package llmratelimit

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRejectsFourthRequestOverRPM(t *testing.T) {
	for _, tc := range []struct {
		name, path, body, wantType string
		anthropic                  bool
	}{
		{"openai", "/v1/chat/completions", chatBody, "requests", false},
		{"anthropic", "/v1/messages", messagesBody, "rate_limit_error", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustLoad(t, "zone rpm4_"+tc.name+"\nrpm 3")
			for i := 1; i <= 3; i++ {
				if r := send(t, tc.path, "sk-rpm", tc.body); r.status != 200 {
					t.Fatalf("request %d: status %d: %s", i, r.status, r.body)
				}
			}
			r := send(t, tc.path, "sk-rpm", tc.body)
			if r.status != http.StatusTooManyRequests {
				t.Fatalf("4th request: status %d, want 429", r.status)
			}
			want := map[string]string{
				"Retry-After":                    "20", // one request refills in 60s/3
				"retry-after-ms":                 "20000",
				"x-should-retry":                 "true",
				"x-ratelimit-limit-requests":     "3",
				"x-ratelimit-remaining-requests": "0",
				"x-ratelimit-reset-requests":     "1m0s",
				"Content-Type":                   "application/json",
			}
			if tc.anthropic { // Anthropic's own family instead
				for _, k := range []string{"limit", "remaining", "reset"} {
					delete(want, "x-ratelimit-"+k+"-requests")
				}
				want["anthropic-ratelimit-requests-limit"] = "3"
				want["anthropic-ratelimit-requests-remaining"] = "0"
				// full again in a minute, rounded up to the second
				want["anthropic-ratelimit-requests-reset"] = clk.Now().Add(time.Minute + time.Second - 1).UTC().Truncate(time.Second).Format(time.RFC3339)
			}
			for h, want := range want {
				if got := r.header.Get(h); got != want {
					t.Errorf("%s = %q, want %q", h, got, want)
				}
			}
			e := r.errorBody(t)
			if tc.anthropic {
				if e.Type != "error" || e.Error.Type != "rate_limit_error" {
					t.Errorf("anthropic shape: %s", r.body)
				}
			} else if e.Error.Type != "requests" || e.Error.Code == nil || *e.Error.Code != "rate_limit_exceeded" || !strings.Contains(r.body, `"param":null`) {
				t.Errorf("openai shape: %s", r.body)
			}
			if !strings.Contains(e.Error.Message, "requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s") {
				t.Errorf("message: %q", e.Error.Message)
			}
			// A request admitted later sees the refill.
			clk.Advance(20 * time.Second)
			if r := send(t, tc.path, "sk-rpm", tc.body); r.status != 200 {
				t.Fatalf("after 20s: status %d", r.status)
			}
		})
	}
}

// noUsage answers 200 JSON without a usage block, so that the reservation
// stands.
func noUsage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"id":"x","object":"chat.completion","choices":[]}`)
}

func TestEachTokenLimitRejectsOnItsOwn(t *testing.T) {
	setUpstream(t, noUsage)
	// ~60 tokens of input each; 600 tokens of output reserved each.
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("word ", 60) + `"}],"max_tokens":600}`
	for _, tc := range []struct {
		limit, wantType, wantName string
	}{
		{"tpm 1000", "tokens", "tokens per min (TPM)"},
		{"itpm 100", "input_tokens", "input tokens per min (ITPM)"},
		{"otpm 1000", "output_tokens", "output tokens per min (OTPM)"},
	} {
		t.Run(tc.wantType, func(t *testing.T) {
			mustLoad(t, "zone tok_"+tc.wantType+"\n"+tc.limit)
			if r := send(t, "/v1/chat/completions", "sk-tok", body); r.status != 200 {
				t.Fatalf("first: %d %s", r.status, r.body)
			}
			r := send(t, "/v1/chat/completions", "sk-tok", body)
			if r.status != 429 {
				t.Fatalf("second: %d, want 429", r.status)
			}
			e := r.errorBody(t)
			if e.Error.Type != tc.wantType || !strings.Contains(e.Error.Message, tc.wantName) {
				t.Errorf("type %q message %q", e.Error.Type, e.Error.Message)
			}
			if r.header.Get("x-should-retry") != "true" || r.header.Get("Retry-After") == "" {
				t.Errorf("retry headers: %v", r.header)
			}
			if r.header.Get("x-ratelimit-limit-tokens") == "" {
				t.Errorf("no x-ratelimit-limit-tokens")
			}
		})
	}
}

func TestRequestThatCanNeverFitIsRejectedForGood(t *testing.T) {
	mustLoad(t, "zone neverfit\ntpm 1000")
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5000}`
	for i, wait := range []time.Duration{0, 10 * time.Minute, time.Hour} {
		clk.Advance(wait)
		r := send(t, "/v1/chat/completions", "sk-big", body)
		if r.status != 429 {
			t.Fatalf("try %d: status %d, want 429", i, r.status)
		}
		if r.header.Get("x-should-retry") != "false" || r.header.Get("Retry-After") != "" || r.header.Get("retry-after-ms") != "" {
			t.Errorf("try %d: headers %v", i, r.header)
		}
		if e := r.errorBody(t); !strings.Contains(e.Error.Message, "request too large for tokens per min (TPM)") {
			t.Errorf("message %q", e.Error.Message)
		}
	}
	// The failed tries debited nothing: a small request still has the
	// whole bucket.
	r := send(t, "/v1/chat/completions", "sk-big", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":10}`)
	if r.status != 200 {
		t.Fatalf("small request: %d", r.status)
	}
}

func TestConcurrencySlotsAreReleasedOnCancelAndAbort(t *testing.T) {
	mustLoad(t, "zone conc\nconcurrent 2")
	arrived := make(chan struct{}, 10)
	release := make(chan struct{})
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		switch r.Header.Get("X-Mode") {
		case "abort":
			// Headers and part of the body, then the upstream dies: Caddy's
			// reverse_proxy panics with http.ErrAbortHandler.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(200)
			fmt.Fprint(w, `{"id":"x",`)
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		default:
			select {
			case <-release:
			case <-r.Context().Done():
			}
			noUsage(w, r)
		}
	})
	defer close(release)
	z := zoneOf(t, "conc")
	kh := hashKey("sk-conc")

	// Two requests held open by the slow upstream.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for i := 0; i < 2; i++ {
		req := newReq(t, "/v1/chat/completions", "sk-conc", chatBody).WithContext(ctx)
		go func() {
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
			done <- struct{}{}
		}()
	}
	<-arrived
	<-arrived
	if got := z.inflight(kh); got != 2 {
		t.Fatalf("in flight = %d, want 2", got)
	}
	r := send(t, "/v1/chat/completions", "sk-conc", chatBody)
	if r.status != 429 || r.header.Get("Retry-After") != "1" || r.header.Get("retry-after-ms") != "1000" {
		t.Fatalf("third concurrent: %d %v", r.status, r.header)
	}
	if e := r.errorBody(t); e.Error.Type != "concurrency" {
		t.Errorf("type %q", e.Error.Type)
	}

	// The clients go away: both slots come back.
	cancel()
	<-done
	<-done
	eventually(t, "in flight back to 0 after cancel", func() bool { return z.inflight(kh) == 0 })

	// An upstream that dies mid-response makes reverse_proxy panic with
	// http.ErrAbortHandler through the handler; the slot still comes back.
	req := newReq(t, "/v1/chat/completions", "sk-conc", chatBody)
	req.Header.Set("X-Mode", "abort")
	if resp, err := client.Do(req); err == nil {
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	<-arrived
	eventually(t, "in flight back to 0 after abort", func() bool { return z.inflight(kh) == 0 })
}

func TestSettlesToUpstreamUsage(t *testing.T) {
	mustLoad(t, "zone settle\ntpm 10000")
	// Estimate: ~10 input + 1000 reserved output. The upstream reports
	// 10 + 5: the difference comes back before the next request.
	body := `{"model":"m","messages":[{"role":"user","content":"Say hello to the gateway."}],"max_tokens":1000}`
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 10, 5) })
	r1 := send(t, "/v1/chat/completions", "sk-settle", body)
	if r1.status != 200 {
		t.Fatalf("first: %d", r1.status)
	}
	if r1.header.Get("x-ratelimit-remaining-tokens") == "999999" {
		t.Errorf("upstream's x-ratelimit header was not replaced")
	}
	rem1 := intHeader(t, r1, "x-ratelimit-remaining-tokens")
	if rem1 > 9000 {
		t.Fatalf("first response remaining %d: the reservation of 1000 was not debited", rem1)
	}
	r2 := send(t, "/v1/chat/completions", "sk-settle", body)
	rem2 := intHeader(t, r2, "x-ratelimit-remaining-tokens")
	// After settling r1 to 15 tokens, r2's own reservation is the only
	// large debit: remaining ≈ 10000 - 15 - (r2's ~1010).
	if rem2 < 8950 || rem2 > 8990 {
		t.Errorf("second response remaining %d, want ≈ 10000-15-1010 (refund of r1 visible)", rem2)
	}

	// A 500 refunds every token of the request (it still counts as a
	// request).
	mustLoad(t, "zone settle500\ntpm 10000\nrpm 100\nretry off")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	if r := send(t, "/v1/chat/completions", "sk-500", body); r.status != 500 {
		t.Fatalf("500 passes through: %d", r.status)
	}
	setUpstream(t, noUsage)
	r3 := send(t, "/v1/chat/completions", "sk-500", body)
	rem3 := intHeader(t, r3, "x-ratelimit-remaining-tokens")
	remReq := intHeader(t, r3, "x-ratelimit-remaining-requests")
	if rem3 < 8980 || rem3 > 8995 {
		t.Errorf("after a 500, remaining tokens %d: want only this request's ~1010 debited", rem3)
	}
	if remReq != 98 {
		t.Errorf("after a 500, remaining requests %d, want 98 (the 500 still counts)", remReq)
	}
}

// intHeader is a reply's integer header, such as
// x-ratelimit-remaining-tokens; a missing or malformed one fails the test
// rather than reading as 0.
func intHeader(t *testing.T, r reply, name string) int {
	t.Helper()
	v, err := strconv.Atoi(r.header.Get(name))
	if err != nil {
		t.Fatalf("header %s: %v (status %d, headers %v, body %s)", name, err, r.status, r.header, r.body)
	}
	return v
}
