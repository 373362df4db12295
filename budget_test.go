package llmratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Prices in these tests: input $1, output $2, cached input $0.25, cache
// writes $1.25 per million tokens: in nano-dollars per token 1000, 2000,
// 250 and 1250.
const testPrice = "price input 1 output 2 cached_input 0.25 cache_write 1.25"

// spendStatsOf is the key's stats in a zone, through the admin API.
func spendStatsOf(t *testing.T, zoneName, key string) KeyStats {
	t.Helper()
	resp, err := client.Get("http://" + testAdmin + "/llm_ratelimit/stats/" + zoneName + "/" + hashKey(key).id())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st KeyStats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("stats of %s: %d %v", zoneName, resp.StatusCode, err)
	}
	return st
}

// worstOf is the worst case the gateway reserves for body at price p
// (nano-dollars per token): its own input estimate at the dearest input
// price, the whole output reservation.
func worstOf(t *testing.T, d dialect, body string, p price) int64 {
	t.Helper()
	var info requestInfo
	if err := parseRequest(d, "/v1/chat/completions", []byte(body), &info); err != nil {
		t.Fatal(err)
	}
	return p.worst(float64(inputEstimate(d, info)), float64(info.MaxOutput*info.N))
}

var testNano = price{in: 1000, out: 2000, cached: 250, write: 1250}

// 50 requests at once against a budget that covers exactly 10 worst
// cases: at most 10 are admitted (the others get a 429 that says not to
// retry), and the spend is exactly what the admitted ones cost.
func TestBudgetOfTenWorstCasesAdmitsAtMostTenOfFifty(t *testing.T) {
	const body = `{"model":"gpt-4o","max_tokens":1000,"messages":[{"role":"user","content":"Write a haiku about budgets."}]}`
	worst := worstOf(t, dOpenAI, body, testNano)
	budget := 10*worst + worst/2 // 10 fit, an 11th does not
	mustLoad(t, fmt.Sprintf("zone budget50\ncalibrate off\nmodel gpt-4o {\n%s\n}\nbudget %.9f daily", testPrice, usd(budget)))

	release := make(chan struct{})
	var arrived atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
		chatCompletion(w, r, 17, 40) // 17×1000 + 40×2000 = 97,000 nano-dollars
	})
	var wg sync.WaitGroup
	var ok, rejected atomic.Int32
	var bad atomic.Value
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := send(t, "/v1/chat/completions", "sk-budget-50", body)
			switch r.status {
			case 200:
				ok.Add(1)
			case 429:
				e := r.errorBody(t)
				if e.Error.Type != "insufficient_quota" || e.Error.Code == nil || *e.Error.Code != "insufficient_quota" ||
					r.header.Get("x-should-retry") != "false" || r.header.Get("x-llm-ratelimit-budget-reset") == "" {
					bad.Store(fmt.Sprintf("429 %v %s", r.header, r.body))
				}
				rejected.Add(1)
			default:
				bad.Store(fmt.Sprintf("%d %s", r.status, r.body))
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for rejected.Load()+arrived.Load() < 50 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("unexpected answer: %v", v)
	}
	if ok.Load() > 10 || ok.Load() == 0 || ok.Load()+rejected.Load() != 50 {
		t.Fatalf("%d admitted, %d rejected; want at most 10 admitted of 50", ok.Load(), rejected.Load())
	}
	st := spendStatsOf(t, "budget50", "sk-budget-50")
	want := usd(int64(ok.Load()) * 97000)
	if st.SpendUSD == nil || math.Abs(*st.SpendUSD-want) > 1e-12 {
		t.Fatalf("spend_usd = %v, want %v (the admitted requests' actual cost)", st.SpendUSD, want)
	}
	if st.BudgetUSD == nil || st.BudgetPeriod != "daily" || st.BudgetResetsAt == "" {
		t.Fatalf("budget fields: %+v", st)
	}
	t.Logf("%d admitted, %d rejected; spend $%.6f of $%.6f", ok.Load(), rejected.Load(), *st.SpendUSD, *st.BudgetUSD)
}

