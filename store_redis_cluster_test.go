package llmratelimit

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

func waitPing(t testing.TB, addr string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for range 300 {
		if c.Ping(context.Background()).Err() == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("redis at %s did not start", addr)
}

// startCluster starts a Redis Cluster of 3 masters on loopback and returns
// their addresses.
func startCluster(t testing.TB) []string {
	t.Helper()
	needTool(t, "redis-server", "redis-server")
	needTool(t, "redis-cli", "redis-tools")
	var addrs []string
	for range 3 {
		p := clusterPort(t)
		dir := t.TempDir()
		startProcess(t, "redis-server", "--port", strconv.Itoa(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--cluster-node-timeout", "2000",
			"--save", "", "--appendonly", "no", "--dir", dir)
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		waitPing(t, addr)
		addrs = append(addrs, addr)
	}
	args := append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer c.Close()
	for range 300 {
		info, err := c.ClusterInfo(context.Background()).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
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
			Upstream: &Limits{RPM: 100000, TPM: 1 << 40},
			Store: &StoreConfig{Redis: &RedisConfig{Address: addrs[0], Addresses: addrs[1:], Cluster: true,
				Fail: "closed", Timeout: 0, Prefix: "t:cluster:"}}})
		h.logger = zap.NewNop()
		return h
	}
	a, b := mk(), mk()
	var ok atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range 200 {
		h := a
		if i%2 == 1 {
			h = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch w := serveOnce(t, h, "sk-cluster", chatBody); w.Code {
			case 200:
				ok.Add(1)
			case 429:
			default:
				t.Errorf("status %d, want 200 or 429: %s", w.Code, w.Body)
			}
		}()
	}
	wg.Wait()
	refill := int64(time.Since(start).Seconds()) + 1
	if got := ok.Load(); got < 60 || got > 60+refill {
		t.Fatalf("two instances admitted %d of 200 with rpm 60 on the cluster (refill allowance %d)", got, refill)
	}
	// Every key of the zone is in one slot.
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer c.Close()
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
	t.Logf("%d of 200 admitted across two instances on a 3-master cluster", ok.Load())
}
