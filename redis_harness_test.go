package llmratelimit

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// The Redis tests run real redis-server processes, and what they assert
// must hold however slow the machine is: another go test beside them,
// -race, two cores. So:
//   - a process is ours only when the server that answers on its port
//     reports our process id (a port freed for us may be taken by another
//     test binary's Redis before ours binds it; then we take another port);
//   - a bucket refills on Redis's clock between two calls, so a level or a
//     count is asserted within what Redis's TIME, read before and after,
//     makes certain (levelIn, refillBound), never within a fixed margin;
//   - a request that a fast run would see refused is sent again until it
//     is, each one served before being one the refill explains
//     (untilRefused);
//   - a TTL is waited out on Redis's clock (waitRedisPast), not slept;
//   - a handler's calls to Redis get testRedisTimeout, so that a loaded
//     machine does not turn a slow call into fail open's local decision
//     or fail closed's 503. A stopped Redis still fails fast: its dial is
//     refused (go-redis tries it 5 times, 100 ms apart).

// testRedisTimeout is the store's timeout in the tests' handlers.
const testRedisTimeout = caddy.Duration(10 * time.Second)

// redisProc is a redis-server or redis-sentinel process of a test.
type redisProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	out  *syncBuffer   // what it printed, for the error when it fails
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// launchRedis starts name (redis-server or redis-sentinel) with args,
// which make it listen on addr, and waits until it answers there as
// itself. An error means it did not (it exited, say because the port was
// taken meanwhile, or another process answers there): the caller may try
// another port.
func launchRedis(addr, name string, args ...string) (*redisProc, error) {
	p := &redisProc{cmd: exec.Command(name, args...), done: make(chan struct{}), out: &syncBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second})
	defer c.Close()
	// However loaded the machine, a live server answers: the deadline is
	// for one that hangs, and an exit is seen at once.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s on %s exited: %s", name, addr, lastLines(p.out.String()))
		default:
		}
		info, err := c.Info(context.Background(), "server").Result()
		if err == nil {
			if pid := infoField(info, "process_id"); pid != strconv.Itoa(p.cmd.Process.Pid) {
				p.stop()
				return nil, fmt.Errorf("%s: another process (pid %s) answers on %s", name, pid, addr)
			}
			return p, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.stop()
	return nil, fmt.Errorf("%s on %s did not answer within a minute: %s", name, addr, lastLines(p.out.String()))
}

// stop kills the process and waits for it to exit.
func (p *redisProc) stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// infoField is a field of an INFO reply.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

func lastLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], "\n")
}

// launchOnFreePort launches a process on a port that port picks, as args
// for that port say, trying other ports while one is taken before the
// process binds it. It stops the process when t ends.
func launchOnFreePort(t testing.TB, port func() int, name string, args func(port int) []string) (*redisProc, int) {
	t.Helper()
	var errs []string
	for range 10 {
		p := port()
		proc, err := launchRedis(fmt.Sprintf("127.0.0.1:%d", p), name, args(p)...)
		if err == nil {
			t.Cleanup(proc.stop)
			return proc, p
		}
		errs = append(errs, err.Error())
	}
	t.Fatalf("%s did not start on any of 10 ports:\n%s", name, strings.Join(errs, "\n"))
	return nil, 0
}

// redisServer is a real redis-server process on a free port, with its own
// temporary directory.
type redisServer struct {
	addr string
	dir  string
	proc *redisProc
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
	rs := &redisServer{dir: t.TempDir()}
	var port int
	rs.proc, port = launchOnFreePort(t, func() int { return freePortTB(t) }, "redis-server", rs.args)
	rs.addr = fmt.Sprintf("127.0.0.1:%d", port)
	return rs
}

func (s *redisServer) args(port int) []string {
	return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.dir}
}

// start starts the server again on its address, after stop.
func (s *redisServer) start(t testing.TB) {
	t.Helper()
	_, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	if s.proc, err = launchRedis(s.addr, "redis-server", s.args(p)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
}

func (s *redisServer) stop() {
	if s.proc != nil {
		s.proc.stop()
		s.proc = nil
	}
}

// client is a client of the server for the test's own reads.
func (s *redisServer) client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.addr, ReadTimeout: time.Duration(testRedisTimeout)})
	t.Cleanup(func() { c.Close() })
	return c
}