// Periods start at 00:00 UTC: each day, each Monday, the first of each
// month (of 31, 30, 28 and 29 days).
func TestBudgetPeriodsStartAtMidnightUTC(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		p                   period
		now, start, nextOne string
	}{
		{periodDaily, "2026-11-29T17:45:00Z", "2026-11-29T00:00:00Z", "2026-11-30T00:00:00Z"},
		{periodDaily, "2026-12-31T23:59:59Z", "2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"},
		{periodDaily, "2026-11-29T23:30:00-05:00", "2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z"}, // 04:30 UTC the next day
		{periodWeekly, "2026-11-29T12:00:00Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"},     // a Sunday
		{periodWeekly, "2026-11-30T00:00:00Z", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},     // a Monday
		{periodWeekly, "2027-01-01T08:00:00Z", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"},     // across the year
		{periodMonthly, "2026-01-31T23:00:00Z", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},    // 31 days
		{periodMonthly, "2026-04-15T00:00:00Z", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"},    // 30 days
		{periodMonthly, "2026-02-28T23:59:59Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"},    // 28 days
		{periodMonthly, "2028-02-29T12:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},    // 29 days
		{periodMonthly, "2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
	} {
		start := c.p.start(at(c.now))
		if !start.Equal(at(c.start)) || !c.p.next(start).Equal(at(c.nextOne)) {
			t.Errorf("period %d at %s: start %s, next %s; want %s, %s", c.p, c.now, start, c.p.next(start), c.start, c.nextOne)
		}
		// A key's spend rolls over exactly at the boundary.
		var k keySpend
		k.roll(c.p, at(c.now).UnixNano())
		k.spent = 42
		k.roll(c.p, at(c.nextOne).Add(-time.Nanosecond).UnixNano())
		if k.spent != 42 {
			t.Errorf("period %d: spend reset before %s", c.p, c.nextOne)
		}
		k.roll(c.p, at(c.nextOne).UnixNano())
		if k.spent != 0 || !k.resetsAt(c.p).Equal(c.p.next(at(c.nextOne))) {
			t.Errorf("period %d: at %s spend %d, resets at %s", c.p, c.nextOne, k.spent, k.resetsAt(c.p))
		}
	}
}

// A key that spent its daily budget is refused until the next 00:00 UTC,
// which its 429 names; then it is served again.
func TestBudgetIsRefusedUntilMidnightThenServedAgain(t *testing.T) {
	const body = `{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
	worst := worstOf(t, dOpenAI, body, testNano)
	mustLoad(t, fmt.Sprintf("zone budgetday\ncalibrate off\nmodel gpt-4o {\n%s\n}\nbudget %.9f daily", testPrice, usd(worst)*1.5))
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, int(worst/1000), 0) }) // costs the whole worst case
	const key = "sk-budget-day"
	if r := send(t, "/v1/chat/completions", key, body); r.status != 200 {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	r := send(t, "/v1/chat/completions", key, body)
	if r.status != 429 {
		t.Fatalf("second: %d %s, want 429", r.status, r.body)
	}
	midnight := periodDaily.next(periodDaily.start(clk.Now()))
	if got := r.header.Get("x-llm-ratelimit-budget-reset"); got != midnight.Format(time.RFC3339) {
		t.Fatalf("x-llm-ratelimit-budget-reset = %q, want %s", got, midnight.Format(time.RFC3339))
	}
	if msg := r.errorBody(t).Error.Message; !strings.Contains(msg, "daily budget") || !strings.Contains(msg, midnight.Format(time.RFC3339)) {
		t.Fatalf("message %q does not name the budget and the reset", msg)
	}
	clk.Advance(midnight.Sub(clk.Now()) - time.Second)
	if r := send(t, "/v1/chat/completions", key, body); r.status != 429 {
		t.Fatalf("a second before midnight: %d", r.status)
	}
	clk.Advance(time.Second)
	if r := send(t, "/v1/chat/completions", key, body); r.status != 200 {
		t.Fatalf("at midnight: %d %s", r.status, r.body)
	}
}

// What a request costs, per provider and path, from JSON and from
// streams: OpenAI's prompt_tokens include cached_tokens; Anthropic's
// input_tokens leave out cache reads and writes, priced apart.
func TestCostPerProviderFromJSONAndStreams(t *testing.T) {
	for i, c := range []struct {
		name, path, body, contentType, answer string
		want                                  int64 // nano-dollars at testNano
	}{
		{"openai chat json, cached", "/v1/chat/completions", `{"model":"m","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`, "application/json",
			`{"choices":[],"usage":{"prompt_tokens":2000,"completion_tokens":100,"prompt_tokens_details":{"cached_tokens":1500}}}`,
			500*1000 + 1500*250 + 100*2000},
		{"openai chat stream, cached", "/v1/chat/completions", `{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`, "text/event-stream",
			"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2000,\"completion_tokens\":100,\"prompt_tokens_details\":{\"cached_tokens\":1500}}}\n\ndata: [DONE]\n\n",
			500*1000 + 1500*250 + 100*2000},
		{"openai responses json, cached", "/v1/responses", `{"model":"m","max_output_tokens":50,"input":"hi"}`, "application/json",
			`{"output":[],"usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":1000},"output_tokens":10}}`,
			1000*250 + 10*2000},
		{"anthropic json, cache read and write", "/v1/messages", `{"model":"m","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`, "application/json",
			`{"type":"message","content":[],"usage":{"input_tokens":40,"cache_creation_input_tokens":1000,"cache_read_input_tokens":3000,"output_tokens":60}}`,
			40*1000 + 1000*1250 + 3000*250 + 60*2000},
		{"anthropic stream, cache read and write", "/v1/messages", `{"model":"m","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, "text/event-stream",
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":40,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":3000,\"output_tokens\":1}}}\n\n" +
				"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":60}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
			40*1000 + 1000*1250 + 3000*250 + 60*2000},
		{"gemini json, cached", geminiModelPath + ":generateContent", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":50}}`, "application/json",
			`{"candidates":[],"usageMetadata":{"promptTokenCount":800,"cachedContentTokenCount":600,"candidatesTokenCount":30,"thoughtsTokenCount":20}}`,
			200*1000 + 600*250 + 50*2000},
	} {
		t.Run(c.name, func(t *testing.T) {
			zoneName := fmt.Sprintf("cost_%d", i)
			mustLoad(t, fmt.Sprintf("zone %s\ncalibrate off\ndefault_%s\nbudget 100 monthly", zoneName, testPrice))
			setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", c.contentType)
				fmt.Fprint(w, c.answer)
			})
			key := "sk-cost-" + c.name
			if r := send(t, c.path, key, c.body); r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
			st := spendStatsOf(t, zoneName, key)
			if st.SpendUSD == nil || math.Abs(*st.SpendUSD-usd(c.want)) > 1e-12 {
				t.Fatalf("spend_usd = %v, want %v", st.SpendUSD, usd(c.want))
			}
		})
	}
}

