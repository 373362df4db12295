package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The harness: Caddy children, the open-loop load and what it saw, and
// the cleanup on every way out.

var body = []byte(`{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"In one sentence: why spread the load of many keys over a pool of provider accounts?"}]}`)

// child is one Caddy process.
type child struct {
	name string
	addr string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// started holds the Caddy children and the temporary directory, for the
// cleanup: os.Exit skips main's defers.
var started struct {
	sync.Mutex
	children []*child
	dir      string
}

// check aborts the run on a setup error, from any goroutine, stopping the
// children first.
func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup error:", err)
		cleanup()
		os.Exit(1)
	}
}

// cleanup kills every child that is still running and removes the
// temporary directory. It holds the lock until the process exits when
// called from check, so a second abort waits.
func cleanup() {
	started.Lock()
	defer started.Unlock()
	for _, c := range started.children {
		stop(c)
	}
	started.children = nil
	if started.dir != "" {
		_ = os.RemoveAll(started.dir)
	}
}

// onSignal stops the children on Ctrl-C or SIGTERM.
func onSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-ch
		fmt.Fprintf(os.Stderr, "\n%v: stopping the Caddy children\n", s)
		cleanup()
		os.Exit(130)
	}()
}

func stop(c *child) {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		fmt.Fprintf(os.Stderr, "warning: %s (pid %d) did not exit within 5s of SIGKILL\n", c.name, c.cmd.Process.Pid)
	}
}

// stopChildren stops the given children and forgets them.
func stopChildren(cs ...*child) {
	for _, c := range cs {
		stop(c)
	}
	started.Lock()
	defer started.Unlock()
	keep := started.children[:0]
	for _, c := range started.children {
		gone := false
		for _, s := range cs {
			gone = gone || s == c
		}
		if !gone {
			keep = append(keep, c)
		}
	}
	started.children = keep
}

func build(dir string) string {
	bin := filepath.Join(dir, "caddy")
	fmt.Println("building ./cmd/caddy ...")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	check(cmd.Run())
	return bin
}

// freeAddr is a loopback address nobody listened on a moment ago.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	addr := l.Addr().String()
	check(l.Close())
	return addr
}

