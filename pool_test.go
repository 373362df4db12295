package llmratelimit

import (
	"fmt"

	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// providerLog records what reached the provider: each request's account
// (from the credentials the gateway put on it), its headers and its query.
type providerLog struct {
	mu   sync.Mutex
	seen []http.Header
	urls []string
}

func (l *providerLog) add(r *http.Request) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, r.Header.Clone())
	l.urls = append(l.urls, r.URL.String())
	return len(l.seen)
}

// leaked reports any trace of secret in what the provider saw.
func (l *providerLog) leaked(secret string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, h := range l.seen {
		if strings.Contains(fmt.Sprint(h), secret) || strings.Contains(l.urls[i], secret) {
			return fmt.Sprintf("request %d: %v %s", i+1, h, l.urls[i])
		}
	}
	return ""
}

// accountOf names the account whose credentials a provider request carries.
func accountOf(r *http.Request) string {
	switch {
	case r.Header.Get("Authorization") == "Bearer sk-provider-a":
		return "a"
	case r.Header.Get("X-Api-Key") == "sk-provider-b":
		return "b"
	}
	return "client"
}

const poolConfig = `zone %s
rpm 1000
upstream a {
	rpm 100
	header_up Authorization "Bearer sk-provider-a"
	priority 0
}
upstream b {
	rpm 100
	header_up x-api-key sk-provider-b
	priority 1
}`

func TestClientKeyNeverReachesTheProviderWhenTheAccountHasCredentials(t *testing.T) {
	mustLoad(t, fmt.Sprintf(poolConfig, "pool_creds"))
	var log providerLog
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		log.add(r)
		_, _ = io.Copy(io.Discard, r.Body)
		if accountOf(r) == "a" {
			// Account a is rate limited: every retry goes to b.
			w.Header().Set("retry-after-ms", "3000")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"account":%q,"usage":{"prompt_tokens":5,"completion_tokens":2}}`, accountOf(r))
	})
	const secret = "sk-client-gateway-key-7f3e"
	r := send(t, "/v1/chat/completions", secret, chatBody)
	if r.status != 200 || !strings.Contains(r.body, `"account":"b"`) || r.header.Get("x-llm-ratelimit-upstream") != "b" {
		t.Fatalf("first request: %d %v %s; want 200 from account b after a's 429", r.status, r.header, r.body)
	}
	// The client's key in x-api-key, in x-goog-api-key and in ?key= too:
	// a is cooling down now, so b serves at once.
	req := newReq(t, "/v1/messages", "", `{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`)
	req.Header.Set("x-api-key", secret)
	if r := sendReq(t, req); r.status != 200 || r.header.Get("x-llm-ratelimit-upstream") != "b" {
		t.Fatalf("x-api-key request: %d %s", r.status, r.body)
	}
	req = newReq(t, geminiModelPath+":generateContent?alt=json&key="+secret, "", `{"contents":[]}`)
	req.Header.Set("x-goog-api-key", secret)
	if r := sendReq(t, req); r.status != 200 {
		t.Fatalf("gemini request: %d %s", r.status, r.body)
	}
	if leak := log.leaked(secret); leak != "" {
		t.Fatalf("the client's key reached the provider: %s", leak)
	}
	if n := len(log.seen); n != 4 {
		t.Fatalf("the provider saw %d requests, want 4 (a's 429, then b three times)", n)
	}
	if got := log.urls[3]; !strings.Contains(got, "alt=json") || strings.Contains(got, "key=") {
		t.Errorf("the query lost more than the key, or kept it: %s", got)
	}
}

func TestFailoverServesThroughAnotherAccountWithoutWaitingTheHint(t *testing.T) {
	mustLoad(t, fmt.Sprintf(poolConfig, "pool_failover"))
	var log providerLog
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		log.add(r)
		_, _ = io.Copy(io.Discard, r.Body)
		if accountOf(r) == "a" {
			w.Header().Set("Retry-After", "20")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":{"message":"Rate limit reached","type":"requests"}}`)
			return
		}
		chatCompletion(w, r, 5, 2)
	})
	clk.takeSleeps()
	start := clk.Now()
	r := send(t, "/v1/chat/completions", "sk-failover", chatBody)
	if r.status != 200 || r.header.Get("x-llm-ratelimit-upstream") != "b" || r.header.Get("x-llm-ratelimit-attempts") != "2" {
		t.Fatalf("want 200 through b on the second attempt, got %d %v", r.status, r.header)
	}
	for _, d := range clk.takeSleeps() {
		if d > time.Second {
			t.Fatalf("the gateway waited %v: a failover must not wait the hint", d)
		}
	}
	z := zoneOf(t, "pool_failover")
	st := z.stats(clk.Now().UnixNano()).Upstreams
	a, b := st["a"], st["b"]
	if a.CooldownUntil == nil || a.RateLimitedTotal != 1 || a.CallsTotal != 1 || b.CallsTotal != 1 || b.CooldownUntil != nil {
		t.Fatalf("accounts after the failover: a %+v, b %+v", a, b)
	}
	until, err := time.Parse(time.RFC3339Nano, *a.CooldownUntil)
	if err != nil || until.Sub(start) != 20*time.Second {
		t.Fatalf("a cools down until %v (%v), want the hint's 20s after %v", until, err, start)
	}
	if n := testutil.ToFloat64(metricUpstreamCalls.WithLabelValues("pool_failover", "a", "429")); n != 1 {
		t.Errorf("upstream_calls_total{a,429} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(metricUpstreamCalls.WithLabelValues("pool_failover", "b", "200")); n != 1 {
		t.Errorf("upstream_calls_total{b,200} = %v, want 1", n)
	}
	if s := testutil.ToFloat64(metricUpstreamCooldown.WithLabelValues("pool_failover", "a")); s != 20 {
		t.Errorf("upstream_cooldown_seconds_total{a} = %v, want 20", s)
	}
	// While a cools down, the key's next requests go straight to b.
	clk.Advance(19 * time.Second)
	if r := send(t, "/v1/chat/completions", "sk-failover", chatBody); r.status != 200 || r.header.Get("x-llm-ratelimit-upstream") != "b" || r.header.Get("x-llm-ratelimit-attempts") != "" {
		t.Fatalf("during a's cooldown: %d %v", r.status, r.header)
	}
	// Past the cooldown, a (priority 0) is tried again.
	clk.Advance(2 * time.Second)
	send(t, "/v1/chat/completions", "sk-other-key", chatBody)
	if got := accountOf(&http.Request{Header: log.seen[len(log.seen)-2]}); got != "a" {
		t.Fatalf("after the cooldown the first try went to %s, want a", got)
	}
}