// A stream cut off before its usage keeps the worst case; an answer that
// is not a success costs nothing.
func TestCutStreamKeepsTheWorstCaseAndFailuresCostNothing(t *testing.T) {
	const body = `{"model":"m","stream":true,"max_tokens":80,"messages":[{"role":"user","content":"hi"}]}`
	worst := worstOf(t, dOpenAI, body, testNano)
	mustLoad(t, fmt.Sprintf("zone costcut\ncalibrate off\nretry off\ndefault_%s\nbudget 100 monthly", testPrice))
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n") // and no usage, no [DONE]
	})
	if r := send(t, "/v1/chat/completions", "sk-cut", body); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// The request is settled when the handler returns, which may be just
	// after the client read the end of the stream.
	eventually(t, "the cut stream to be settled at its worst case", func() bool {
		st := spendStatsOf(t, "costcut", "sk-cut")
		return st.SpendUSD != nil && math.Abs(*st.SpendUSD-usd(worst)) <= 1e-12
	})
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(500)
		fmt.Fprint(w, `{"error":{"message":"boom","type":"server_error"}}`)
	})
	if r := send(t, "/v1/chat/completions", "sk-cut-500", body); r.status != 500 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if st := spendStatsOf(t, "costcut", "sk-cut-500"); st.SpendUSD == nil || *st.SpendUSD != 0 {
		t.Fatalf("a 500: spend %v, want 0", st.SpendUSD)
	}
}

