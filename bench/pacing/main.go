// Command pacing measures how well llm_ratelimit paces many client keys to
// one provider quota. It starts, in one process, a mock provider that
// enforces its own quota (token buckets on RPM and TPM; 429 with
// Retry-After when over) and a Caddy gateway in front of it with
// llm_ratelimit configured to the same quota (upstream block, max_wait),
// then offers a multiple of the quota from many keys in real time and
// prints what happened:
//
//	go run ./bench/pacing [-load 3] [-keys 50] [-duration 60s]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/llmgate/caddy-llm-ratelimit"
)

var (
	rpm      = flag.Int("rpm", 1200, "the provider's requests per minute")
	tpm      = flag.Int("tpm", 1000000, "the provider's tokens per minute")
	keys     = flag.Int("keys", 50, "client keys, each offering an equal share")
	load     = flag.Float64("load", 3, "offered load as a multiple of the provider's rpm")
	duration = flag.Duration("duration", 60*time.Second, "measured time")
	warmup   = flag.Duration("warmup", 40*time.Second, "time before measuring: both buckets start full, and at 3x the burst takes 30s to drain")
	maxWait  = flag.Duration("max-wait", 30*time.Second, "llm_ratelimit max_wait")
)

// The request every client sends: ~400 input tokens, max_tokens 400. The
// provider reports 400 + 300.
var body = []byte(`{"model":"gpt-4o","max_tokens":400,"messages":[{"role":"user","content":"` +
	strings.Repeat("Pacing keeps the provider under its quota. ", 36) + `"}]}`)

const providerMark = "provider_quota_exceeded"

// bucket is the provider's own token bucket: capacity = the per-minute
// figure, refilled continuously.
type bucket struct {
	level, capacity float64
	at              time.Time
}

func (b *bucket) take(now time.Time, n float64) (ok bool, wait time.Duration) {
	if b.at.IsZero() {
		b.level, b.at = b.capacity, now
	}
	b.level = math.Min(b.capacity, b.level+now.Sub(b.at).Minutes()*b.capacity)
	b.at = now
	if b.level >= n {
		b.level -= n
		return true, 0
	}
	return false, time.Duration((n - b.level) / b.capacity * float64(time.Minute))
}

type provider struct {
	mu                  sync.Mutex
	reqs, toks          bucket
	served, rejected    atomic.Int64
	servedIn            atomic.Int64 // served within the measured window
	measureFrom, measTo atomic.Int64
}