func TestEveryAccountCoolingGivesAnHonestRetryAfter(t *testing.T) {
	mustLoad(t, fmt.Sprintf(poolConfig, "pool_cooling"))
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		hint := map[string]string{"a": "300", "b": "12"}[accountOf(r)]
		w.Header().Set("Retry-After", hint)
		w.WriteHeader(429)
		fmt.Fprint(w, `{"error":{"message":"Rate limit reached","type":"requests"}}`)
	})
	clk.takeSleeps()
	// a cools for 300s, b for 12s; the retry loop then waits for b, whose
	// hint is the shortest, and b refuses again: the provider's 429 is
	// handed through after the attempts, and b cools again.
	if r := send(t, "/v1/chat/completions", "sk-cooling", chatBody); r.status != 429 {
		t.Fatalf("first request: %d", r.status)
	}
	// Both accounts cool now: the next request is refused at once, with
	// the wait until the first account is back.
	z := zoneOf(t, "pool_cooling")
	st := z.stats(clk.Now().UnixNano()).Upstreams
	earliest := time.Duration(1<<63 - 1)
	for _, name := range []string{"a", "b"} {
		if st[name].CooldownUntil == nil {
			t.Fatalf("account %s is not cooling: %+v", name, st)
		}
		until, _ := time.Parse(time.RFC3339Nano, *st[name].CooldownUntil)
		earliest = min(earliest, until.Sub(clk.Now()))
	}
	r := send(t, "/v1/chat/completions", "sk-cooling-2", chatBody)
	if r.status != 429 || !strings.Contains(r.body, "cooling down") {
		t.Fatalf("with every account cooling: %d %s", r.status, r.body)
	}
	ms, err := strconv.ParseInt(r.header.Get("retry-after-ms"), 10, 64)
	if err != nil || time.Duration(ms)*time.Millisecond < earliest || time.Duration(ms)*time.Millisecond > earliest+time.Millisecond {
		t.Fatalf("retry-after-ms %q, want the earliest cooldown's end %v", r.header.Get("retry-after-ms"), earliest)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra != int((earliest+time.Second-1)/time.Second) {
		t.Fatalf("Retry-After %q, want %v rounded up", r.header.Get("Retry-After"), earliest)
	}
}

func TestModelThatNoAccountServesIs404(t *testing.T) {
	mustLoad(t, "zone pool_models\nupstream oai {\n\tmodels gpt-* o3*\n}\nupstream claude {\n\tmodels claude-*\n}")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 5, 2) })
	r := send(t, "/v1/chat/completions", "sk-models", `{"model":"llama-3","messages":[{"role":"user","content":"hi"}]}`)
	if e := r.errorBody(t); r.status != 404 || e.Error.Type != "invalid_request_error" || e.Error.Code == nil || *e.Error.Code != "model_not_found" {
		t.Fatalf("openai: %d %s", r.status, r.body)
	}
	r = send(t, "/v1/messages", "sk-models", `{"model":"mistral","max_tokens":5,"messages":[]}`)
	if e := r.errorBody(t); r.status != 404 || e.Type != "error" || e.Error.Type != "not_found_error" {
		t.Fatalf("anthropic: %d %s", r.status, r.body)
	}
	for model, account := range map[string]string{"gpt-4o": "oai", "o3-mini": "oai", "claude-sonnet-4-5": "claude"} {
		r = send(t, "/v1/chat/completions", "sk-models", `{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`)
		if r.status != 200 || r.header.Get("x-llm-ratelimit-upstream") != account {
			t.Fatalf("%s: %d via %q, want %s", model, r.status, r.header.Get("x-llm-ratelimit-upstream"), account)
		}
	}
}