// prices_file prices a model that no block prices; a block's own price
// wins; a model priced nowhere, under a budget, is refused (so that a
// budget cannot be dodged by naming an unpriced model).
func TestPricesFileAndUnpricedModels(t *testing.T) {
	mustLoad(t, "zone costfile\ncalibrate off\nprices_file testdata/prices/model_prices_sample.json\n"+
		"model acme-chat-small {\nprice input 3 output 3\n}\nbudget 100 monthly")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 1000, 100) })
	for _, c := range []struct {
		model string
		want  float64 // USD
	}{
		{"acme-chat-large", 1000*4e-06 + 100*1.6e-05}, // from the file
		{"acme-chat-small", (1000*3 + 100*3) / 1e6},   // the block wins over the file
	} {
		key := "sk-file-" + c.model
		body := `{"model":"` + c.model + `","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
		if r := send(t, "/v1/chat/completions", key, body); r.status != 200 {
			t.Fatalf("%s: %d %s", c.model, r.status, r.body)
		}
		st := spendStatsOf(t, "costfile", key)
		if st.SpendUSD == nil || math.Abs(*st.SpendUSD-c.want) > 1e-12 {
			t.Errorf("%s: spend %v, want %v", c.model, *st.SpendUSD, c.want)
		}
	}
	r := send(t, "/v1/chat/completions", "sk-file-unpriced", `{"model":"some-unpriced-model","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`)
	if r.status != 400 || !strings.Contains(r.body, "model_not_priced") {
		t.Errorf("an unpriced model under a budget: %d %s, want 400 model_not_priced", r.status, r.body)
	}
	tab, skipped, err := loadPricesFile("testdata/prices/model_prices_sample.json")
	if err != nil || len(skipped) != 0 {
		t.Fatal(err, skipped)
	}
	f := tab.exact
	if _, ok := f["acme-image-gen"]; ok || len(f) != 6 {
		t.Errorf("kept %d entries (the image model too: %v); want the 6 priced per token", len(f), ok)
	}
	// The file's token limits become the model's context window and
	// output reservation where no block sets them.
	r = send(t, "/v1/chat/completions", "sk-file-tiny", `{"model":"acme-tiny","max_tokens":99,"messages":[{"role":"user","content":"hi"}]}`)
	if r.status != 400 || !strings.Contains(r.body, "context_length_exceeded") || !strings.Contains(r.body, "maximum context length is 100") {
		t.Errorf("acme-tiny with max_tokens 99: %d %s, want 400 context_length_exceeded at 100", r.status, r.body)
	}
	if r := send(t, "/v1/chat/completions", "sk-file-tiny", `{"model":"acme-tiny","messages":[{"role":"user","content":"hi"}]}`); r.status != 200 {
		t.Errorf("acme-tiny without max_tokens: %d %s, want 200 (the reservation is what the window leaves)", r.status, r.body)
	}
	if e := f["acme-chat-large"]; e.maxInput != 200000 || e.maxOutput != 16000 || e.p.cached != 1000 || e.p.write != 4000 {
		t.Errorf("acme-chat-large: %+v", e)
	}
	if e := f["acme-legacy"]; e.maxInput != 0 || e.maxOutput != 0 {
		t.Errorf("acme-legacy limits: %+v, want none", e)
	}
}

// clamp_max_tokens: a request the budget cannot cover at its full output
// reservation goes up with a smaller limit, rewritten in the field its
// format uses (added when absent); without room for <min>, the 429 stands.
func TestClampMaxTokensRewritesTheOutputLimit(t *testing.T) {
	for i, c := range []struct {
		name, path, body string
		field            string // where the upstream finds the limit
	}{
		{"chat max_tokens", "/v1/chat/completions", `{"model":"m","max_tokens":4000,"messages":[{"role":"user","content":"hi"}]}`, "max_tokens"},
		{"chat max_completion_tokens", "/v1/chat/completions", `{"model":"m","max_completion_tokens":4000,"messages":[{"role":"user","content":"hi"}]}`, "max_completion_tokens"},
		{"chat without a limit", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, "max_completion_tokens"},
		{"responses", "/v1/responses", `{"model":"m","max_output_tokens":4000,"input":"hi"}`, "max_output_tokens"},
		{"completions", "/v1/completions", `{"model":"m","max_tokens":4000,"prompt":"hi"}`, "max_tokens"},
		{"anthropic", "/v1/messages", `{"model":"m","max_tokens":4000,"messages":[{"role":"user","content":"hi"}]}`, "max_tokens"},
		{"gemini", geminiModelPath + ":generateContent", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":4000}}`, "generationConfig.maxOutputTokens"},
		{"gemini without a config", geminiModelPath + ":generateContent", `{"contents":[{"parts":[{"text":"hi"}]}]}`, "generationConfig.maxOutputTokens"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// $0.002 covers the input and 1000 output tokens at $2/M, not 4000.
			mustLoad(t, fmt.Sprintf("zone clamp_%d\ncalibrate off\ndefault_%s\nbudget 0.002 daily\nclamp_max_tokens 100", i, testPrice))
			var got atomic.Value
			setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got.Store(b)
				chatCompletion(w, r, 1, 1)
			})
			r := send(t, c.path, "sk-clamp", c.body)
			if r.status != 200 {
				t.Fatalf("%d %s", r.status, r.body)
			}
			clamped := r.header.Get("x-llm-ratelimit-max-tokens-clamped")
			var body map[string]any
			if err := json.Unmarshal(got.Load().([]byte), &body); err != nil {
				t.Fatalf("the upstream got invalid JSON: %v: %s", err, got.Load())
			}
			v := any(body)
			for _, f := range strings.Split(c.field, ".") {
				v = v.(map[string]any)[f]
			}
			if clamped == "" || fmt.Sprint(v) != clamped {
				t.Fatalf("clamped %q, upstream's %s = %v (%s)", clamped, c.field, v, got.Load())
			}
			var n int64
			fmt.Sscan(clamped, &n)
			if n < 100 || n >= 1000 {
				t.Fatalf("clamped to %d, want what $0.002 leaves (about 990)", n)
			}
		})
	}
	// Without room for <min> output tokens, the 429 stands.
	mustLoad(t, fmt.Sprintf("zone clamp_none\ncalibrate off\ndefault_%s\nbudget 0.0001 daily\nclamp_max_tokens 100", testPrice))
	if r := send(t, "/v1/chat/completions", "sk-clamp", `{"model":"m","max_tokens":4000,"messages":[{"role":"user","content":"hi"}]}`); r.status != 429 || r.header.Get("x-llm-ratelimit-max-tokens-clamped") != "" {
		t.Fatalf("%d %v %s, want 429 unclamped", r.status, r.header, r.body)
	}
}