// caddyfile wraps an llm_ratelimit block into a site at addr in front of
// the provider.
func caddyfile(addr, directive, provider string) string {
	return fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	log {
		level ERROR
	}
}
http://%s {
%s
	reverse_proxy %s {
		transport http {
			keepalive_idle_conns_per_host 256
		}
	}
}
`, addr, directive, provider)
}

// validate runs `caddy validate` on a config, returning its output on
// failure.
func validate(bin, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "validate", "--config", path, "--adapter", "caddyfile").CombinedOutput()
	return string(out), err
}

// start runs Caddy on a config file and waits until addr accepts
// connections.
func start(bin, name, path, addr string) *child {
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	c := &child{name: name, addr: addr, cmd: cmd, done: make(chan struct{})}
	started.Lock()
	err := cmd.Start()
	if err == nil {
		started.children = append(started.children, c)
	}
	started.Unlock()
	check(err)
	go func() { _ = cmd.Wait(); close(c.done) }()
	for i := 0; i < 200; i++ {
		select {
		case <-c.done:
			check(fmt.Errorf("%s exited at start: %v", name, cmd.ProcessState))
		default:
		}
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return c
		}
		time.Sleep(50 * time.Millisecond)
	}
	check(fmt.Errorf("%s did not listen on %s within 10s", name, addr))
	return nil
}

// tally is what the clients of one run saw. The measured counts are of
// requests sent within the measured window; leaked and other also over
// the whole run.
type tally struct {
	mu                              sync.Mutex
	sent, skipped                   int
	ok, shed, leaked, other         int
	retried                         int            // 200s that took more than one upstream try
	byAccount                       map[string]int // 200s by x-llm-ratelimit-upstream
	latencies                       []time.Duration
	leakedAll, otherAll, skippedAll int
	reasons                         map[string]int // other, whole run
}

type outcome struct {
	status   int
	err      error
	provider bool // the answer carries the mock provider's mark
	hint     bool // Retry-After or retry-after-ms
	account  string
	attempts int
	latency  time.Duration
}

func (t *tally) add(o outcome, in bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var reason string
	switch {
	case o.err != nil:
		reason = "error: " + o.err.Error()
	case o.status == 200:
	case o.status == 429 && o.provider:
		t.leakedAll++
	case o.status == 429 && o.hint:
	case o.status == 429:
		reason = "gateway 429 without Retry-After / retry-after-ms"
	default:
		reason = "status " + strconv.Itoa(o.status)
	}
	if reason != "" {
		t.otherAll++
		t.reasons[reason]++
	}
	if !in {
		return
	}
	t.sent++
	switch {
	case reason != "":
		t.other++
	case o.status == 200:
		t.ok++
		t.byAccount[o.account]++
		t.latencies = append(t.latencies, o.latency)
		if o.attempts > 1 {
			t.retried++
		}
	case o.provider:
		t.leaked++
	default:
		t.shed++
	}
}

func (t *tally) skip(in bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.skippedAll++
	if in {
		t.skipped++
	}
}

// percentile of the 200s' client-side latency.
func (t *tally) percentile(p float64) time.Duration {
	if len(t.latencies) == 0 {
		return 0
	}
	sort.Slice(t.latencies, func(i, j int) bool { return t.latencies[i] < t.latencies[j] })
	return t.latencies[int(p*float64(len(t.latencies)-1))]
}

// merge adds u into t (for several gateways' clients).
func (t *tally) merge(u *tally) {
	t.sent += u.sent
	t.skipped += u.skipped
	t.ok += u.ok
	t.shed += u.shed
	t.leaked += u.leaked
	t.other += u.other
	t.retried += u.retried
	t.leakedAll += u.leakedAll
	t.otherAll += u.otherAll
	t.skippedAll += u.skippedAll
	t.latencies = append(t.latencies, u.latencies...)
	for k, v := range u.byAccount {
		t.byAccount[k] += v
	}
	for k, v := range u.reasons {
		t.reasons[k] += v
	}
}

func newTally() *tally {
	return &tally{byAccount: map[string]int{}, reasons: map[string]int{}}
}

// load offers perMin requests a minute to a gateway, open loop: a request
// is launched on schedule whatever the earlier ones did, unless conns are
// already in flight, then it is skipped and counted. It runs from start to
// end and then waits for the requests in flight (each bounded by the
// client's timeout).
func load(gw *child, keys []string, perMin float64, conns int, start, from, end time.Time, timeout time.Duration) *tally {
	t := newTally()
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	interval := time.Duration(float64(time.Minute) / perMin)
	var inflight atomic.Int64
	var wg sync.WaitGroup
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if !at.Before(end) {
			break
		}
		time.Sleep(time.Until(at))
		in := !at.Before(from)
		if inflight.Load() >= int64(conns) {
			t.skip(in)
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		go func(key string) {
			defer wg.Done()
			defer inflight.Add(-1)
			t.add(send(client, gw.addr, key), in)
		}(keys[i%len(keys)])
	}
	wg.Wait()
	return t
}

func send(client *http.Client, addr, key string) outcome {
	t0 := time.Now()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return outcome{err: err}
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return outcome{err: err}
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		err = fmt.Errorf("status %d, reading the body: %w", resp.StatusCode, err)
	}
	attempts, _ := strconv.Atoi(resp.Header.Get("x-llm-ratelimit-attempts"))
	return outcome{
		status:   resp.StatusCode,
		err:      err,
		provider: resp.Header.Get(providerMark) != "",
		hint:     resp.Header.Get("Retry-After") != "" || resp.Header.Get("retry-after-ms") != "",
		account:  resp.Header.Get("x-llm-ratelimit-upstream"),
		attempts: attempts,
		latency:  time.Since(t0),
	}
}
