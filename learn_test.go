package llmratelimit

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// Both header families, including the bad values providers and proxies
// send: garbage is ignored value by value and never turns a limit to 0.
func TestRateHeaderParsers(t *testing.T) {
	at := time.Date(2026, 11, 29, 3, 0, 0, 0, time.UTC)
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	const no = -1
	for _, c := range []struct {
		name      string
		h         http.Header
		any       bool
		limit     [numLearned]int64
		remaining [numLearned]int64
		reset     [numLearned]time.Duration
	}{
		{"openai", hdr("x-ratelimit-limit-requests", "500", "x-ratelimit-remaining-requests", "499", "x-ratelimit-reset-requests", "120ms",
			"x-ratelimit-limit-tokens", "30000", "x-ratelimit-remaining-tokens", "29000", "x-ratelimit-reset-tokens", "6m0s"),
			true, [4]int64{500, 30000, no, no}, [4]int64{499, 29000, no, no}, [4]time.Duration{120 * time.Millisecond, 6 * time.Minute, no, no}},
		{"anthropic", hdr("anthropic-ratelimit-requests-limit", "50", "anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", "2026-11-29T03:00:02Z",
			"anthropic-ratelimit-input-tokens-limit", "40000", "anthropic-ratelimit-input-tokens-remaining", "39000",
			"anthropic-ratelimit-output-tokens-limit", "8000", "anthropic-ratelimit-tokens-limit", "48000"),
			true, [4]int64{50, 48000, 40000, 8000}, [4]int64{0, no, 39000, no}, [4]time.Duration{2 * time.Second, no, no, no}},
		{"no headers", hdr("content-type", "application/json"), false, [4]int64{no, no, no, no}, [4]int64{no, no, no, no}, [4]time.Duration{no, no, no, no}},
		{"-1 as some Azure deployments send", hdr("x-ratelimit-limit-requests", "-1", "x-ratelimit-remaining-requests", "-1", "x-ratelimit-limit-tokens", "1000"),
			true, [4]int64{no, 1000, no, no}, [4]int64{no, no, no, no}, [4]time.Duration{no, no, no, no}},
		{"negative", hdr("x-ratelimit-limit-tokens", "-5000", "x-ratelimit-remaining-tokens", "-3"), false, [4]int64{no, no, no, no}, [4]int64{no, no, no, no}, [4]time.Duration{no, no, no, no}},
		{"zero limit is never learned", hdr("x-ratelimit-limit-requests", "0", "x-ratelimit-remaining-requests", "0"),
			true, [4]int64{no, no, no, no}, [4]int64{0, no, no, no}, [4]time.Duration{no, no, no, no}},
		{"huge", hdr("x-ratelimit-limit-requests", "99999999999999999999", "x-ratelimit-limit-tokens", "5000000000000"), false, [4]int64{no, no, no, no}, [4]int64{no, no, no, no}, [4]time.Duration{no, no, no, no}},
		{"not a number", hdr("x-ratelimit-limit-requests", "lots", "x-ratelimit-remaining-requests", "1.5", "anthropic-ratelimit-tokens-limit", "1e6"),
			false, [4]int64{no, no, no, no}, [4]int64{no, no, no, no}, [4]time.Duration{no, no, no, no}},
		{"missing or bad reset", hdr("x-ratelimit-limit-requests", "60", "x-ratelimit-reset-requests", "soon", "anthropic-ratelimit-output-tokens-limit", "900", "anthropic-ratelimit-output-tokens-reset", "-5s"),
			true, [4]int64{60, no, no, 900}, [4]int64{no, no, no, no}, [4]time.Duration{no, no, no, no}},
		{"spaces around a number", hdr("x-ratelimit-limit-requests", " 60 "), true, [4]int64{60, no, no, no}, [4]int64{no, no, no, no}, [4]time.Duration{no, no, no, no}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, ok := rateLimitsOf(c.h, at)
			if ok != c.any || r.limit != c.limit || r.remaining != c.remaining || r.reset != c.reset {
				t.Fatalf("got %v limit %v remaining %v reset %v\nwant %v limit %v remaining %v reset %v",
					ok, r.limit, r.remaining, r.reset, c.any, c.limit, c.remaining, c.reset)
			}
		})
	}
}

