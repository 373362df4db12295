package llmratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// redisHandler is a handler instance provisioned on its own, as a second
// gateway instance would be, using the Redis store.
func redisHandler(t testing.TB, addr, fail string, lim Limits) *Handler {
	h := provisioned(t, &Handler{Zone: "redis-" + t.Name(), Limits: lim,
		Store: &StoreConfig{Redis: &RedisConfig{Address: addr, Fail: fail, Prefix: "t:" + t.Name() + ":", Timeout: testRedisTimeout}}})
	h.logger = zap.NewNop()
	return h
}

// serveOnce sends one request through h. The handler answers every
// outcome itself: an error it returns instead is reported on t (it may be
// called from other goroutines), since the recorder's Code would then be
// an unwritten 200.
func serveOnce(t testing.TB, h *Handler, key, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", bytes.NewBufferString(body))
	r.Header.Set("Authorization", "Bearer "+key)
	w := httptest.NewRecorder()
	var next caddyhttp.Handler = nextJSON{}
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Errorf("ServeHTTP for %s: %v", key, err)
	}
	return w
}

// admitAcross sends n requests at once for key, alternating over the
// handlers (gateway instances), and counts the 200s and the 429s; on each
// 429 it calls check (when not nil). Any other status fails t.
func admitAcross(t testing.TB, n int, key, body string, check func(*httptest.ResponseRecorder), hs ...*Handler) (ok, rejected int64) {
	t.Helper()
	var okN, rejN atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch w := serveOnce(t, hs[i%len(hs)], key, body); w.Code {
			case 200:
				okN.Add(1)
			case 429:
				rejN.Add(1)
				if check != nil {
					check(w)
				}
			default:
				t.Errorf("status %d, want 200 or 429: %s", w.Code, w.Body)
			}
		}()
	}
	wg.Wait()
	return okN.Load(), rejN.Load()
}

func TestTwoInstancesShareOneLimitThroughRedis(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	c := srv.client(t)
	a := redisHandler(t, srv.addr, "open", Limits{RPM: 60})
	b := redisHandler(t, srv.addr, "open", Limits{RPM: 60})
	errorsBefore := testutil.ToFloat64(a.zone.m.storeErrors) // the zone's, over -count runs
	from := redisNow(t, c)
	ok, _ := admitAcross(t, 200, "sk-shared", chatBody, nil, a, b)
	to := redisNow(t, c)
	// A full bucket of 60, and what it refilled (one a second) on Redis's
	// clock while the 200 were decided.
	if most := 60 + refillBound(60, to.Sub(from)+slack(200)); ok < 60 || ok > most {
		t.Fatalf("two instances admitted %d of 200 with rpm 60, want 60 to %d (%v on Redis's clock)", ok, most, to.Sub(from))
	}
	if e := testutil.ToFloat64(a.zone.m.storeErrors) - errorsBefore; e != 0 {
		t.Fatalf("%v store errors: some requests were decided by one instance alone (fail open)", e)
	}
}

func TestRedisAdmissionIsAllOrNothing(t *testing.T) {
	srv := startRedis(t)
	c := srv.client(t)
	ctx := context.Background()
	h := redisHandler(t, srv.addr, "open", Limits{RPM: 10, TPM: 1000})
	kb := h.rs.zoneBase(h.Zone) + hashKey("sk-atomic").id() + ":"
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":600}`
	from := redisNow(t, c)
	if w := serveOnce(t, h, "sk-atomic", body); w.Code != 200 {
		t.Fatalf("first: %d", w.Code)
	}
	// Settled to the upstream's usage (269 tokens): room for one more 600.
	if w := serveOnce(t, h, "sk-atomic", body); w.Code != 200 {
		t.Fatalf("second: %d %s", w.Code, w.Body)
	}
	to := redisNow(t, c)
	level, err := c.HGet(ctx, kb+"rpm", "l").Float64()
	if err != nil {
		t.Fatal(err)
	}
	levelIn(t, "rpm in Redis after two requests", level, 8, 10, from, to, 2)
	// 1000 - 2 × 269 tokens are left, less than a third 600 needs: it is
	// refused on tpm, and must leave the rpm bucket as it was. (Should the
	// machine be so slow that tpm refilled 600 meanwhile, the request
	// after it is refused instead.)
	var rpmBefore map[string]string
	var w *httptest.ResponseRecorder
	untilRefused(t, c, "600 more tokens", bucketLevel(t, c, kb+"tpm", 1000, to), to, 1000, 600, func() int {
		if rpmBefore, err = c.HGetAll(ctx, kb+"rpm").Result(); err != nil {
			t.Fatal(err)
		}
		w = serveOnce(t, h, "sk-atomic", body)
		return w.Code
	})
	if w.Code != 429 || !bytes.Contains(w.Body.Bytes(), []byte("tokens per min")) {
		t.Fatalf("third: %d %s", w.Code, w.Body)
	}
	if rpmAfter, err := c.HGetAll(ctx, kb+"rpm").Result(); err != nil || !maps.Equal(rpmBefore, rpmAfter) {
		t.Errorf("the rpm bucket in Redis went from %v to %v (%v): the TPM rejection must not have taken a request", rpmBefore, rpmAfter, err)
	}
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if bytes.Contains([]byte(k), []byte("sk-atomic")) {
			t.Errorf("a Redis key holds the raw API key: %s", k)
		}
	}
}

