package llmratelimit

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// unpricedRequests are a request for a model nothing prices in each
// dialect's own shape.
var unpricedRequests = []struct {
	d          dialect
	path, body string
}{
	{dOpenAI, "/v1/chat/completions", `{"model":"acme-unpriced-9000","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`},
	{dAnthropic, "/v1/messages", `{"model":"acme-unpriced-9000","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`},
	{dGemini, "/v1beta/models/acme-unpriced-9000:generateContent", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":10}}`},
}

// answerInFormat answers like the upstream of the request's format, with
// usage: 1,000 input and 500 output tokens.
func answerInFormat(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	switch {
	case strings.HasSuffix(r.URL.Path, ":generateContent"):
		fmt.Fprint(w, `{"candidates":[],"usageMetadata":{"promptTokenCount":1000,"candidatesTokenCount":500}}`)
	case r.URL.Path == "/v1/messages":
		fmt.Fprint(w, `{"type":"message","content":[],"usage":{"input_tokens":1000,"output_tokens":500}}`)
	default:
		chatCompletion(w, r, 1000, 500)
	}
}

// A model that nothing prices, without default_price: a key with a budget
// is refused it (400 model_not_priced, in each format's error shape, and
// the upstream never sees it); a key without one goes up at cost 0, and
// the zone counts it in caddy_llm_ratelimit_unpriced_requests_total.
func TestUnpricedModelIsRefusedUnderABudgetAndFreeWithout(t *testing.T) {
	mustLoad(t, "zone unpriced\ncalibrate off\nprices_file "+litellmSample+"\n"+
		"model premium {\nprice input 150 output 600\n}\n"+ // the dearest price configured
		"tier capped {\nbudget 100 daily\n}\napi_key sk-unpriced-capped capped")
	var upstreamCalls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		upstreamCalls.Add(1)
		answerInFormat(w, r)
	})
	for _, c := range unpricedRequests {
		r := send(t, c.path, "sk-unpriced-capped", c.body)
		if r.status != 400 || !strings.Contains(r.body, "acme-unpriced-9000") {
			t.Fatalf("%s, a key with a budget: %d %s, want 400 naming the model", c.d.spec().name, r.status, r.body)
		}
		switch c.d {
		case dOpenAI:
			e := r.errorBody(t)
			if e.Error.Type != "invalid_request_error" || e.Error.Code == nil || *e.Error.Code != "model_not_priced" {
				t.Errorf("openai shape: %s", r.body)
			}
		case dAnthropic:
			if e := r.errorBody(t); e.Type != "error" || e.Error.Type != "invalid_request_error" {
				t.Errorf("anthropic shape: %s", r.body)
			}
		case dGemini:
			var e struct {
				Error struct {
					Code   int    `json:"code"`
					Status string `json:"status"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error.Code != 400 || e.Error.Status != "INVALID_ARGUMENT" {
				t.Errorf("gemini shape: %s", r.body)
			}
		}
	}
	if n := upstreamCalls.Load(); n != 0 {
		t.Fatalf("the upstream saw %d refused requests", n)
	}
	// A request that names no model and reads no body costs nothing: it
	// is not refused.
	get, err := http.NewRequest(http.MethodGet, "http://"+gateway+"/v1/models", nil)
	if err != nil {
		t.Fatal(err)
	}
	get.Header.Set("Authorization", "Bearer sk-unpriced-capped")
	if r := sendReq(t, get); r.status != 200 {
		t.Fatalf("GET /v1/models for a key with a budget: %d %s", r.status, r.body)
	}
	upstreamCalls.Store(0)

	before := metricValue(t, scrape(t), "caddy_llm_ratelimit_unpriced_requests_total", `zone="unpriced"`)
	for _, c := range unpricedRequests {
		if r := send(t, c.path, "sk-unpriced-free", c.body); r.status != 200 {
			t.Fatalf("%s, a key without a budget: %d %s, want 200", c.d.spec().name, r.status, r.body)
		}
	}
	if after := metricValue(t, scrape(t), "caddy_llm_ratelimit_unpriced_requests_total", `zone="unpriced"`); after-before != 3 {
		t.Errorf("unpriced_requests_total went from %v to %v, want 3 more", before, after)
	}
	// Cost 0: never the dearest price configured ($150/$600 per million
	// here, 1000×150,000 + 500×600,000 nano-dollars a request).
	if total := zoneOf(t, "unpriced").costs.total.Load(); total != 0 {
		t.Errorf("the zone's cost total is %d nano-dollars, want 0", total)
	}
	// A priced model still costs its price, for both keys.
	body := `{"model":"gpt-4.1","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`
	for _, key := range []string{"sk-unpriced-capped", "sk-unpriced-free"} {
		if r := send(t, "/v1/chat/completions", key, body); r.status != 200 {
			t.Fatalf("gpt-4.1 for %s: %d %s", key, r.status, r.body)
		}
	}
	if total := zoneOf(t, "unpriced").costs.total.Load(); total != 2*(1000*2000+500*8000) {
		t.Errorf("the zone's cost total is %d nano-dollars, want two gpt-4.1 requests", total)
	}
}

// With default_price, a model nothing else prices costs default_price,
// whatever the dearest row of the file or block (LiteLLM's $135,000 per
// million tokens rows, which the old fallback charged); and a client that
// names the dearest row's model does not get its price either, since the
// row is skipped as out of range.
func TestUnpricedModelNeverCostsTheDearestRow(t *testing.T) {
	mustLoad(t, "zone dearest\ncalibrate off\nprices_file "+litellmSample+"\n"+
		"model premium {\nprice input 150 output 600\n}\ndefault_price input 1 output 2\nbudget 100 daily")
	setUpstream(t, answerInFormat)
	for i, c := range unpricedRequests {
		key := fmt.Sprintf("sk-dearest-%d", i)
		if r := send(t, c.path, key, c.body); r.status != 200 {
			t.Fatalf("%s: %d %s", c.d.spec().name, r.status, r.body)
		}
		if st := spendStatsOf(t, "dearest", key); math.Abs(spendUSD(st)-usd(1000*1000+500*2000)) > 1e-12 {
			t.Errorf("%s: spend %v, want default_price's %v", c.d.spec().name, spendUSD(st), usd(1000*1000+500*2000))
		}
	}
	r := send(t, "/v1/chat/completions", "sk-dearest-wandb", `{"model":"wandb/deepseek-ai/DeepSeek-R1-0528","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`)
	if r.status != 200 {
		t.Fatalf("the wandb model: %d %s", r.status, r.body)
	}
	if st := spendStatsOf(t, "dearest", "sk-dearest-wandb"); math.Abs(spendUSD(st)-usd(1000*1000+500*2000)) > 1e-12 {
		t.Errorf("the wandb model: spend %v, want default_price's %v, not $135,000 per million", spendUSD(st), usd(1000*1000+500*2000))
	}
}

// A file with rows the reader cannot use (a string, a negative, an absurd
// and an overflowing price, a row that is not an object) loads, and the
// load logs one warning that names each skipped model and field. Rows not
// priced per token (per image, second or character, tiered_pricing, null
// prices) are left out without a word.
func TestPricesFileSkipsBadRowsWithOneWarning(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "caddy.log")
	if err := load(t, siteConfigWith("log {\n\t\toutput file "+logPath+"\n\t\tformat json\n\t}",
		"zone badrows\ncalibrate off\nprices_file "+litellmSample+"\nbudget 100 daily")); err != nil {
		t.Fatal(err)
	}
	setUpstream(t, answerInFormat)
	if r := send(t, "/v1/chat/completions", "sk-badrows", `{"model":"gpt-4.1","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`); r.status != 200 {
		t.Fatalf("gpt-4.1 after the load: %d %s", r.status, r.body)
	}
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var warnings []map[string]any
	for _, line := range strings.Split(string(raw), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && strings.HasPrefix(fmt.Sprint(e["msg"]), "prices_file") {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 || warnings[0]["level"] != "warn" {
		t.Fatalf("%d prices_file log entries, want one warning: %v", len(warnings), warnings)
	}
	w := warnings[0]
	t.Logf("the warning: %v", w)
	rows := fmt.Sprint(w["rows"])
	for _, want := range []string{
		"example/string-price: input_cost_per_token is a string",
		"example/negative-price: output_cost_per_token is negative",
		"example/overflowing-price: input_cost_per_token is out of range",
		"wandb/deepseek-ai/DeepSeek-R1-0528: input_cost_per_token is out of range",
		"; output_cost_per_token is out of range (0.54",
		"example/not-an-object: is not an object",
	} {
		if !strings.Contains(rows, want) {
			t.Errorf("the warning does not say %q: %v", want, w)
		}
	}
	for _, quiet := range []string{"tts-1", "whisper-1", "aiml/dall-e-3", "gemini/veo-2.0-generate-001", "example/null-price", "volcengine/", "github_copilot/", "sample_spec"} {
		if strings.Contains(rows, quiet) {
			t.Errorf("the warning names %s, a row not priced per token: %v", quiet, w)
		}
	}
	if w["file"] != litellmSample || w["skipped"] != 5.0 {
		t.Errorf("the warning's file and count: %v", w)
	}
}

// Only a file that cannot be read or is not a JSON object fails the
// config, with an error that names the file, not a Go type.
func TestPricesFileThatIsNotAnObjectFailsNamingTheFile(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"array.json":     `[{"gpt-4.1":{"input_cost_per_token":2e-06}}]`,
		"string.json":    `"prices"`,
		"truncated.json": `{"gpt-4.1": {"input_cost_per_token": 2e-06`,
		"empty.json":     ``,
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		err := load(t, siteConfig("zone notobject\nprices_file "+path))
		if err == nil || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "Go value") || strings.Contains(err.Error(), "map[") {
			t.Errorf("%s: %v, want an error naming the file", name, err)
		}
	}
	missing := filepath.Join(dir, "missing.json")
	if err := load(t, siteConfig("zone notobject\nprices_file "+missing)); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("a missing file: %v, want an error naming it", err)
	}
}

// A key written with escapes is read as its text; anything after the
// object is an error that names the file.
func TestPricesFileReadsEscapedKeysAndRejectsTrailingText(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "escaped.json")
	if err := os.WriteFile(good, []byte(`{"vendor\u002fmodel-\"x\"": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}} `), 0o600); err != nil {
		t.Fatal(err)
	}
	tab, skipped, err := loadPricesFile(good)
	if err != nil || len(skipped) != 0 {
		t.Fatal(err, skipped)
	}
	if fp, ok := tab.lookup(`vendor/model-"x"`, ""); !ok || fp.p.in != 1000 || fp.p.out != 2000 {
		t.Errorf("the escaped key: %+v %v", fp, ok)
	}
	bad := filepath.Join(dir, "trailing.json")
	if err := os.WriteFile(bad, []byte(`{"m": {"input_cost_per_token": 1e-06}} {}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadPricesFile(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("text after the object: %v, want an error naming the file", err)
	}
}
