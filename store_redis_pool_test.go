package llmratelimit

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// poolProvider is a provider behind several accounts, as the gateway's
// next handler: it tells the accounts apart by the X-Account header each
// account's header_up sets, counts the calls each one gets, and answers
// what answer says for that account (nil: 200 with usage).
type poolProvider struct {
	mu     sync.Mutex
	calls  map[string]int
	answer func(account string, call int, w http.ResponseWriter) bool // true: answered
}

func (p *poolProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	_, _ = io.Copy(io.Discard, r.Body)
	acct := r.Header.Get("X-Account")
	p.mu.Lock()
	if p.calls == nil {
		p.calls = map[string]int{}
	}
	p.calls[acct]++
	n := p.calls[acct]
	p.mu.Unlock()
	if p.answer != nil && p.answer(acct, n, w) {
		return nil
	}
	return nextJSON{}.ServeHTTP(w, r)
}

func (p *poolProvider) callsOf(acct string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[acct]
}

// poolAccounts are named accounts a, b, c… with the given limits, each
// marking its calls with X-Account.
func poolAccounts(lim Limits, names ...string) []Account {
	var out []Account
	for _, n := range names {
		out = append(out, Account{Name: n, Limits: lim, HeaderUp: map[string]string{"X-Account": n}})
	}
	return out
}

// sendTo sends one chat request for key through instance h to next.
func sendTo(t *testing.T, h *Handler, key string, next *poolProvider) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", bytes.NewBufferString(chatBody))
	r.Header.Set("Authorization", "Bearer "+key)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return w
}