// The same budget, enforced by two handler instances through one real
// redis-server: of 50 requests at once over both, no more are admitted
// than the budget covers at the worst case, and the spend recorded in
// Redis is what the admitted ones cost.
func TestBudgetIsSharedByTwoInstancesThroughRedis(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	off := false
	var info requestInfo
	if err := parseRequest(dOpenAI, "/v1/chat/completions", []byte(chatBody), &info); err != nil {
		t.Fatal(err)
	}
	p := Price{Input: 1, Output: 2}
	worst := p.resolve().worst(float64(inputEstimate(dOpenAI, info)), float64(info.MaxOutput))
	budget := 10*worst + worst/2
	mk := func() *Handler {
		h := provisioned(t, &Handler{Zone: "redis-budget", Calibrate: &off, DefaultPrice: &p,
			Budget: &Budget{USD: usd(budget), Period: "daily"},
			Store:  &StoreConfig{Redis: &RedisConfig{Address: srv.addr, Fail: "closed", Prefix: "t:budget:", Timeout: testRedisTimeout}}})
		return h
	}
	a, b := mk(), mk()
	ok, rejected := admitAcross(t, 50, "sk-redis-budget", chatBody, func(w *httptest.ResponseRecorder) {
		if w.Header().Get("x-should-retry") != "false" || !strings.Contains(w.Body.String(), "insufficient_quota") {
			t.Errorf("429 without the budget's shape: %v %s", w.Header(), w.Body)
		}
	}, a, b)
	// Each settles to its usage (upstreamJSON: 260 in, 9 out, more than
	// the estimate), so the spend may pass the budget by what estimates
	// missed, never by more requests than the worst cases allow.
	u, _ := parseUsageJSON(dOpenAI, []byte(upstreamJSON))
	cost := p.resolve().cost(u)
	if ok == 0 || ok > 10 || ok+rejected != 50 {
		t.Fatalf("%d admitted (cost %d each), %d rejected, budget %d nano-dollars", ok, cost, rejected, budget)
	}
	start := periodDaily.start(time.Now())
	spent, err := a.rs.client.HGet(context.Background(), "{t:budget:redis-budget}:spend:"+hashKey("sk-redis-budget").id()+":"+strconv.FormatInt(start.Unix(), 10), "s").Int64()
	if err != nil || spent != ok*cost {
		t.Fatalf("spent in redis %d (%v), want %d × %d", spent, err, ok, cost)
	}
	t.Logf("%d admitted, %d rejected; %d nano-dollars spent of %d", ok, rejected, spent, budget)
}