// A slot held by an instance that died comes back when its lease's TTL has
// passed on Redis's clock; one given back comes back at once.
func TestRedisLeasesComeBackAfterTheirTTL(t *testing.T) {
	srv := startRedis(t)
	c := srv.client(t)
	ctx := context.Background()
	old := leaseTTL
	t.Cleanup(func() { leaseTTL = old })
	h := redisHandler(t, srv.addr, "open", Limits{Concurrent: 1})
	// The second admission below must be decided before the lease
	// expires: a machine too slow for the TTL tries again with a longer
	// one, on a fresh key.
	for try, ttl := 0, 500*time.Millisecond; ; try, ttl = try+1, 4*ttl {
		leaseTTL = ttl
		key := fmt.Sprintf("sk-lease-%d", try)
		q := ask{kh: hashKey(key), lim: h.Limits}
		from := redisNow(t, c)
		_, dec, err := h.rs.admit(ctx, h.Zone, q)
		if err != nil || !dec.ok {
			t.Fatalf("first: %v %+v", err, dec)
		}
		mid := redisNow(t, c)
		// This instance "dies" holding the slot: it never finishes. Its
		// lease expires ttl after the admission, on Redis's clock.
		leases, err := c.ZRangeWithScores(ctx, h.rs.zoneBase(h.Zone)+hashKey(key).id()+":leases", 0, -1).Result()
		if err != nil || len(leases) != 1 {
			t.Fatalf("leases %v (%v), want the one held", leases, err)
		}
		expiry := time.UnixMicro(int64(leases[0].Score))
		if expiry.Before(from.Add(ttl)) || expiry.After(mid.Add(ttl)) {
			t.Fatalf("the lease expires at %v, want %v after the admission (between %v and %v)", expiry, ttl, from.Add(ttl), mid.Add(ttl))
		}
		_, dec, err = h.rs.admit(ctx, h.Zone, q)
		if to := redisNow(t, c); !to.Before(from.Add(ttl)) {
			if try < 4 {
				t.Logf("the second admission ended %v after the first began, past the lease's %v: again with a longer TTL", to.Sub(from), ttl)
				continue
			}
			t.Fatalf("the second admission ended %v after the first began: the machine is too slow even for a %v TTL", to.Sub(from), ttl)
		}
		if err != nil || dec.ok || dec.blocking.dim != dimConcurrency {
			t.Fatalf("second while the slot is held: %v %+v", err, dec)
		}
		waitRedisPast(t, c, expiry)
		tk, dec, err := h.rs.admit(ctx, h.Zone, q)
		if err != nil || !dec.ok {
			t.Fatalf("after the TTL the slot must be free: %v %+v", err, dec)
		}
		// Normal completion gives the slot back at once.
		tk.finish(0, nil, false)
		tk2, dec, err := h.rs.admit(ctx, h.Zone, q)
		if err != nil || !dec.ok {
			t.Fatalf("after finishing the slot must be free: %v %+v", err, dec)
		}
		tk2.finish(0, nil, false)
		return
	}
}