// A 429 that instance 1 sees cools its account on every instance until
// the hint passes: instances 2 and 3 send nothing to it meanwhile, and
// instance 1's request moves to another account at once. (The hint is an
// hour, so that no machine is slow enough to see it pass.)
func TestRedisPoolA429KeepsEveryInstanceOffTheAccount(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	c := srv.client(t)
	zero := 0.0
	accts := poolAccounts(Limits{RPM: 1000, TPM: 1 << 30}, "a", "b", "c")
	accts[0].Priority = -1 // a goes first while it can
	hs := gatewayInstances(t, srv.addr, 3, Handler{Limits: Limits{RPM: 1000}, Upstreams: accts,
		Retry: &RetryConfig{Base: caddy.Duration(time.Millisecond), Max: caddy.Duration(5 * time.Millisecond), Jitter: &zero}})
	const hint = time.Hour
	next := &poolProvider{answer: func(acct string, call int, w http.ResponseWriter) bool {
		if acct != "a" || call > 1 {
			return false
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(hint.Seconds())))
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}`)
		return true
	}}
	cooled := metricUpstreamCooldown.WithLabelValues(hs[0].Zone, "a")
	cooledBefore := testutil.ToFloat64(cooled)
	from := redisNow(t, c)
	if w := sendTo(t, hs[0], "sk-first", next); w.Code != 200 || w.Header().Get("x-llm-ratelimit-upstream") == "a" {
		t.Fatalf("instance 1: %d from %q, want 200 from another account after a's 429: %s", w.Code, w.Header().Get("x-llm-ratelimit-upstream"), w.Body)
	}
	to := redisNow(t, c)
	for i := range 12 {
		key := "sk-other-" + strconv.Itoa(i)
		if w := sendTo(t, hs[1+i%2], key, next); w.Code != 200 {
			t.Fatalf("instance %d: %d %s", 2+i%2, w.Code, w.Body)
		}
	}
	if n := next.callsOf("a"); n != 1 {
		t.Fatalf("account a got %d calls, want only the one that answered 429 (its cooldown is shared)", n)
	}
	if next.callsOf("b")+next.callsOf("c") != 13 {
		t.Fatalf("b and c got %d and %d calls, want 13 together", next.callsOf("b"), next.callsOf("c"))
	}
	// The cooldown is in Redis: until the hint after the 429, on Redis's
	// clock.
	cool, err := c.HGet(context.Background(), hs[0].rs.zoneBase(hs[0].Zone)+"a:a", "cool").Int64()
	if until := time.UnixMicro(cool); err != nil || until.Before(from.Add(hint)) || until.After(to.Add(hint)) {
		t.Fatalf("account a cools down until %v (%v), want %v after the 429: between %v and %v", until, err, hint, from.Add(hint), to.Add(hint))
	}
	// Every instance's stats show the pool as Redis holds it.
	for i, h := range hs {
		st := h.zone.stats(now().UnixNano()).Upstreams
		a := st["a"]
		if a.CooldownUntil == nil || a.CallsTotal != 1 || a.RateLimitedTotal != 1 || st["b"].CallsTotal+st["c"].CallsTotal != 13 {
			t.Errorf("instance %d's stats: a %+v, b %+v, c %+v; want a cooling down after its 1 call answered 429, b and c 13 calls", i+1, a, st["b"], st["c"])
		}
	}
	// Instance 1 counted the cooldown in its metrics.
	if v := testutil.ToFloat64(cooled) - cooledBefore; v != hint.Seconds() {
		t.Fatalf("cooldown seconds of a on instance 1: %v, want %v", v, hint.Seconds())
	}
}

// A key's requests spread over the instances stick to one account at low
// load (its affinity, kept in Redis), and each instance's stats show the
// same counts; no admission that did not wait counts as queued.
func TestRedisPoolAffinityHoldsAcrossInstances(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	c := srv.client(t)
	// 10 a minute an account: a key's 9 requests leave its account less
	// headroom than the others for the 54 s it takes to refill them.
	hs := gatewayInstances(t, srv.addr, 3, Handler{Limits: Limits{RPM: 1000},
		Upstreams: poolAccounts(Limits{RPM: 10, TPM: 1 << 30, Concurrent: 10}, "a", "b", "c")})
	next := &poolProvider{}
	served := map[string]map[string]int{}
	from := redisNow(t, c)
	for _, key := range []string{"sk-x", "sk-y", "sk-z"} {
		served[key] = map[string]int{}
		for i := range 9 {
			w := sendTo(t, hs[i%3], key, next)
			if w.Code != 200 {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
			served[key][w.Header().Get("x-llm-ratelimit-upstream")]++
		}
		if len(served[key]) != 1 {
			t.Errorf("%s was served by %v over three instances, want one account", key, served[key])
		}
	}
	// The keys spread over the accounts: the most headroom goes first, as
	// long as the account that served a key had not refilled since (on
	// Redis's clock).
	used := map[string]bool{}
	for _, m := range served {
		for a := range m {
			used[a] = true
		}
	}
	if took := redisNow(t, c).Sub(from); len(used) < 3 && took < 54*time.Second {
		t.Errorf("three keys went to %v in %v: the headroom order did not spread them", used, took)
	}
	for i, h := range hs {
		_, one := statsOf(t, h, hashKey("sk-x").id())
		if one.RequestsTotal != 9 || one.InFlight != 0 {
			t.Errorf("instance %d: sk-x requests_total %d, in_flight %d; want 9, 0", i, one.RequestsTotal, one.InFlight)
		}
		if q := testutil.ToFloat64(metricRequests.WithLabelValues(h.Zone, "queued")); q != 0 {
			t.Errorf("instance %d counted %v requests as queued: none waited", i, q)
		}
	}
	// Every lease came back.
	for _, a := range []string{"a", "b", "c"} {
		if n, err := c.ZCard(context.Background(), hs[0].rs.zoneBase(hs[0].Zone)+"a:"+a+":leases").Result(); err != nil || n != 0 {
			t.Errorf("account %s holds %d leases (%v) with nothing in flight", a, n, err)
		}
	}
}

// A limit learned by one instance (the provider's rate-limit headers)
// applies on every instance: the account's bucket is capped at what the
// provider said remains, in Redis.
func TestRedisPoolLearnedLimitAppliesOnAllInstances(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	c := srv.client(t)
	hs := gatewayInstances(t, srv.addr, 2, Handler{Limits: Limits{RPM: 1000}, Upstreams: poolAccounts(Limits{}, "a")})
	next := &poolProvider{answer: func(acct string, call int, w http.ResponseWriter) bool {
		// The provider says: 3 requests a minute, none left.
		w.Header().Set("x-ratelimit-limit-requests", "3")
		w.Header().Set("x-ratelimit-remaining-requests", "0")
		return false
	}}
	from := redisNow(t, c)
	if w := sendTo(t, hs[0], "sk-learn", next); w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	// Instance 2 never saw an answer, yet knows the account is spent: empty
	// when it was learned, it refills 3 a minute on Redis's clock.
	var w *httptest.ResponseRecorder
	code, served := untilRefused(t, c, "the learned 3 rpm", 0, from, 3, 1, func() int {
		w = sendTo(t, hs[1], "sk-learn-2", next)
		return w.Code
	})
	if code != 429 {
		t.Fatalf("instance 2 after instance 1 learned 3 rpm with none left: %d, want 429: %s", w.Code, w.Body)
	}
	if ra, _ := strconv.Atoi(w.Header().Get("Retry-After")); ra < 1 || ra > 21 {
		t.Fatalf("Retry-After %q, want the time one request takes to refill at 3 rpm (20 s)", w.Header().Get("Retry-After"))
	}
	if l, err := c.HGet(context.Background(), hs[0].rs.zoneBase(hs[0].Zone)+"a:a", "L1").Int(); err != nil || l != 3 {
		t.Fatalf("learned requests limit in Redis %d (%v), want 3", l, err)
	}
	if next.callsOf("a") != 1+served {
		t.Fatalf("the provider got %d calls, want %d", next.callsOf("a"), 1+served)
	}
}

// An account's concurrency is shared: with one slot per account and two
// accounts, a third request in flight anywhere is refused, and finished
// requests give their slots back.
func TestRedisPoolConcurrencyIsShared(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	hs := gatewayInstances(t, srv.addr, 3, Handler{Limits: Limits{RPM: 1000},
		Upstreams: poolAccounts(Limits{RPM: 1000, Concurrent: 1}, "a", "b")})
	release := make(chan struct{})
	var entered atomic.Int32
	next := &poolProvider{answer: func(string, int, http.ResponseWriter) bool {
		entered.Add(1)
		<-release
		return false
	}}
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = sendTo(t, hs[i], "sk-c"+strconv.Itoa(i), next).Code
		}()
	}
	for entered.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	if w := sendTo(t, hs[2], "sk-c2", next); w.Code != 429 {
		t.Fatalf("a third request with both accounts' slots taken: %d, want 429: %s", w.Code, w.Body)
	}
	close(release)
	wg.Wait()
	if codes[0] != 200 || codes[1] != 200 || next.callsOf("a") != 1 || next.callsOf("b") != 1 {
		t.Fatalf("codes %v, calls a %d b %d: want one request on each account", codes, next.callsOf("a"), next.callsOf("b"))
	}
	if w := sendTo(t, hs[2], "sk-c2", next); w.Code != 200 {
		t.Fatalf("after both finished: %d, want 200 (the slots came back)", w.Code)
	}
}

// BenchmarkRedisPoolAdmission is BenchmarkRedisAdmission with a pool of 8
// named accounts: the account is chosen in the admission's own script
// (one round trip), then settled.
func BenchmarkRedisPoolAdmission(b *testing.B) {
	var accts []Account
	for i := range 8 {
		accts = append(accts, Account{Name: "acct" + strconv.Itoa(i), Limits: Limits{RPM: 1 << 40, TPM: 1 << 50, Concurrent: 1 << 20}})
	}
	benchRedisTargets(b, &Handler{Limits: Limits{RPM: 1 << 40, TPM: 1 << 50, Concurrent: 1 << 20}, Upstreams: accts})
}