// The choice of an account, as SPEC "Provider accounts" orders it.
func TestAccountChoice(t *testing.T) {
	acct := func(name string, prio int, rpm int64, models ...string) *accountCfg {
		return &accountCfg{name: name, priority: prio, lim: Limits{RPM: rpm}, models: models, pool: true}
	}
	for _, c := range []struct {
		name     string
		accts    []*accountCfg
		used     map[string]int // requests already taken from each account
		cooling  map[string]time.Duration
		affinity string
		model    string
		want     string // "" for none
		wantWait time.Duration
	}{
		{name: "lowest priority first", accts: []*accountCfg{acct("x", 1, 60), acct("y", 0, 60)}, want: "y"},
		{name: "then most headroom", accts: []*accountCfg{acct("x", 0, 60), acct("y", 0, 60)}, used: map[string]int{"x": 10, "y": 5}, want: "y"},
		{name: "headroom as a fraction of the quota", accts: []*accountCfg{acct("x", 0, 600), acct("y", 0, 60)}, used: map[string]int{"x": 50, "y": 1}, want: "y"},
		{name: "then config order", accts: []*accountCfg{acct("x", 0, 60), acct("y", 0, 60)}, want: "x"},
		{name: "affinity beats priority and headroom", accts: []*accountCfg{acct("x", 0, 60), acct("y", 5, 60)}, used: map[string]int{"y": 30}, affinity: "y", want: "y"},
		{name: "affinity only while it can take the request", accts: []*accountCfg{acct("x", 0, 60), acct("y", 0, 2)}, used: map[string]int{"y": 2}, affinity: "y", want: "x"},
		{name: "a cooling account is skipped", accts: []*accountCfg{acct("x", 0, 60), acct("y", 1, 60)}, cooling: map[string]time.Duration{"x": 5 * time.Second}, want: "y"},
		{name: "a full account is skipped", accts: []*accountCfg{acct("x", 0, 2), acct("y", 1, 60)}, used: map[string]int{"x": 2}, want: "y"},
		{name: "all cooling: the earliest end", accts: []*accountCfg{acct("x", 0, 60), acct("y", 0, 60)}, cooling: map[string]time.Duration{"x": 9 * time.Second, "y": 4 * time.Second}, wantWait: 4 * time.Second},
		{name: "all full: the earliest refill", accts: []*accountCfg{acct("x", 0, 60), acct("y", 0, 30)}, used: map[string]int{"x": 60, "y": 30}, wantWait: time.Second},
		{name: "model filter", accts: []*accountCfg{acct("x", 0, 60, "claude-*"), acct("y", 9, 60, "gpt-*")}, model: "gpt-4o", want: "y"},
		{name: "no account for the model", accts: []*accountCfg{acct("x", 0, 60, "claude-*")}, model: "gpt-4o"},
	} {
		t.Run(c.name, func(t *testing.T) {
			z := newZone("choice-" + c.name)
			defer z.Destruct()
			h := &Handler{accounts: c.accts, pool: true}
			accts := h.accountsFor(c.model)
			nowNs := int64(1000 * sec)
			for name, n := range c.used {
				for _, ac := range c.accts {
					if ac.name == name {
						z.accountState(name).rpm.advance(nowNs, ac.lim.RPM)
						z.accountState(name).rpm.level -= float64(n)
					}
				}
			}
			for name, d := range c.cooling {
				z.accountState(name).cooldownUntil = nowNs + int64(d)
			}
			var a admission
			var affinity *account
			if c.affinity != "" {
				affinity = z.accountState(c.affinity)
			}
			ac, st, v := z.chooseAccount(&a, accts, demand{}, affinity, nil, nowNs, false)
			got := ""
			if ac != nil {
				got = ac.name
				if st != z.accountState(ac.name) || !v.ok {
					t.Fatalf("chose %s with state %p (want %p) and verdict %+v", got, st, z.accountState(ac.name), v)
				}
			}
			if got != c.want {
				t.Fatalf("chose %q, want %q (verdict %+v)", got, c.want, v)
			}
			if c.want == "" && len(accts) > 0 && v.wait != c.wantWait {
				t.Fatalf("wait %v, want %v", v.wait, c.wantWait)
			}
		})
	}
}

