package llmratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// redisServer is a real redis-server process on a free port, with its own
// temporary directory.
type redisServer struct {
	addr string
	dir  string
	cmd  *exec.Cmd
}

// startRedis starts redis-server for one test. Without the binary the test
// is skipped, except in CI (CI set to anything), where it fails: CI
// installs redis-server, so a missing one is a defect there.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server is not on PATH under CI (CI=%q): .ci/run installs it: %v", os.Getenv("CI"), err)
		}
		t.Skip("redis-server is not on PATH: install it (Debian: apt-get install redis-server) to run the Redis tests")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	rs := &redisServer{addr: addr, dir: t.TempDir()}
	rs.start(t)
	t.Cleanup(rs.stop)
	return rs
}

func (s *redisServer) start(t testing.TB) {
	t.Helper()
	_, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.dir)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	defer c.Close()
	for i := 0; i < 200; i++ {
		if c.Ping(context.Background()).Err() == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("redis-server did not start")
}

func (s *redisServer) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// redisHandler is a handler instance provisioned on its own, as a second
// gateway instance would be, using the Redis store.
func redisHandler(t testing.TB, addr, fail string, lim Limits) *Handler {
	h := provisioned(t, &Handler{Zone: "redis-" + t.Name(), Limits: lim,
		Store: &StoreConfig{Redis: &RedisConfig{Address: addr, Fail: fail, Prefix: "t:" + t.Name() + ":"}}})
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
	a := redisHandler(t, srv.addr, "open", Limits{RPM: 60})
	b := redisHandler(t, srv.addr, "open", Limits{RPM: 60})
	start := time.Now()
	ok, _ := admitAcross(t, 200, "sk-shared", chatBody, nil, a, b)
	refill := int64(time.Since(start).Seconds()) + 1 // rpm 60 refills one a second
	if ok < 60 || ok > 60+refill {
		t.Fatalf("two instances admitted %d of 200 with rpm 60 (refill allowance %d)", ok, refill)
	}
}

func TestRedisAdmissionIsAllOrNothing(t *testing.T) {
	srv := startRedis(t)
	h := redisHandler(t, srv.addr, "open", Limits{RPM: 10, TPM: 1000})
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":600}`
	if w := serveOnce(t, h, "sk-atomic", body); w.Code != 200 {
		t.Fatalf("first: %d", w.Code)
	}
	// Settled to the upstream's usage (269 tokens): room for one more 600.
	if w := serveOnce(t, h, "sk-atomic", body); w.Code != 200 {
		t.Fatalf("second: %d %s", w.Code, w.Body)
	}
	w := serveOnce(t, h, "sk-atomic", body)
	if w.Code != 429 || !bytes.Contains(w.Body.Bytes(), []byte("tokens per min")) {
		t.Fatalf("third: %d %s", w.Code, w.Body)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.addr})
	defer c.Close()
	level, err := c.HGet(context.Background(), h.rs.zoneBase(h.Zone)+hashKey("sk-atomic").id()+":rpm", "l").Float64()
	if err != nil {
		t.Fatal(err)
	}
	if level < 8 || level > 8.1 {
		t.Errorf("rpm level in Redis %v: the TPM rejection must not have taken a request (want 8 + refill)", level)
	}
	keys, err := c.Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if bytes.Contains([]byte(k), []byte("sk-atomic")) {
			t.Errorf("a Redis key holds the raw API key: %s", k)
		}
	}
}

func TestRedisLeasesComeBackAfterTheirTTL(t *testing.T) {
	srv := startRedis(t)
	old := leaseTTL
	leaseTTL = 300 * time.Millisecond
	t.Cleanup(func() { leaseTTL = old })
	h := redisHandler(t, srv.addr, "open", Limits{Concurrent: 1})
	q := ask{kh: hashKey("sk-lease"), lim: h.Limits}
	ctx := context.Background()
	held, dec, err := h.rs.admit(ctx, h.Zone, q)
	if err != nil || !dec.ok {
		t.Fatalf("first: %v %+v", err, dec)
	}
	// This instance "dies" holding the slot: it never finishes.
	if _, dec, err := h.rs.admit(ctx, h.Zone, q); err != nil || dec.ok || dec.blocking.dim != dimConcurrency {
		t.Fatalf("second while the slot is held: %v %+v", err, dec)
	}
	time.Sleep(400 * time.Millisecond) // past the lease's TTL on Redis's clock
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
	_ = held
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
	for i := 0; i < 2; i++ {
		if w := serveOnce(t, closed, "sk-after", chatBody); w.Code != 200 {
			t.Fatalf("after recovery %d: %d %s", i, w.Code, w.Body)
		}
	}
	if w := serveOnce(t, open, "sk-after", chatBody); w.Code != 429 {
		t.Fatalf("the other instance must see the shared bucket again: %d", w.Code)
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