// clamp_max_tokens applies to the token buckets too: a request whose
// output reservation TPM cannot serve goes up with what it can; when not
// even <min> fits, the 429 stands.
func TestClampMaxTokensFitsTheTokenBuckets(t *testing.T) {
	mustLoad(t, "zone clamp_tpm\ncalibrate off\ntpm 600\nclamp_max_tokens 100")
	var got atomic.Value
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(b)
		chatCompletion(w, r, 5, 5)
	})
	const body = `{"model":"m","max_tokens":4000,"messages":[{"role":"user","content":"hi"}]}`
	r := send(t, "/v1/chat/completions", "sk-clamp-tpm", body)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var n int64
	fmt.Sscan(r.header.Get("x-llm-ratelimit-max-tokens-clamped"), &n)
	var sent struct {
		MaxTokens int64 `json:"max_tokens"`
	}
	if err := json.Unmarshal(got.Load().([]byte), &sent); err != nil || n < 500 || n >= 600 || sent.MaxTokens != n {
		t.Fatalf("clamped %d, upstream max_tokens %d (%v); want what TPM 600 leaves after the input", n, sent.MaxTokens, err)
	}
	mustLoad(t, "zone clamp_otpm\ncalibrate off\notpm 50\nclamp_max_tokens 100")
	if r := send(t, "/v1/chat/completions", "sk-clamp-tpm", body); r.status != 429 || r.header.Get("x-llm-ratelimit-max-tokens-clamped") != "" {
		t.Fatalf("otpm 50 under <min> 100: %d %v", r.status, r.header)
	}
}

// The sweeper drops spend that no period can still count, and keeps the
// rest: a key's spend does not outlive its period by more than a month.
func TestSweepDropsStaleSpendOnly(t *testing.T) {
	z := newZone("sweep-spend")
	defer z.Destruct()
	nowNs := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC).UnixNano()
	day := periodDaily.start(time.Unix(0, nowNs)).Unix()
	entries := map[string]*keySpend{
		"nothing":   {start: day},
		"spent":     {start: day, spent: 5},
		"in-flight": {start: day, reserved: 7},
		"old":       {start: day - 40*24*3600, spent: 9},
	}
	for k, sp := range entries {
		s := z.shard(hashKey(k))
		if s.spend == nil {
			s.spend = map[keyPrefix]*keySpend{}
		}
		s.spend[hashKey(k).prefix()] = sp
	}
	z.sweep(nowNs)
	for k, keep := range map[string]bool{"nothing": false, "spent": true, "in-flight": true, "old": false} {
		_, ok := z.spendOf(hashKey(k))
		if ok != keep {
			t.Errorf("%s: kept %v, want %v", k, ok, keep)
		}
	}
}

// The budget's 429 tells the truth with the digits it needs: for a $0.003
// budget, the budget, what is left, what was spent, this request's worst
// case and the reset, none of them rounded to $0.00.
func TestBudgetMessageSaysEveryAmount(t *testing.T) {
	const body = `{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
	// $10 per million input and output tokens: 10,000 nano-dollars a token.
	p := price{in: 10000, out: 10000, cached: 10000, write: 10000}
	worst := worstOf(t, dOpenAI, body, p)
	mustLoad(t, "zone budgetmsg\ncalibrate off\nmodel gpt-4o {\nprice input 10 output 10\n}\nbudget 0.003 daily")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 150, 50) }) // $0.0020
	const key = "sk-budget-msg"
	if r := send(t, "/v1/chat/completions", key, body); r.status != 200 {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	r := send(t, "/v1/chat/completions", key, body)
	if r.status != 429 {
		t.Fatalf("second (worst case %d nano-dollars, $0.0010 left): %d %s, want 429", worst, r.status, r.body)
	}
	midnight := periodDaily.next(periodDaily.start(clk.Now())).Format(time.RFC3339)
	msg := r.errorBody(t).Error.Message
	for _, want := range []string{"daily budget of $0.0030", "has $0.0010 left", "$0.0020 spent", "could cost up to " + fmtUSD(worst), "resets at " + midnight} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "$0.00 ") || strings.Contains(msg, "$0.00)") {
		t.Errorf("message %q rounds an amount to $0.00", msg)
	}
}

// Amounts keep the digits they need.
func TestFmtUSD(t *testing.T) {
	for nano, want := range map[int64]string{0: "$0.00", 10e9: "$10.00", 3e6: "$0.0030", 6e6: "$0.0060", 123_000: "$0.00012", 1: "$0.000000001", 1_234_567_890: "$1.23", 999_999_999: "$1.0000"} {
		if got := fmtUSD(nano); got != want {
			t.Errorf("fmtUSD(%d) = %s, want %s", nano, got, want)
		}
	}
}