// A later, shorter hint never shortens an account's cooldown; a longer one
// lengthens it.
func TestCooldownIsLengthenedNeverShortened(t *testing.T) {
	z := newZone("cooldown-order")
	defer z.Destruct()
	a := &accountCfg{name: "a", lim: Limits{RPM: 100}, pool: true}
	b := &accountCfg{name: "b", lim: Limits{RPM: 100}, priority: 1, pool: true}
	q := ask{kh: hashKey("k"), lim: Limits{RPM: 100}, accts: []*accountCfg{a, b}}
	nowNs := int64(2000 * sec)
	var ts [3]ticket
	for i := range ts {
		var dec decision
		ts[i], dec = z.admit(ask{kh: hashKey(fmt.Sprint("k", i)), lim: q.lim, accts: q.accts}, nowNs, false, false)
		if !dec.ok || ts[i].acfg != a {
			t.Fatalf("request %d should start on a: %v", i, ts[i].acfg)
		}
	}
	for i, c := range []struct {
		at, hint, want time.Duration
	}{{0, 20 * time.Second, 20 * time.Second}, {time.Second, 5 * time.Second, 20 * time.Second}, {2 * time.Second, 40 * time.Second, 42 * time.Second}} {
		if !ts[i].failover(nowNs+int64(c.at), c.hint) || ts[i].acfg != b {
			t.Fatalf("429 %d should move its request to b", i+1)
		}
		if got := time.Duration(z.accountState("a").cooldownUntil - nowNs); got != c.want {
			t.Fatalf("after a %v hint at %v, a cools down until +%v, want +%v", c.hint, c.at, got, c.want)
		}
	}
	// The failed attempts' tokens and slots went back to a; its requests
	// still count there.
	if st, sb := z.accountState("a"), z.accountState("b"); st.inflight != 0 || st.rateLimited != 3 || st.calls != 3 || sb.inflight != 3 || sb.calls != 3 {
		t.Fatalf("a %+v, b %+v", st, sb)
	}
}

// Each account can go to its own reverse_proxy (a second region): a vars
// matcher on llm_upstream, evaluated again for every attempt.
func TestVarsMatcherRoutesEachAttemptToItsAccountsRegion(t *testing.T) {
	var euCalls, usCalls int
	var mu sync.Mutex
	eu := httptestServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		euCalls++
		mu.Unlock()
		chatCompletion(w, r, 5, 2)
	})
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		usCalls++
		mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(429) // the US account is rate limited
		fmt.Fprint(w, `{"error":{"message":"Rate limit reached","type":"requests"}}`)
	})
	cfg := fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
}
http://%s {
	route {
		llm_ratelimit {
			zone pool_regions
			upstream us {
				header_up Authorization "Bearer sk-provider-us"
			}
			upstream eu {
				header_up Authorization "Bearer sk-provider-eu"
				priority 1
			}
		}
		@eu vars llm_upstream eu
		reverse_proxy @eu %s
		reverse_proxy %s
	}
}
`, testAdmin, nextGateway(), eu.Listener.Addr(), upstream.Listener.Addr())
	if err := load(t, cfg); err != nil {
		t.Fatal(err)
	}
	r := send(t, "/v1/chat/completions", "sk-regions", chatBody)
	if r.status != 200 || r.header.Get("x-llm-ratelimit-upstream") != "eu" {
		t.Fatalf("%d %v %s", r.status, r.header, r.body)
	}
	mu.Lock()
	defer mu.Unlock()
	if usCalls != 1 || euCalls != 1 {
		t.Fatalf("us %d calls, eu %d calls; want the first attempt in us, the retry in eu", usCalls, euCalls)
	}
}

// The pool's subdirectives land in the JSON config, each a documented field.
func TestPoolAdaptsToJSON(t *testing.T) {
	out, err := adaptCaddyfileForTest(`:8080 {
	llm_ratelimit {
		learn_limits off
		tier bulk {
			rpm 10
			lane batch
		}
		upstream key1 {
			rpm 500
			tpm 30000
			header_up Authorization "Bearer {env.OPENAI_KEY_1}"
			header_up OpenAI-Organization org-1
			models gpt-* o3*
			priority 1
		}
		upstream key2 {
			concurrent 8
		}
	}
	reverse_proxy 127.0.0.1:9
}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"learn_limits":false`,
		`"tiers":{"bulk":{"lane":"batch","rpm":10}}`,
		`"upstreams":[{"header_up":{"Authorization":"Bearer {env.OPENAI_KEY_1}","Openai-Organization":"org-1"},"models":["gpt-*","o3*"],"name":"key1","priority":1,"rpm":500,"tpm":30000},{"concurrent":8,"name":"key2"}]`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, out)
		}
	}
}