// providerWithQuota answers like OpenAI and says its quota of rpm requests
// a minute in its headers, counting down remaining; past it, a 429.
func providerWithQuota(rpm int, calls *atomic.Int32) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n := int(calls.Add(1))
		w.Header().Set("x-ratelimit-limit-requests", strconv.Itoa(rpm))
		w.Header().Set("x-ratelimit-remaining-requests", strconv.Itoa(max(rpm-n, 0)))
		w.Header().Set("x-ratelimit-reset-requests", "1s")
		if n > rpm {
			w.Header().Set("retry-after-ms", "100")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"c","usage":{"prompt_tokens":5,"completion_tokens":2}}`)
	}
}

func TestAccountPacesToTheQuotaItsHeadersTell(t *testing.T) {
	mustLoad(t, "zone learn_acct\nretry off\nupstream acct {\n\theader_up Authorization \"Bearer sk-provider\"\n}")
	var calls atomic.Int32
	setUpstream(t, providerWithQuota(3, &calls))
	for i := 1; i <= 3; i++ {
		if r := send(t, "/v1/chat/completions", fmt.Sprint("sk-learn-", i), chatBody); r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	// The account's quota (3 a minute) was learned and is used up: the
	// gateway refuses the 4th itself, and the provider never sees it.
	r := send(t, "/v1/chat/completions", "sk-learn-4", chatBody)
	if r.status != 429 || calls.Load() != 3 {
		t.Fatalf("4th request: %d after %d provider calls, want the gateway's 429 and 3 calls: %s", r.status, calls.Load(), r.body)
	}
	st := zoneOf(t, "learn_acct").stats(clk.Now().UnixNano()).Upstreams["acct"]
	if st.Learned == nil || st.Learned.Limits["requests"].Limit != 3 || st.Learned.RateFactor != 1 || *st.RPMAvailable != 0 {
		t.Fatalf("stats: %+v learned %+v", st, st.Learned)
	}
}

func TestPassthroughKeyLearnsItsOwnQuota(t *testing.T) {
	mustLoad(t, "zone learn_key\nretry off")
	var calls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n := calls.Add(1)
		w.Header().Set("anthropic-ratelimit-requests-limit", "2")
		w.Header().Set("anthropic-ratelimit-requests-remaining", strconv.Itoa(int(max(2-n, 0))))
		w.Header().Set("anthropic-ratelimit-requests-reset", clk.Now().Add(time.Minute).UTC().Format(time.RFC3339))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"type":"message","usage":{"input_tokens":5,"output_tokens":2}}`)
	})
	body := `{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`
	for i := 0; i < 2; i++ {
		if r := send(t, "/v1/messages", "sk-ant-own-key", body); r.status != 200 {
			t.Fatalf("request %d: %d", i+1, r.status)
		}
	}
	if r := send(t, "/v1/messages", "sk-ant-own-key", body); r.status != 429 || calls.Load() != 2 {
		t.Fatalf("3rd request of a key whose provider allows 2 a minute: %d after %d calls", r.status, calls.Load())
	}
	// Another key has its own learned quota.
	if r := send(t, "/v1/messages", "sk-ant-other-key", body); r.status != 200 {
		t.Fatalf("another key: %d", r.status)
	}
	st, ok := zoneOf(t, "learn_key").keyStats(hashKey("sk-ant-own-key").id(), clk.Now().UnixNano())
	if !ok || st.Learned == nil || st.Learned.Limits["requests"].Limit != 2 {
		t.Fatalf("key stats: %+v", st)
	}
}