func (p *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	now := time.Now()
	p.mu.Lock()
	ok, wait := p.reqs.take(now, 1)
	if ok {
		var tokWait time.Duration
		if ok, tokWait = p.toks.take(now, 700); !ok {
			p.reqs.level++ // give the request back
			wait = tokWait
		}
	}
	p.mu.Unlock()
	if !ok {
		p.rejected.Add(1)
		w.Header().Set("Retry-After", fmt.Sprint(int(math.Ceil(wait.Seconds()))))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprintf(w, `{"error":{"message":"Rate limit reached","type":"requests","code":%q}}`, providerMark)
		return
	}
	p.served.Add(1)
	if n := now.UnixNano(); n >= p.measureFrom.Load() && n < p.measTo.Load() {
		p.servedIn.Add(1)
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":400,"completion_tokens":300,"total_tokens":700}}`)
}

type result struct {
	key        int
	status     int
	fromAPI    bool // a 429 the provider sent
	retryAfter bool // it carried Retry-After
	err        error
	latency    time.Duration
	at         time.Time
}

// unexpected describes a result that is none of a 200, the provider's
// 429 handed through (a leak, which report counts) or the gateway's own
// 429 with Retry-After, or is "" for those: a pacing run expects nothing
// else, so anything else means the run is broken.
func (r result) unexpected() string {
	switch {
	case r.err != nil:
		return r.err.Error()
	case r.status == 200:
		return ""
	case r.status == 429 && (r.fromAPI || r.retryAfter):
		return ""
	case r.status == 429:
		return "gateway 429 without Retry-After (a request that can never fit)"
	default:
		return fmt.Sprintf("status %d", r.status)
	}
}

func main() {
	flag.Parse()
	prov := &provider{reqs: bucket{capacity: float64(*rpm)}, toks: bucket{capacity: float64(*tpm)}}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go func() { _ = http.Serve(pl, prov) }()

	gl, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	gateway := gl.Addr().String()
	gl.Close()
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	log {
		level WARN
	}
}
http://%s {
	llm_ratelimit {
		zone pacing
		upstream {
			rpm %d
			tpm %d
		}
		max_wait %s
		max_queue 100000
	}
	reverse_proxy %s {
		transport http {
			keepalive_idle_conns_per_host 1024
		}
	}
}
`, gateway, *rpm, *tpm, *maxWait, pl.Addr())
	adapted, warns, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	check(err)
	for _, w := range warns {
		fmt.Fprintln(os.Stderr, "warning:", w.Message)
	}
	check(caddy.Load(adapted, true))
	defer caddy.Stop()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4096, MaxConnsPerHost: 0}}
	rate := float64(*rpm) / 60 * *load // requests per second offered
	total := *warmup + *duration
	start := time.Now()
	prov.measureFrom.Store(start.Add(*warmup).UnixNano())
	prov.measTo.Store(start.Add(total).UnixNano())
	fmt.Printf("provider quota %d RPM / %d TPM; offering %.0f req/s (%.1fx) from %d keys for %v (+%v warm-up); max_wait %v\n",
		*rpm, *tpm, rate, *load, *keys, *duration, *warmup, *maxWait)

	results := make(chan result, 1<<20)
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / rate)
	for i := 0; time.Since(start) < total; i++ {
		next := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(next))
		wg.Add(1)
		go func(key int) {
			defer wg.Done()
			results <- send(client, gateway, key)
		}(i % *keys)
	}
	wg.Wait()
	close(results)
	if !report(prov, results, start.Add(*warmup), start.Add(total)) {
		caddy.Stop()
		os.Exit(1)
	}
}

func send(client *http.Client, gateway string, key int) result {
	t0 := time.Now()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+gateway+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return result{key: key, status: -1, err: err, at: t0}
	}
	req.Header.Set("Authorization", fmt.Sprintf("Bearer sk-bench-%03d", key))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return result{key: key, status: -1, err: err, at: t0}
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		err = fmt.Errorf("status %d, reading the body: %w", resp.StatusCode, err)
	}
	return result{key: key, status: resp.StatusCode, fromAPI: bytes.Contains(b, []byte(providerMark)),
		retryAfter: resp.Header.Get("Retry-After") != "", err: err, latency: time.Since(t0), at: t0}
}

// report prints the measured window's outcomes. It returns false when
// any request of the whole run, warm-up included, had an unexpected
// outcome (see result.unexpected), after listing those on stderr.
func report(prov *provider, results <-chan result, from, to time.Time) bool {
	var ok, shed, leaked, other int
	var waits []time.Duration
	perKey := make([]int, *keys)
	unexpected := map[string]int{}
	for r := range results {
		u := r.unexpected()
		if u != "" {
			unexpected[u]++
		}
		if r.at.Before(from) || !r.at.Before(to) {
			continue // sent during the warm-up or at the very end
		}
		switch {
		case u != "":
			other++
		case r.status == 200:
			ok++
			perKey[r.key]++
			waits = append(waits, r.latency)
		case r.status == 429 && r.fromAPI:
			leaked++
		case r.status == 429:
			shed++
		default:
			other++
		}
	}
	sort.Slice(waits, func(i, j int) bool { return waits[i] < waits[j] })
	pct := func(p float64) time.Duration {
		if len(waits) == 0 {
			return 0
		}
		return waits[int(p*float64(len(waits)-1))]
	}
	minK, maxK := math.MaxInt, 0
	for _, n := range perKey {
		minK, maxK = min(minK, n), max(maxK, n)
	}
	quota := float64(*rpm) * to.Sub(from).Minutes()
	sent := prov.served.Load() + prov.rejected.Load()
	fmt.Printf("upstream utilization:            %.1f %% of the quota (%d served in the measured %v, quota %.0f)\n",
		100*float64(prov.servedIn.Load())/quota, prov.servedIn.Load(), to.Sub(from), quota)
	fmt.Printf("429s the upstream sent:          %d of %d upstream calls (%.2f %%)\n",
		prov.rejected.Load(), sent, 100*float64(prov.rejected.Load())/math.Max(1, float64(sent)))
	fmt.Printf("upstream 429s reaching clients:  %d\n", leaked)
	fmt.Printf("429s the gateway shed itself:    %d of %d client requests (with Retry-After)\n", shed, ok+shed+leaked+other)
	fmt.Printf("client requests served:          %d; other failures: %d\n", ok, other)
	fmt.Printf("queue wait (latency of served):  p50 %v  p99 %v\n", pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond))
	fmt.Printf("fairness (served per key):       max %d / min %d = %.2f\n", maxK, minK, float64(maxK)/math.Max(1, float64(minK)))
	if len(unexpected) == 0 {
		return true
	}
	kinds := make([]string, 0, len(unexpected))
	for u := range unexpected {
		kinds = append(kinds, u)
	}
	sort.Strings(kinds)
	fmt.Fprintln(os.Stderr, "FAIL: unexpected outcomes over the whole run (warm-up included); the figures above are not valid:")
	for _, u := range kinds {
		fmt.Fprintf(os.Stderr, "  %6d  %s\n", unexpected[u], u)
	}
	return false
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
