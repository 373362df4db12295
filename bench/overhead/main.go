// Command overhead measures what llm_ratelimit adds to Caddy's CPU per
// request. It builds this repository's Caddy, starts it twice as child
// processes — plain reverse_proxy, and llm_ratelimit + reverse_proxy, with
// everything on by default (issue 18) — in front of an in-process mock
// upstream, drives both in interleaved rounds with keep-alive connections,
// ~1.3 KB chat bodies and rotating keys, and prints per round and config:
// req/s, p50/p99 latency, the child's CPU µs per request and the system
// part of it (from /proc/<pid>/stat), and its read and write system calls
// per request (/proc/<pid>/io); then the median plugin/plain ratio and its
// spread.
//
//	go run ./bench/overhead [-rounds 5] [-requests 20000] [-conns 16] [-keys 1000]
//	    [-directive 'llm_ratelimit { … }'] [-profile DIR] [-pin CPUS]
//
// -pin runs the children on their own CPUs (taskset), for a steadier
// figure: taskset -c 0 <built binary> -pin 1.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	rounds    = flag.Int("rounds", 5, "interleaved rounds")
	requests  = flag.Int("requests", 20000, "requests per config per round")
	conns     = flag.Int("conns", 16, "concurrent keep-alive connections")
	keys      = flag.Int("keys", 1000, "rotating API keys")
	directive = flag.String("directive", everything, "the plugin's directive (default: everything on, as issue 18 measures)")
	pin       = flag.String("pin", "", "run the Caddy children on these CPUs (taskset -c), e.g. 1; run this program itself elsewhere: taskset -c 0 go run ./bench/overhead -pin 1")
	profile   = flag.String("profile", "", "also write each child's CPU profile (pprof, over one more round) into this directory")
)

var body = []byte(`{"model":"gpt-4o","max_tokens":512,"temperature":0.2,"messages":[{"role":"system","content":"You are a careful assistant that answers questions about Go programs concisely and correctly."},{"role":"user","content":"` +
	strings.Repeat("Explain how a token bucket limits both requests and tokens per minute. ", 15) + `"}]}`)

const answer = `{"id":"chatcmpl-1","object":"chat.completion","created":1741569952,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"A token bucket refills continuously."},"finish_reason":"stop"}],"usage":{"prompt_tokens":260,"completion_tokens":9,"total_tokens":269}}`

// everything is the plugin with everything on (issue 18): a pool of two
// accounts, calibration (the default), a price and a budget.
const everything = `llm_ratelimit {
		rpm 100000000
		tpm 100000000000
		concurrent 100000
		default_price input 2.5 output 10
		budget 1000000000 monthly
		upstream a {
			rpm 100000000
			header_up Authorization "Bearer sk-provider-a"
		}
		upstream b {
			rpm 100000000
			header_up Authorization "Bearer sk-provider-b"
			priority 1
		}
	}`

type child struct {
	name  string
	addr  string
	admin string // the admin endpoint, with -profile
	cmd   *exec.Cmd
}

func main() {
	flag.Parse()
	dir, err := os.MkdirTemp("", "llm-overhead-")
	check(err)
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "caddy")
	fmt.Println("building ./cmd/caddy ...")
	build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	check(build.Run())

	up, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go func() {
		_ = http.Serve(up, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, answer)
		}))
	}()

	plain := start(bin, dir, "plain", "", up.Addr().String())
	plugin := start(bin, dir, "plugin", *directive, up.Addr().String())
	defer plain.cmd.Process.Kill()
	defer plugin.cmd.Process.Kill()

	keyHeaders := make([]string, *keys)
	for i := range keyHeaders {
		keyHeaders[i] = fmt.Sprintf("Bearer sk-overhead-%04d-0123456789abcdefghijklmnop", i)
	}
	// Warm both up: connections, JIT-free Go still has caches and pools.
	for _, c := range []*child{plain, plugin} {
		drive(c, 2000, keyHeaders)
	}
	fmt.Printf("%d rounds x %d requests per config, %d connections, %d keys, %d-byte bodies\n", *rounds, *requests, *conns, *keys, len(body))
	fmt.Printf("%-6s %-7s %9s %9s %9s %12s %12s %14s\n", "round", "config", "req/s", "p50", "p99", "CPU µs/req", "of it sys", "reads/writes")
	var ratios []float64
	cpu := map[string][]float64{}
	for r := 1; r <= *rounds; r++ {
		order := []*child{plain, plugin}
		if r%2 == 0 {
			order = []*child{plugin, plain}
		}
		perReq := map[string]float64{}
		for _, c := range order {
			before, sys0 := cpuTimes(c.cmd.Process.Pid)
			r0, w0 := syscalls(c.cmd.Process.Pid)
			rps, p50, p99 := drive(c, *requests, keyHeaders)
			after, sys1 := cpuTimes(c.cmd.Process.Pid)
			us := float64(after-before) / float64(time.Microsecond) / float64(*requests)
			sysUs := float64(sys1-sys0) / float64(time.Microsecond) / float64(*requests)
			r1, w1 := syscalls(c.cmd.Process.Pid)
			perReq[c.name] = us
			cpu[c.name] = append(cpu[c.name], us)
			fmt.Printf("%-6d %-7s %9.0f %9v %9v %12.1f %12.1f %8.2f/%.2f\n", r, c.name, rps, p50.Round(time.Microsecond), p99.Round(time.Microsecond), us, sysUs,
				float64(r1-r0)/float64(*requests), float64(w1-w0)/float64(*requests))
		}
		ratios = append(ratios, perReq["plugin"]/perReq["plain"])
	}
	sort.Float64s(ratios)
	fmt.Printf("median CPU µs/req: plain %.1f, plugin %.1f (added %.1f µs)\n",
		median(cpu["plain"]), median(cpu["plugin"]), median(cpu["plugin"])-median(cpu["plain"]))
	fmt.Printf("plugin/plain CPU ratio: median %.3f, spread %.3f .. %.3f\n", median(ratios), ratios[0], ratios[len(ratios)-1])
	if *profile != "" {
		for _, c := range []*child{plain, plugin} {
			writeProfile(c, keyHeaders)
		}
	}
}