func TestConfiguredAndLearnedTheSmallerWins(t *testing.T) {
	for i, c := range []struct {
		name       string
		configured string
		learnOff   bool
		learned    int
		want       int // requests admitted before the gateway's 429
	}{
		{"configured smaller", "rpm 2", false, 5, 2},
		{"learned smaller", "rpm 9", false, 3, 3},
		{"learn_limits off: configured only", "rpm 4", true, 1, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			off := ""
			if c.learnOff {
				off = "learn_limits off\n"
			}
			mustLoad(t, "zone learn_min_"+strconv.Itoa(i)+"\nretry off\n"+off+"upstream a {\n\t"+c.configured+"\n}")
			var calls atomic.Int32
			setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("x-ratelimit-limit-requests", strconv.Itoa(c.learned))
				w.Header().Set("x-ratelimit-remaining-requests", strconv.Itoa(max(c.learned-int(calls.Load()), 0)))
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"usage":{"prompt_tokens":1,"completion_tokens":1}}`)
			})
			admitted := 0
			for i := 0; i < 12; i++ {
				r := send(t, "/v1/chat/completions", "sk-min", chatBody)
				if r.status != 200 {
					break
				}
				admitted++
			}
			if admitted != c.want {
				t.Fatalf("admitted %d, want %d", admitted, c.want)
			}
		})
	}
}

// A provider 429 on a request that the learned bucket admitted, within a
// minute of another, cuts the account's rate to 70 %, once per round
// trip; a lone 429 after a quiet spell does not; each quiet second adds
// 1 % back.
func TestProvider429CutsTheLearnedRateAndQuietSecondsRaiseIt(t *testing.T) {
	z := newZone("learn-aimd")
	defer z.Destruct()
	ac := &accountCfg{name: "a", pool: true}
	q := ask{kh: hashKey("k"), lim: Limits{}, accts: []*accountCfg{ac}, learn: true}
	nowNs := int64(5000 * sec)
	st := z.accountState("a")
	st.learned = newLearnedState(nowNs)
	st.learned.limit[dimRequests] = 100

	t1, d1 := z.admit(q, nowNs, false, false)
	t2, d2 := z.admit(ask{kh: hashKey("k2"), accts: q.accts, learn: true}, nowNs, false, false)
	if !d1.ok || !d2.ok {
		t.Fatal("not admitted")
	}
	hdr := http.Header{"X-Ratelimit-Limit-Requests": {"100"}}
	// A lone 429 after a quiet spell is a timing slip: no cut.
	t0, _ := z.admit(ask{kh: hashKey("k0"), accts: q.accts, learn: true}, nowNs, false, false)
	t0.learn(nowNs+int64(500*time.Millisecond), 429, hdr)
	if f := st.learned.factor; f != 1 {
		t.Fatalf("factor after a lone 429: %v, want 1", f)
	}
	// One that follows another within a minute is congestion: it cuts.
	t1.learn(nowNs+int64(time.Second), 429, hdr)
	if f := st.learned.factor; f != learnDecrease {
		t.Fatalf("factor after a 429: %v, want %v", f, learnDecrease)
	}
	// t2 was sent before the cut: its 429 is the same congestion event.
	// (A tenth of a second raised the rate by 0.1 % meanwhile.)
	t2.learn(nowNs+int64(1100*time.Millisecond), 429, hdr)
	if f := st.learned.factor; f < learnDecrease || f > learnDecrease+0.0011 {
		t.Fatalf("factor after a second 429 of the same round trip: %v, want %v", f, learnDecrease)
	}
	if got := st.limits(Limits{}).RPM; got != 70 {
		t.Fatalf("rpm in force %d, want 70", got)
	}
	// Ten quiet seconds add 10 % of the learned limit back.
	st.learned.rise(nowNs + int64(1100*time.Millisecond) + int64(10*time.Second))
	if got := st.limits(Limits{}).RPM; got != 80 {
		t.Fatalf("rpm in force after 10 quiet seconds %d, want 80", got)
	}
	// A request sent after the cut that meets a 429 cuts again.
	t3, _ := z.admit(ask{kh: hashKey("k3"), accts: q.accts, learn: true}, nowNs+int64(12*time.Second), false, false)
	st.learned.rise(nowNs + int64(13*time.Second))
	before := st.learned.factor
	t3.learn(nowNs+int64(13*time.Second), 429, hdr)
	if f := st.learned.factor; f != before*learnDecrease {
		t.Fatalf("factor after the next round trip's 429: %v, want %v × 0.7", f, before)
	}
	// Two quiet minutes later, a lone 429 cuts nothing again.
	later := nowNs + int64(13*time.Second) + int64(2*time.Minute)
	t4, _ := z.admit(ask{kh: hashKey("k4"), accts: q.accts, learn: true}, later, false, false)
	st.learned.rise(later)
	before = st.learned.factor
	t4.learn(later, 429, hdr)
	if f := st.learned.factor; f != before {
		t.Fatalf("factor after a 429 two quiet minutes on: %v, want %v", f, before)
	}
}

// After an answer, a bucket is never above what the provider can have
// left: its reported remaining, taken either when the call arrived (then
// refilled for the call's latency, less what was sent since) or when it
// answered (then already counting what was sent since), whichever is
// larger. A cap below that would keep quota unused for good.
func TestBucketIsCappedAtWhatTheProviderCanHaveLeft(t *testing.T) {
	for _, c := range []struct {
		name      string
		latency   time.Duration
		since     int    // calls admitted after the answered one was sent
		remaining string // what its answer says
		want      float64
	}{
		// At once: an answer-time figure already counts the later call.
		{"answer at once", 0, 1, "5", 5},
		// 30 s at 100 RPM refilled 50 since an arrival-time figure of 5;
		// the 10 sent since are gone: 45 (an answer-time 5 is below it).
		{"answer after 30 s, taken at arrival", 30 * time.Second, 10, "5", 45},
		// Many more sent since than refilled: only an answer-time figure
		// is possible, and it already counts them.
		{"answer after 6 s, 40 sent since", 6 * time.Second, 40, "3", 3},
		// Nothing said: the bucket stays as it is.
		{"no remaining", 0, 1, "", 98},
	} {
		t.Run(c.name, func(t *testing.T) {
			z := newZone("learn-remaining")
			defer z.Destruct()
			ac := &accountCfg{name: "a", pool: true, lim: Limits{RPM: 100}}
			mk := func(k string) ask { return ask{kh: hashKey(k), accts: []*accountCfg{ac}, learn: true} }
			sentNs := int64(6000 * sec)
			t1, _ := z.admit(mk("k1"), sentNs, false, false)
			for i := range c.since {
				z.admit(mk(fmt.Sprint("s", i)), sentNs, false, false)
			}
			st := z.accountState("a")
			answerNs := sentNs + int64(c.latency)
			h := http.Header{}
			if c.remaining != "" {
				h.Set("X-Ratelimit-Remaining-Requests", c.remaining)
			}
			t1.learn(answerNs, 200, h)
			lvl := st.rpm.advance(answerNs, 100)
			if c.remaining == "" {
				if want := math.Min(100, float64(99-c.since)+tokensFromDuration(100, c.latency)); lvl != want {
					t.Fatalf("rpm level %v, want %v (untouched)", lvl, want)
				}
				return
			}
			if math.Abs(lvl-c.want) > 1e-9 {
				t.Fatalf("rpm level %v, want %v", lvl, c.want)
			}
			admitted := 0
			for i := range 120 {
				if _, dec := z.admit(mk(fmt.Sprint("x", i)), answerNs, false, false); dec.ok {
					admitted++
				}
			}
			if admitted != int(c.want) {
				t.Fatalf("admitted %d more, want %v", admitted, c.want)
			}
		})
	}
}
