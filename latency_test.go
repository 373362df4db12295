package llmratelimit

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Learned limits at real LLM latencies: a provider that holds each answer
// for a set time on the package's fake clock, and an open-loop load of 3×
// its quota. Nothing sleeps in real time: the driver advances the clock a
// step at a time, once every request in flight is parked on it (in the
// provider's hold or in a retry's wait).

// slowProvider is an OpenAI-like account with an RPM quota (a token
// bucket, full at first use) that answers a call it accepts after latency
// and refuses one it cannot at once with a 429 and retry-after-ms. Its
// x-ratelimit-remaining-requests is taken when the call arrives, or, with
// answerTime, when it answers.
type slowProvider struct {
	rpm        float64
	latency    time.Duration
	answerTime bool
	from, to   time.Time // the measured window, by arrival

	mu          sync.Mutex
	level       float64
	at          time.Time
	ok, limited int // arrivals in the window
}

// levelAt refills the bucket to now and returns its level. p.mu is held.
func (p *slowProvider) levelAt(now time.Time) float64 {
	if p.at.IsZero() {
		p.level, p.at = p.rpm, now
	}
	p.level = math.Min(p.rpm, p.level+now.Sub(p.at).Seconds()*p.rpm/60)
	p.at = now
	return p.level
}

func (p *slowProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	arrived := clk.Now()
	p.mu.Lock()
	level := p.levelAt(arrived)
	ok := level >= 1
	if ok {
		level--
		p.level = level
	}
	if !arrived.Before(p.from) && arrived.Before(p.to) {
		if ok {
			p.ok++
		} else {
			p.limited++
		}
	}
	p.mu.Unlock()
	h := w.Header()
	h.Set("X-Test-Provider", "1")
	h.Set("Content-Type", "application/json")
	h.Set("x-ratelimit-limit-requests", strconv.Itoa(int(p.rpm)))
	if !ok {
		wait := time.Duration((1 - level) / (p.rpm / 60) * float64(time.Second))
		h.Set("x-ratelimit-remaining-requests", "0")
		h.Set("retry-after-ms", strconv.FormatInt(wait.Milliseconds()+1, 10))
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"error":{"message":"Rate limit reached on requests per min (RPM)","type":"requests","param":null,"code":"rate_limit_exceeded"}}`)
		return
	}
	if err := clk.SleepUntil(r.Context(), arrived.Add(p.latency)); err != nil {
		return
	}
	if p.answerTime {
		p.mu.Lock()
		level = p.levelAt(clk.Now())
		p.mu.Unlock()
	}
	h.Set("x-ratelimit-remaining-requests", strconv.Itoa(int(math.Floor(level))))
	fmt.Fprint(w, `{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25}}`)
}

// latencyRun is one run: gateways (zones with no shared store) in front of
// one slow provider account, each offered 3× the quota / gateways.
type latencyRun struct {
	gateways   int
	rpm        int
	configured bool // the account's rpm is in the config; else only its headers tell it
	learn      bool
	latency    time.Duration
	answerTime bool
}

type latencyResult struct {
	used      float64 // provider successes in the window / the quota's refill over it
	limited   float64 // provider 429s / provider calls in the window
	leaked    int     // provider 429s that reached a client
	succeeded int
	failed    int // requests that got no answer
}

// latencyConfig is a Caddyfile with one route per gateway, each its own
// zone in front of the same account.
func latencyConfig(c latencyRun, zonePrefix string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tstorage file_system %s\n}\nhttp://%s {\n", testAdmin, testStorage, nextGateway())
	limit := ""
	if c.configured {
		limit = fmt.Sprintf("rpm %d\n\t\t\t\t", c.rpm)
	}
	learn := "on"
	if !c.learn {
		learn = "off"
	}
	for g := range c.gateways {
		fmt.Fprintf(&b, `	handle_path /gw%d/* {
		llm_ratelimit {
			zone %s_%d
			learn_limits %s
			upstream acct {
				%sheader_up Authorization "Bearer sk-provider"
			}
			retry {
				attempts 4
				base 200ms
				max 5s
				max_total 30s
			}
		}
		reverse_proxy %s
	}
`, g, zonePrefix, g, learn, limit, upstream.Listener.Addr().String())
	}
	b.WriteString("}\n")
	return b.String()
}

// runAtLatency offers the load for the warm-up (latency + 60 s: the full
// buckets drain and the first answers come back) and a measured 120 s, on
// the fake clock in steps of 250 ms, then lets every request finish.
func runAtLatency(t *testing.T, c latencyRun, zonePrefix string) latencyResult {
	t.Helper()
	clk.setManual(t)
	start := clk.Now()
	p := &slowProvider{rpm: float64(c.rpm), latency: c.latency, answerTime: c.answerTime}
	p.from = start.Add(c.latency + 60*time.Second)
	p.to = p.from.Add(120 * time.Second)
	setUpstream(t, p.ServeHTTP)
	if err := load(t, latencyConfig(c, zonePrefix)); err != nil {
		t.Fatal(err)
	}

	var inflight atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	res := latencyResult{}
	launch := func(g, n int) {
		inflight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inflight.Add(-1)
			req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://%s/gw%d/v1/chat/completions", gateway, g),
				strings.NewReader(`{"model":"gpt-4o-mini","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`))
			req.Header.Set("Authorization", fmt.Sprintf("Bearer sk-client-%d-%d", g, n%8))
			resp, err := client.Do(req)
			if err != nil {
				mu.Lock()
				if res.failed++; res.failed == 1 {
					t.Errorf("request: %v", err)
				}
				mu.Unlock()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			switch {
			case resp.StatusCode == 200:
				res.succeeded++
			case resp.Header.Get("X-Test-Provider") != "":
				res.leaked++
			}
		}()
	}
	// settle waits until every request in flight is parked on the clock.
	settle := func() {
		deadline := time.Now().Add(30 * time.Second)
		for inflight.Load() != int64(clk.sleeping()) {
			if time.Now().After(deadline) {
				t.Fatalf("requests neither finish nor wait on the clock: %d in flight, %d sleeping", inflight.Load(), clk.sleeping())
			}
			runtime.Gosched()
			time.Sleep(100 * time.Microsecond)
		}
	}
	const step = 250 * time.Millisecond
	perStep := 3 * float64(c.rpm) / 60 * step.Seconds() / float64(c.gateways)
	owed := make([]float64, c.gateways)
	n := 0
	for now := start; now.Before(p.to); now = now.Add(step) {
		for g := range c.gateways {
			owed[g] += perStep
			for ; owed[g] >= 1; owed[g]-- {
				launch(g, n)
				n++
			}
		}
		settle()
		clk.Advance(step)
	}
	for end := p.to.Add(c.latency + time.Minute); inflight.Load() > 0 && clk.Now().Before(end); {
		settle()
		clk.Advance(step)
	}
	wg.Wait()
	calls := float64(p.ok + p.limited)
	res.used = float64(p.ok) / (float64(c.rpm) * p.to.Sub(p.from).Minutes())
	res.limited = float64(p.limited) / math.Max(1, calls)
	return res
}

// SPEC "Learned limits under real latencies": with learn_limits on, a zone
// uses its quota at least as well as with it off, at any latency and for
// both kinds of provider. Before the fix, an account at 30 s latency used
// about half of it.
func TestLearnedLimitsUseTheQuotaAtRealLatencies(t *testing.T) {
	for _, kind := range []struct {
		name       string
		answerTime bool
	}{{"remaining taken at arrival", false}, {"remaining taken at the answer", true}} {
		for _, latency := range []time.Duration{30 * time.Second, 120 * time.Second} {
			t.Run(fmt.Sprintf("%s, %v", kind.name, latency), func(t *testing.T) {
				run := latencyRun{gateways: 1, rpm: 120, configured: true, latency: latency, answerTime: kind.answerTime}
				run.learn = false
				off := runAtLatency(t, run, "lat_off")
				run.learn = true
				on := runAtLatency(t, run, "lat_on")
				t.Logf("quota used: learn_limits on %.3f (429s %.3f), off %.3f (429s %.3f)", on.used, on.limited, off.used, off.limited)
				if on.used < 0.97 || on.used < off.used-0.01 {
					t.Errorf("learn_limits on used %.3f of the quota, off %.3f: want ≥ 0.97 and no more than a point below off", on.used, off.used)
				}
				if on.leaked+off.leaked != 0 {
					t.Errorf("provider 429s reached clients: %d (on), %d (off)", on.leaked, off.leaked)
				}
			})
		}
	}
}

// Two gateways with no shared store on one account that only its headers
// tell converge on shares that add up to its quota, with few 429s.
func TestGatewaysSharingALearnedAccountConvergeAtLatency(t *testing.T) {
	for _, answerTime := range []bool{false, true} {
		t.Run(fmt.Sprintf("answer-time remaining %v", answerTime), func(t *testing.T) {
			r := runAtLatency(t, latencyRun{gateways: 2, rpm: 600, learn: true, latency: 30 * time.Second, answerTime: answerTime}, "lat_shared")
			t.Logf("quota used %.3f, upstream 429s %.4f of the calls", r.used, r.limited)
			if r.used < 0.90 || r.limited > 0.02 {
				t.Errorf("used %.3f of the quota with %.4f of the calls refused: want ≥ 0.90 and ≤ 0.02", r.used, r.limited)
			}
			if r.leaked != 0 {
				t.Errorf("%d provider 429s reached clients", r.leaked)
			}
		})
	}
}
