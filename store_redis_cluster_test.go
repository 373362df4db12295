package llmratelimit

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// needTool skips a test when a Debian tool it drives is missing, and
// fails it under CI, where .ci/run installs it.
func needTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not on PATH under CI: .ci/run installs %s: %v", name, pkg, err)
		}
		t.Skipf("%s is not on PATH: install it (Debian: apt-get install %s)", name, pkg)
	}
}

// clusterPort is a loopback port that is free, and so is its cluster bus
// port (+10000).
func clusterPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.Intn(20000)
		ok := true
		for _, q := range []int{p, p + 10000} {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", q))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free port pair for a cluster node")
	return 0
}

// startProcess runs a command for the test's duration.
func startProcess(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// startCluster starts a Redis Cluster of 3 masters on loopback and returns
// their addresses.
func startCluster(t testing.TB) []string {
	t.Helper()
	needTool(t, "redis-server", "redis-server")
	needTool(t, "redis-cli", "redis-tools")
	var addrs []string
	for range 3 {
		dir := t.TempDir()
		_, p := launchOnFreePort(t, func() int { return clusterPort(t) }, "redis-server", func(p int) []string {
			return []string{"--port", strconv.Itoa(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--cluster-node-timeout", "2000",
				"--save", "", "--appendonly", "no", "--dir", dir}
		})
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	args := append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// Every node must agree that the cluster is up and every slot served:
	// one that does not yet answers CLUSTERDOWN.
	ready := func() bool {
		for _, a := range addrs {
			n := redis.NewClient(&redis.Options{Addr: a})
			info, err := n.ClusterInfo(context.Background()).Result()
			n.Close()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") ||
				!strings.Contains(info, "cluster_known_nodes:3") {
				return false
			}
		}
		return true
	}
	for range 1500 {
		if ready() {
			return addrs
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the cluster did not become ok")
	return nil
}

// On a 3-master Redis Cluster, two gateway instances share one key's rpm
// exactly, while each admission also touches the key × model and the
// account buckets: one script over one hash slot, so no CROSSSLOT (fail
// closed would answer 503).
func TestTwoInstancesShareOneLimitThroughARedisCluster(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	addrs := startCluster(t)
	mk := func() *Handler {
		h := provisioned(t, &Handler{Zone: "cluster-" + t.Name(), Limits: Limits{RPM: 60},
			Models:   []Model{{Name: "gpt-4o", Limits: Limits{RPM: 100000, TPM: 1 << 40}}},
			Upstream: &Account{Limits: Limits{RPM: 100000, TPM: 1 << 40}},
			Store: &StoreConfig{Redis: &RedisConfig{Address: addrs[0], Addresses: addrs[1:], Cluster: true,
				Fail: "closed", Timeout: testRedisTimeout, Prefix: "t:cluster:"}}})
		h.logger = zap.NewNop()
		return h
	}
	a, b := mk(), mk()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer c.Close()
	// The zone's keys are in one slot, so on one master; every master's
	// TIME is this machine's clock.
	from := redisNow(t, c)
	ok, _ := admitAcross(t, 200, "sk-cluster", chatBody, nil, a, b)
	to := redisNow(t, c)
	if most := 60 + refillBound(60, to.Sub(from)+slack(200)); ok < 60 || ok > most {
		t.Fatalf("two instances admitted %d of 200 with rpm 60 on the cluster, want 60 to %d (%v on Redis's clock)", ok, most, to.Sub(from))
	}
	// Every key of the zone is in one slot.
	slots := map[int64]bool{}
	err := c.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		keys, err := m.Keys(ctx, "*").Result()
		for _, k := range keys {
			s, err := c.ClusterKeySlot(ctx, k).Result()
			if err != nil {
				return err
			}
			slots[s] = true
		}
		return err
	})
	if err != nil || len(slots) != 1 {
		t.Fatalf("the zone's keys are in %d slots (%v), want 1", len(slots), err)
	}
	// The stats read the key's shared counters off the cluster (Redis's
	// TIME and the key's hash in one pipeline). The requests count in the
	// last minute while the ring's slots that hold them are in it: for
	// 55 s at least.
	k, found := a.zone.keyStats(hashKey("sk-cluster").id(), now().UnixNano())
	lastMinute := ok
	if !inLastMinute(t, c, from) {
		lastMinute = k.RequestsLastMinute // too late to tell: the total still counts
	}
	if !found || k.RequestsTotal != ok || k.RequestsLastMinute != lastMinute {
		t.Errorf("the key's stats: %+v (found %v), want %d requests, all in the last minute", k, found, ok)
	}
	t.Logf("%d of 200 admitted across two instances on a 3-master cluster", ok)
}

// sentinelSetup is a primary, its replica and one Sentinel watching them
// as "mymaster", on loopback.
type sentinelSetup struct {
	primary, replica, sentinel string
	primaryProc                *redisProc
}

func startSentinel(t testing.TB) *sentinelSetup {
	t.Helper()
	needTool(t, "redis-server", "redis-server")
	needTool(t, "redis-sentinel", "redis-sentinel")
	s := &sentinelSetup{}
	free := func() int { return freePortTB(t) }
	// No delay before the replica's first sync (Redis waits 5 s for
	// more replicas by default).
	pdir := t.TempDir()
	var pp int
	s.primaryProc, pp = launchOnFreePort(t, free, "redis-server", func(p int) []string {
		return []string{"--port", strconv.Itoa(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", pdir,
			"--repl-diskless-sync-delay", "0"}
	})
	rdir := t.TempDir()
	_, rp := launchOnFreePort(t, free, "redis-server", func(p int) []string {
		return []string{"--port", strconv.Itoa(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", rdir, "--replicaof", "127.0.0.1", strconv.Itoa(pp)}
	})
	s.primary, s.replica = fmt.Sprintf("127.0.0.1:%d", pp), fmt.Sprintf("127.0.0.1:%d", rp)
	rc := redis.NewClient(&redis.Options{Addr: s.replica})
	defer rc.Close()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		info, _ := rc.Info(context.Background(), "replication").Result()
		if strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica did not sync within a minute")
		}
	}
	dir := t.TempDir()
	_, sp := launchOnFreePort(t, free, "redis-sentinel", func(p int) []string {
		conf := filepath.Join(dir, "sentinel.conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
			"sentinel monitor mymaster 127.0.0.1 %d 1\nsentinel down-after-milliseconds mymaster 1000\n"+
			"sentinel failover-timeout mymaster 3000\nsentinel parallel-syncs mymaster 1\n", p, dir, pp)), 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{conf}
	})
	s.sentinel = fmt.Sprintf("127.0.0.1:%d", sp)
	if got := s.master(t); got != s.primary {
		t.Fatalf("the sentinel names %q as master, want %s", got, s.primary)
	}
	return s
}

// master is the address the Sentinel gives for mymaster.
func (s *sentinelSetup) master(t testing.TB) string {
	c := redis.NewSentinelClient(&redis.Options{Addr: s.sentinel})
	defer c.Close()
	a, err := c.GetMasterAddrByName(context.Background(), "mymaster").Result()
	if err != nil || len(a) != 2 {
		return ""
	}
	return a[0] + ":" + a[1]
}

func freePortTB(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Kill the primary behind a Sentinel: with fail closed the gateways answer
// 503 while there is no primary and serve again through the promoted
// replica within 15 s of the promotion, still sharing the limit; with fail
// open no client sees an error at all. The zones are pools of two named
// accounts, chosen in Redis (and in process while it is down, fail open).
func TestSentinelFailoverIsFollowed(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	s := startSentinel(t)
	mk := func(fail, zone string) *Handler {
		h := provisioned(t, &Handler{Zone: zone, Limits: Limits{RPM: 20}, Upstreams: poolAccounts(Limits{RPM: 1000, Concurrent: 50}, "a", "b"),
			Store: &StoreConfig{Redis: &RedisConfig{Address: s.sentinel, Sentinel: "mymaster", Fail: fail,
				Timeout: testRedisTimeout, Prefix: "t:sentinel:"}}})
		h.logger = zap.NewNop()
		return h
	}
	a, b := mk("closed", "sentinel-closed"), mk("closed", "sentinel-closed")
	open := mk("open", "sentinel-open")
	if w := serveOnce(t, a, "sk-before", chatBody); w.Code != 200 {
		t.Fatalf("before the failover: %d %s", w.Code, w.Body)
	}
	// fail open: a client keeps sending through the failover and must
	// never see an error.
	stop := make(chan struct{})
	var openBad atomic.Value
	var openDone sync.WaitGroup
	openDone.Add(1)
	go func() {
		defer openDone.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if w := serveOnce(t, open, fmt.Sprintf("sk-open-%d", i), chatBody); w.Code != 200 {
				openBad.Store(fmt.Sprintf("%d %s", w.Code, w.Body))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	s.primaryProc.stop()
	var promoted time.Time
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if s.master(t) == s.replica {
			promoted = time.Now()
			break
		}
	}
	if promoted.IsZero() {
		t.Fatal("the sentinel did not promote the replica within 60 s")
	}
	var served time.Time
	for deadline := promoted.Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if w := serveOnce(t, a, "sk-probe", chatBody); w.Code == 200 {
			served = time.Now()
			break
		} else if w.Code != 503 {
			t.Fatalf("fail closed during the failover: %d %s, want 503 or 200", w.Code, w.Body)
		}
	}
	if served.IsZero() {
		t.Fatalf("fail closed: not served again within 15 s of the promotion")
	}
	close(stop)
	openDone.Wait()
	if v := openBad.Load(); v != nil {
		t.Fatalf("fail open: a client saw %v during the failover", v)
	}
	// The limit is still shared through the new primary: rpm 20 over both,
	// and what it refilled on Redis's clock meanwhile.
	c := redis.NewClient(&redis.Options{Addr: s.replica})
	defer c.Close()
	from := redisNow(t, c)
	ok, _ := admitAcross(t, 60, "sk-after", chatBody, nil, a, b)
	to := redisNow(t, c)
	if most := 20 + refillBound(20, to.Sub(from)+slack(60)); ok < 20 || ok > most {
		t.Fatalf("after the failover two instances admitted %d of 60 with rpm 20, want 20 to %d (%v on Redis's clock)", ok, most, to.Sub(from))
	}
	t.Logf("promoted, then served again after %v", served.Sub(promoted).Round(time.Millisecond))
}

// flaky429 answers 429 to its first call, then as nextJSON.
type flaky429 struct{ calls atomic.Int32 }

func (f *flaky429) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	if f.calls.Add(1) == 1 {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_, err := io.WriteString(w, `{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}`)
		return err
	}
	return nextJSON{}.ServeHTTP(w, r)
}

// Every upstream attempt counts on the shared upstream's request bucket in
// Redis, retries included, as it does in process.
func TestRedisRetriesChargeTheSharedUpstream(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	zero := 0.0
	h := provisioned(t, &Handler{Zone: "redis-retry", Upstream: &Account{Limits: Limits{RPM: 10}},
		Retry: &RetryConfig{Base: caddy.Duration(time.Millisecond), Max: caddy.Duration(5 * time.Millisecond), Jitter: &zero},
		Store: &StoreConfig{Redis: &RedisConfig{Address: srv.addr, Fail: "closed", Prefix: "t:retry:", Timeout: testRedisTimeout}}})
	h.logger = zap.NewNop()
	c := srv.client(t)
	next := &flaky429{}
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", bytes.NewBufferString(chatBody))
	r.Header.Set("Authorization", "Bearer sk-retry")
	w := httptest.NewRecorder()
	from := redisNow(t, c)
	if err := h.ServeHTTP(w, r, next); err != nil || w.Code != 200 || next.calls.Load() != 2 {
		t.Fatalf("%v %d after %d calls: %s", err, w.Code, next.calls.Load(), w.Body)
	}
	to := redisNow(t, c)
	level, err := c.HGet(context.Background(), h.rs.zoneBase(h.Zone)+"upstream:rpm", "l").Float64()
	if err != nil {
		t.Fatal(err)
	}
	levelIn(t, "upstream rpm in Redis after two calls", level, 8, 10, from, to, 2)
}

// The stats of a shared zone come from Redis: the levels of the keys this
// instance has seen, and the shared upstream's buckets.
func TestSharedZoneStatsReadRedis(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	c := srv.client(t)
	mk := func() *Handler {
		h := provisioned(t, &Handler{Zone: "redis-stats", Limits: Limits{RPM: 10}, Upstream: &Account{Limits: Limits{RPM: 100}},
			Store: &StoreConfig{Redis: &RedisConfig{Address: srv.addr, Fail: "closed", Prefix: "t:stats:", Timeout: testRedisTimeout}}})
		h.logger = zap.NewNop()
		return h
	}
	a, b := mk(), mk()
	from := redisNow(t, c)
	for i := range 5 {
		h := a
		if i%2 == 1 {
			h = b
		}
		if w := serveOnce(t, h, "sk-stats", chatBody); w.Code != 200 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	st := a.zone.stats(now().UnixNano())
	one, found := a.zone.keyStats(hashKey("sk-stats").id(), now().UnixNano())
	to := redisNow(t, c)
	// 5 of 10 and 95 of 100 are left, and what the buckets refilled on
	// Redis's clock between the first request and the reads.
	availableIn := func(what string, got *int64, left, limit int64) {
		t.Helper()
		if most := min(limit, left+refillBound(limit, to.Sub(from)+slack(5))); got == nil || *got < left || *got > most {
			t.Fatalf("%s: rpm_available %v, want %d to %d from Redis (%v on its clock)", what, got, left, most, to.Sub(from))
		}
	}
	var k *KeyStats
	for i := range st.Keys {
		if st.Keys[i].KeyID == hashKey("sk-stats").id() {
			k = &st.Keys[i]
		}
	}
	if k == nil {
		t.Fatalf("zone stats %+v, without the key", st)
	}
	availableIn("the key in the zone's stats", k.RPMAvailable, 5, 10)
	availableIn("the upstream", st.Upstream.RPMAvailable, 95, 100)
	if !found {
		t.Fatal("one key's stats: not found")
	}
	availableIn("one key's stats", one.RPMAvailable, 5, 10)
}