func TestRedisOutageFailsOpenOrClosedAndRecovers(t *testing.T) {
	srv := startRedis(t)
	open := redisHandler(t, srv.addr, "open", Limits{RPM: 2})
	closed := redisHandler(t, srv.addr, "closed", Limits{RPM: 2})
	if w := serveOnce(t, open, "sk-outage", chatBody); w.Code != 200 {
		t.Fatalf("before the outage: %d", w.Code)
	}
	srv.stop()
	errorsBefore := testutil.ToFloat64(open.zone.m.storeErrors)
	if w := serveOnce(t, open, "sk-outage-2", chatBody); w.Code != 200 {
		t.Fatalf("fail open during the outage: %d %s", w.Code, w.Body)
	}
	if got := testutil.ToFloat64(open.zone.m.storeErrors); got <= errorsBefore {
		t.Errorf("store_errors_total did not rise: %v", got)
	}
	w := serveOnce(t, closed, "sk-outage", chatBody)
	var e errorJSON
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("fail closed during the outage: %d, error body is not JSON: %v: %s", w.Code, err, w.Body)
	}
	if w.Code != 503 || e.Error.Code == nil || *e.Error.Code != "store_unavailable" || w.Header().Get("x-should-retry") != "true" {
		t.Fatalf("fail closed during the outage: %d %v %s", w.Code, w.Header(), w.Body)
	}
	// Redis comes back on the same address: shared limiting resumes
	// without restarting anything. (Its data is gone: a fresh bucket.)
	srv.start(t)
	c := srv.client(t)
	from := redisNow(t, c)
	for i := 0; i < 2; i++ {
		if w := serveOnce(t, closed, "sk-after", chatBody); w.Code != 200 {
			t.Fatalf("after recovery %d: %d %s", i, w.Code, w.Body)
		}
	}
	// The other instance must see the shared bucket again: empty, but for
	// what it refilled (2 a minute) since.
	if code, _ := untilRefused(t, c, "the other instance", 0, from, 2, 1, func() int { return serveOnce(t, open, "sk-after", chatBody).Code }); code != 429 {
		t.Fatalf("the other instance must see the shared bucket again: %d", code)
	}
}

// BenchmarkRedisAdmission is an admission and its settle through Redis on
// loopback, reporting p50/p99 latency; compare BenchmarkAdmitSettle.
// BenchmarkRedisAdmission is one admission and its settle through the
// shared store: against one redis-server and against a 3-master Redis
// Cluster, from 1 and from 64 concurrent clients (each its own key), with
// the latency's p50 and p99 and the admissions per second.
func BenchmarkRedisAdmission(b *testing.B) {
	benchRedisTargets(b, &Handler{Limits: Limits{RPM: 1 << 40, TPM: 1 << 50, Concurrent: 1 << 20}})
}

// benchRedisTargets runs benchRedisAdmission for a handler like proto
// against one redis-server and a 3-master Cluster, from 1 and 64 clients.
func benchRedisTargets(b *testing.B, proto *Handler) {
	for _, target := range []string{"single", "cluster"} {
		var rc *RedisConfig
		if target == "single" {
			rc = &RedisConfig{Address: startRedis(b).addr}
		} else {
			addrs := startCluster(b)
			rc = &RedisConfig{Address: addrs[0], Addresses: addrs[1:], Cluster: true}
		}
		rc.Fail, rc.Prefix, rc.Timeout = "closed", "bench:", caddy.Duration(time.Second)
		hc := *proto
		hc.Zone, hc.Store = "bench-redis-"+target, &StoreConfig{Redis: rc}
		h := provisioned(b, &hc)
		for _, clients := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/clients=%d", target, clients), func(b *testing.B) {
				benchRedisAdmission(b, h, clients)
			})
		}
	}
}

func benchRedisAdmission(b *testing.B, h *Handler, clients int) {
	ctx := context.Background()
	lats := make([][]time.Duration, clients)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := ask{kh: hashKey(fmt.Sprintf("sk-bench-%d", c)), lim: h.Limits, d: demand{in: 300, out: 512}, accts: h.accountsFor("")}
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				tk, dec, err := h.rs.admit(ctx, h.Zone, q)
				if err != nil || !dec.ok {
					b.Error(err, dec)
					return
				}
				tk.finish(0, &usage{Input: 280, Output: 40}, false)
				lats[c] = append(lats[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var lat []time.Duration
	for _, l := range lats {
		lat = append(lat, l...)
	}
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "admissions/s")
}