// redisNow is Redis's TIME: the clock every script decides on.
func redisNow(t testing.TB, c redis.Cmdable) time.Time {
	t.Helper()
	tm, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatalf("redis TIME: %v", err)
	}
	return tm
}

// refilled is how much a bucket of limit a minute refills over d: the
// most it can have gained between two instants d apart.
func refilled(limit int64, d time.Duration) float64 {
	return float64(limit) * d.Seconds() / 60
}

// luaTimeSlack is how far a bucket's time can be off after one write: the
// scripts store it with Lua's tostring, 14 digits, which is to 100 µs. So
// each write may add or take up to 50 µs of refill; a bound on a level or
// a count allows that per write. (A bound from below needs no such slack
// as long as the writes are further apart than that, as requests through
// the handler are.)
const luaTimeSlack = 50 * time.Microsecond

// slack is luaTimeSlack for n writes.
func slack(n int) time.Duration { return time.Duration(n) * luaTimeSlack }

// refillBound is how many whole units (requests) a bucket of limit a
// minute can refill over d.
func refillBound(limit int64, d time.Duration) int64 {
	return int64(math.Floor(refilled(limit, d) + 1e-9))
}

// levelIn checks a bucket level read from Redis after writes writes: what
// was left, base, plus at most what a bucket of limit a minute refills
// between from and to, Redis's TIME before the bucket's first use and
// after its last.
func levelIn(t testing.TB, what string, level, base float64, limit int64, from, to time.Time, writes int) {
	t.Helper()
	least, most := base-refilled(limit, slack(writes)), base+refilled(limit, to.Sub(from)+slack(writes))
	if level < least || level > most {
		t.Errorf("%s: level %v, want %v plus what %d a minute refills in %v (%v to %v)", what, level, base, limit, to.Sub(from), least, most)
	}
}

// bucketLevel is the level at Redis's time at of the bucket hash key, as
// the scripts' level_at reads it.
func bucketLevel(t testing.TB, c redis.Cmdable, key string, limit int64, at time.Time) float64 {
	t.Helper()
	vals, err := c.HMGet(context.Background(), key, "l", "t").Result()
	if err != nil {
		t.Fatal(err)
	}
	return redisLevelAt(vals, limit, at.UnixMicro())
}

// waitRedisPast waits until Redis's clock is past at: what a TTL set on
// Redis's clock needs, however fast the machine.
func waitRedisPast(t testing.TB, c redis.Cmdable, at time.Time) {
	t.Helper()
	for {
		now := redisNow(t, c)
		if now.After(at) {
			return
		}
		time.Sleep(min(at.Sub(now)+time.Millisecond, 100*time.Millisecond))
	}
}

// untilRefused sends with send until an answer is not 200, and returns it
// and how many were served before it. Every 200 must be one that the
// bucket's refill explains: the bucket (limit a minute) could serve level
// (at Redis's time since) less what was taken since, plus its refill, of
// need a request. So a test whose next request would be refused on a fast
// machine holds on a slow one too, where refill lets some through first.
func untilRefused(t testing.TB, c redis.Cmdable, what string, level float64, since time.Time, limit int64, need float64, send func() int) (code, served int) {
	t.Helper()
	for ; ; served++ {
		if code := send(); code != 200 {
			return code, served
		}
		end := redisNow(t, c)
		if most := math.Floor((level+refilled(limit, end.Sub(since)+slack(served+2)))/need + 1e-9); float64(served+1) > most {
			t.Fatalf("%s: %d served, but the bucket (%v at %v, %d a minute, %v a request) holds at most %v by %v",
				what, served+1, level, since, limit, need, most, end)
		}
	}
}

// inLastMinute says whether counts made since then (on Redis's clock) are
// all in a key's last minute when read now: the ring's slots cover the
// last 55 s whole.
func inLastMinute(t testing.TB, c redis.Cmdable, since time.Time) bool {
	t.Helper()
	return redisNow(t, c).Sub(since) <= time.Minute-statsSlotUs*time.Microsecond
}