// writeProfile drives one more round at c while its admin endpoint records
// a CPU profile, and writes it to <-profile>/<name>.pprof.
func writeProfile(c *child, keyHeaders []string) {
	got := make(chan []byte)
	go func() {
		resp, err := http.Get("http://" + c.admin + "/debug/pprof/profile?seconds=5")
		check(err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		check(err)
		got <- b
	}()
	var done atomic.Bool
	var sent atomic.Int64
	go func() {
		for !done.Load() {
			drive(c, 500, keyHeaders)
			sent.Add(500)
		}
	}()
	b := <-got
	done.Store(true)
	fmt.Printf("%s: about %d requests during the 5 s profile\n", c.name, sent.Load())
	check(os.MkdirAll(*profile, 0o755))
	path := filepath.Join(*profile, c.name+".pprof")
	check(os.WriteFile(path, b, 0o644))
	fmt.Println("wrote", path)
}

func start(bin, dir, name, directive, upstream string) *child {
	addr, admin := freeAddr(), "off"
	if *profile != "" {
		admin = freeAddr()
	}
	cfg := fmt.Sprintf(`{
	admin %s
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
`, admin, addr, directive, upstream)
	path := filepath.Join(dir, name+".Caddyfile")
	check(os.WriteFile(path, []byte(cfg), 0o600))
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	if *pin != "" { // the children on their own cores, the load elsewhere
		cmd = exec.Command("taskset", "-c", *pin, bin, "run", "--config", path, "--adapter", "caddyfile")
	}
	cmd.Stderr = os.Stderr
	check(cmd.Start())
	started.Lock()
	started.cmds = append(started.cmds, cmd)
	started.Unlock()
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return &child{name: name, addr: addr, admin: admin, cmd: cmd}
		}
		time.Sleep(100 * time.Millisecond)
	}
	check(fmt.Errorf("%s did not start", name))
	return nil
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().String()
}

// drive sends n requests over *conns keep-alive connections.
func drive(c *child, n int, keyHeaders []string) (rps float64, p50, p99 time.Duration) {
	tr := &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var next atomic.Int64
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				req, err := http.NewRequest(http.MethodPost, "http://"+c.addr+"/v1/chat/completions", bytes.NewReader(body))
				check(err)
				req.Header.Set("Authorization", keyHeaders[i%len(keyHeaders)])
				req.Header.Set("Content-Type", "application/json")
				s := time.Now()
				resp, err := client.Do(req)
				check(err)
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				// Every request must be served: a 429 or 400 is cheaper than
				// a proxied answer and would flatter the plugin's numbers.
				if resp.StatusCode != 200 {
					check(fmt.Errorf("%s: request %d: status %d, want 200", c.name, i, resp.StatusCode))
				}
				if err != nil {
					check(fmt.Errorf("%s: request %d: reading the body: %w", c.name, i, err))
				}
				lat[i] = time.Since(s)
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return float64(n) / el.Seconds(), lat[n/2], lat[n*99/100]
}

// cpuTimes is a process's user + system CPU time, and the system part of
// it, from /proc/<pid>/stat.
func cpuTimes(pid int) (total, sys time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	check(err)
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		check(fmt.Errorf("/proc/%d/stat: %d fields after the command name, want at least 13", pid, len(f)))
	}
	utime, err := strconv.ParseInt(f[11], 10, 64)
	check(err)
	stime, err := strconv.ParseInt(f[12], 10, 64)
	check(err)
	const ticksPerSecond = 100 // CLK_TCK on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond, time.Duration(stime) * time.Second / ticksPerSecond
}

// syscalls is a process's read and write system calls so far, from
// /proc/<pid>/io: a change that costs a system call per request shows
// here before it shows in the CPU time.
func syscalls(pid int) (reads, writes int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	check(err)
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// started holds the Caddy children, for check to stop them: os.Exit skips
// main's deferred kills.
var started struct {
	sync.Mutex
	cmds []*exec.Cmd
}

// check aborts the run on err, from any goroutine, stopping the children.
func check(err error) {
	if err != nil {
		started.Lock() // held until exit: one abort at a time
		fmt.Fprintln(os.Stderr, err)
		for _, cmd := range started.cmds {
			_ = cmd.Process.Kill()
		}
		os.Exit(1)
	}
}
