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

// testdata/prices/litellm_sample.json is a sample of LiteLLM's
// model_prices_and_context_window.json with the real file's hard cases.
// Its figures are LiteLLM's own (gpt-4.1, claude-sonnet-4-5 and its dated
// twin, gemini-2.5-pro's 200k tier, gemini-2.5-flash both bare and under
// gemini/, deepseek/deepseek-chat, azure/gpt-5.4's 272k tier, a vertex_ai
// entry, the $135,000-per-million wandb row, per-second, per-character and
// per-image rows, a tiered_pricing row, sample_spec); the example/* rows
// are made up: a null price, a string, a negative and an overflowing
// number, a row that is not an object.
const litellmSample = "testdata/prices/litellm_sample.json"

func loadSample(t *testing.T, path string) (*priceTable, []skippedRow) {
	t.Helper()
	tab, skipped, err := loadPricesFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return tab, skipped
}

// spendUSD is a key's spend_usd, NaN when the stats hold none.
func spendUSD(st KeyStats) float64 {
	if st.SpendUSD == nil {
		return math.NaN()
	}
	return *st.SpendUSD
}

// onlyRows writes a prices file of some rows of the sample.
func onlyRows(t *testing.T, names ...string) string {
	t.Helper()
	raw, err := os.ReadFile(litellmSample)
	if err != nil {
		t.Fatal(err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(raw, &all); err != nil {
		t.Fatal(err)
	}
	some := map[string]json.RawMessage{}
	for _, n := range names {
		some[n] = all[n]
	}
	b, _ := json.Marshal(some)
	path := filepath.Join(t.TempDir(), "prices.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The names clients send → the entry of the file they resolve to, and
// what 1,000 input and 500 output tokens cost there, in nano-dollars: in
// the table, and through a real Caddy in the request's own format, from
// the usage the upstream reports.
func TestModelNamesResolveToTheirPricesFileEntry(t *testing.T) {
	sample, _ := loadSample(t, litellmSample)
	geminiOnly, _ := loadSample(t, onlyRows(t, "gemini/gemini-2.5-flash"))
	for _, c := range []struct {
		name  string
		d     dialect
		tab   *priceTable // nil: the sample
		entry string      // "" for unpriced
		nano  int64       // 1,000 input + 500 output tokens
	}{
		{"gpt-4.1", dOpenAI, nil, "gpt-4.1", 1000*2000 + 500*8000},
		{"openai/gpt-4.1", dOpenAI, nil, "gpt-4.1", 1000*2000 + 500*8000},
		{"GPT-4.1", dOpenAI, nil, "gpt-4.1", 1000*2000 + 500*8000},
		{"gpt-4.1-2025-04-14", dOpenAI, nil, "gpt-4.1", 1000*2000 + 500*8000},
		{"anthropic/claude-sonnet-4-5", dAnthropic, nil, "claude-sonnet-4-5", 1000*3000 + 500*15000},
		// Not github_copilot/claude-sonnet-4.5, a key of that loose form
		// without prices.
		{"claude-sonnet-4.5", dAnthropic, nil, "claude-sonnet-4-5", 1000*3000 + 500*15000},
		{"Claude-Sonnet-4.5", dOpenAI, nil, "claude-sonnet-4-5", 1000*3000 + 500*15000},
		{"claude-sonnet-4-5-20250929", dAnthropic, nil, "claude-sonnet-4-5-20250929", 1000*3000 + 500*15000},
		{"anthropic/claude-sonnet-4.5-20250929", dAnthropic, nil, "claude-sonnet-4-5-20250929", 1000*3000 + 500*15000},
		{"claude-sonnet-4-5@20250929", dAnthropic, nil, "claude-sonnet-4-5", 1000*3000 + 500*15000},
		{"claude-sonnet-4-5-latest", dAnthropic, nil, "claude-sonnet-4-5", 1000*3000 + 500*15000},
		{"models/gemini-2.5-flash", dOpenAI, nil, "gemini-2.5-flash", 1000*300 + 500*2500},
		{"vertex_ai/gemini-2.5-flash", dOpenAI, nil, "gemini-2.5-flash", 1000*300 + 500*2500},
		{"gemini-2.5-flash", dGemini, nil, "gemini-2.5-flash", 1000*300 + 500*2500}, // the exact name first
		{"gemini-2.5-flash", dGemini, geminiOnly, "gemini/gemini-2.5-flash", 1000*300 + 500*2500},
		{"gemini-2.5-flash-lite", dGemini, nil, "gemini/gemini-2.5-flash-lite", 1000*100 + 500*400},
		{"gemini-flash-latest", dGemini, nil, "gemini/gemini-flash-latest", 1000*300 + 500*2500},
		{"deepseek-chat", dOpenAI, nil, "deepseek/deepseek-chat", 1000*280 + 500*420},
		{"azure/gpt-5.4", dOpenAI, nil, "azure/gpt-5.4", 1000*2500 + 500*15000},
		{"vertex_ai/gemini-3-pro-preview", dOpenAI, nil, "vertex_ai/gemini-3-pro-preview", 1000*2000 + 500*12000},
		{"gemini-3-pro-image", dGemini, nil, "gemini/gemini-3-pro-image", 1000*2000 + 500*12000}, // per image and per token
		{"some-model-nobody-prices", dOpenAI, nil, "", 0},
		{"wandb/deepseek-ai/DeepSeek-R1-0528", dOpenAI, nil, "", 0}, // $135,000 per million: skipped
		{"deepseek-ai/DeepSeek-R1-0528", dOpenAI, nil, "", 0},       // never the wandb row
		{"example/null-price", dOpenAI, nil, "", 0},
		{"tts-1", dOpenAI, nil, "", 0},     // per character
		{"whisper-1", dOpenAI, nil, "", 0}, // per second
		{"dall-e-3", dOpenAI, nil, "", 0},  // per image (aiml/dall-e-3)
		{"gemini-2.5-flashy", dGemini, nil, "", 0},
	} {
		t.Run(fmt.Sprintf("%s %s", c.d.spec().name, c.name), func(t *testing.T) {
			tab := c.tab
			if tab == nil {
				tab = sample
			}
			for round := range 2 { // resolved, then from the cache
				fp, ok := tab.lookup(c.name, providerOf(c.d))
				if c.entry == "" {
					if ok {
						t.Fatalf("round %d: resolved to %q, want unpriced", round, fp.name)
					}
					continue
				}
				if !ok || fp.name != c.entry {
					t.Fatalf("round %d: resolved to %v, want %q", round, fp, c.entry)
				}
				sc := spendConfig{prices: new(atomic.Pointer[priceTable])}
				sc.prices.Store(tab)
				p, tiers, priced := sc.priceFor(nil, c.name, providerOf(c.d), false)
				u := usage{Input: 1000, Read: 1000, Output: 500}
				if got := priceAt(p, tiers, 1000).cost(u); !priced || got != c.nano {
					t.Fatalf("round %d: costs %d nano-dollars (priced %v), want %d", round, got, priced, c.nano)
				}
			}
		})
	}

	// Through a real Caddy: the same names, in their own format.
	mustLoad(t, "zone pricenames\ncalibrate off\nprices_file "+litellmSample+"\nbudget 1000 monthly")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
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
	})
	for i, c := range []struct {
		name string
		d    dialect
		nano int64
	}{
		{"openai/gpt-4.1", dOpenAI, 1000*2000 + 500*8000},
		{"GPT-4.1", dOpenAI, 1000*2000 + 500*8000},
		{"anthropic/claude-sonnet-4-5", dAnthropic, 1000*3000 + 500*15000},
		{"claude-sonnet-4.5", dAnthropic, 1000*3000 + 500*15000},
		{"claude-sonnet-4-5-20250929", dAnthropic, 1000*3000 + 500*15000},
		{"models/gemini-2.5-flash", dOpenAI, 1000*300 + 500*2500},
		{"vertex_ai/gemini-2.5-flash", dOpenAI, 1000*300 + 500*2500},
		{"gemini-2.5-flash-lite", dGemini, 1000*100 + 500*400},
		{"deepseek-chat", dOpenAI, 1000*280 + 500*420},
	} {
		key := fmt.Sprintf("sk-pricenames-%d", i)
		var r reply
		switch c.d {
		case dGemini:
			r = send(t, "/v1beta/models/"+c.name+":generateContent", key, `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":10}}`)
		case dAnthropic:
			r = send(t, "/v1/messages", key, `{"model":"`+c.name+`","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`)
		default:
			r = send(t, "/v1/chat/completions", key, `{"model":"`+c.name+`","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`)
		}
		if r.status != 200 {
			t.Fatalf("%s: %d %s", c.name, r.status, r.body)
		}
		if st := spendStatsOf(t, "pricenames", key); st.SpendUSD == nil || math.Abs(*st.SpendUSD-usd(c.nano)) > 1e-12 {
			t.Errorf("%s through Caddy: spend %v, want %v", c.name, spendUSD(st), usd(c.nano))
		}
	}
}

// A file entry prices a request when it sets the input price and, unless
// the request generates nothing, the output price: null is not $0, an
// explicit 0 is free.
func TestNullPriceIsNotPricedAndZeroIsFree(t *testing.T) {
	tab, _ := loadSample(t, litellmSample)
	sc := spendConfig{prices: new(atomic.Pointer[priceTable])}
	sc.prices.Store(tab)
	for _, c := range []struct {
		name     string
		noOutput bool
		priced   bool
		nano     int64 // 1,000 input + 500 output tokens, 100 of them written to the cache
	}{
		{"example/null-price", false, false, 0},        // both null
		{"example/null-output-price", false, false, 0}, // input 1e-06, output null
		{"example/null-output-price", true, true, 1000 * 1000},
		{"doubao-embedding", true, true, 0},                 // input 0.0, no output price: an embedding is free
		{"doubao-embedding", false, false, 0},               // but a chat is not priced
		{"gemini/gemini-1.5-flash", false, true, 1000 * 75}, // output 0
		// cache_creation_input_token_cost 0.0: cache writes are free.
		{"deepseek/deepseek-chat", false, true, 900*280 + 500*420},
	} {
		p, tiers, ok := sc.priceFor(nil, c.name, "", c.noOutput)
		if ok != c.priced {
			t.Errorf("%s (no output %v): priced %v, want %v", c.name, c.noOutput, ok, c.priced)
			continue
		}
		u := usage{Input: 1000, Read: 1000, CacheWrite: 100, Output: 500}
		if c.noOutput {
			u.Output = 0
		}
		if got := priceAt(p, tiers, 1000).cost(u); ok && got != c.nano {
			t.Errorf("%s: costs %d nano-dollars, want %d", c.name, got, c.nano)
		}
	}
	if fp := tab.exact["deepseek/deepseek-chat"]; !fp.hasCacheWrite || fp.p.write != 0 || fp.p.cached != 28 {
		t.Errorf("deepseek/deepseek-chat: %+v, want cache writes at 0 and reads at 28 nano-dollars", fp)
	}
}

// The loose form, the family and the date suffix are what the lookup
// relies on; each is small enough to check by itself.
func TestNamePartsOfTheLookup(t *testing.T) {
	for in, want := range map[string]string{
		"claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
		"gpt-4o-2024-08-06":          "gpt-4o",
		"claude-3-5-sonnet@20240620": "claude-3-5-sonnet",
		"gemini-1.5-pro-latest":      "gemini-1.5-pro",
		"mistral-large-LATEST":       "mistral-large",
		"gpt-4-0613":                 "gpt-4-0613", // four digits are not a date
		"kimi-k2-thinking-251104":    "kimi-k2-thinking-251104",
		"model-20251399":             "model-20251399", // no 13th month
		"-20250929":                  "-20250929",
		"latest":                     "latest",
	} {
		if got := undated(in); got != want {
			t.Errorf("undated(%q) = %q, want %q", in, got, want)
		}
	}
	var buf [64]byte
	for in, want := range map[string]string{
		"Claude-Sonnet-4.5":  "claude-sonnet-4-5",
		"gpt-4.1":            "gpt-4-1",
		"qwen2.5-72b":        "qwen2-5-72b",
		"v.1":                "v.1",
		"model.name-4.":      "model.name-4.",
		"models/Gemini-2.5X": "models/gemini-2-5x",
	} {
		got, ok := appendLower(buf[:0], "", in)
		if foldDots(got); !ok || string(got) != want {
			t.Errorf("loose(%q) = %q, want %q", in, got, want)
		}
	}
	if _, ok := appendLower(buf[:0], "gemini", strings.Repeat("x", 60)); ok {
		t.Error("a name longer than the buffer was folded")
	}
	// Without case comes before dots as dashes: two keys that differ only
	// in a dot each keep their own name.
	two := newPriceTable("two", map[string]*filePrice{"gpt-4.1": {name: "gpt-4.1"}, "gpt-4-1": {name: "gpt-4-1"}, "Model-X.2": {name: "Model-X.2"}})
	for in, want := range map[string]string{"GPT-4.1": "gpt-4.1", "GPT-4-1": "gpt-4-1", "model-x.2": "Model-X.2", "openai/Gpt-4.1": "gpt-4.1"} {
		if fp, ok := two.lookup(in, "openai"); !ok || fp.name != want {
			t.Errorf("%s resolved to %v, want %s", in, fp, want)
		}
	}
	for in, want := range map[string]string{"deepseek-chat": "deepseek", "gpt-4.1": "gpt", "o3": "", "Mistral-large": "Mistral"} {
		if got := nameFamily(in); got != want {
			t.Errorf("nameFamily(%q) = %q, want %q", in, got, want)
		}
	}
}

// The cache of resolved names holds any number of distinct names to its
// size, and a name pushed out is resolved again, to the same entry.
func TestResolvedNamesCacheStaysBounded(t *testing.T) {
	tab, _ := loadSample(t, litellmSample)
	for i := range 50_000 {
		if _, ok := tab.lookup(fmt.Sprintf("no-such-model-%d", i), "openai"); ok {
			t.Fatal("an unknown name resolved")
		}
	}
	n := 0
	for i := range tab.cache {
		if tab.cache[i].Load() != nil {
			n++
		}
	}
	if n > resolvedSlots {
		t.Fatalf("%d names cached", n)
	}
	if fp, ok := tab.lookup("openai/GPT-4.1", "openai"); !ok || fp.name != "gpt-4.1" {
		t.Fatalf("after the flood: %v %v", fp, ok)
	}
	if allocs := testing.AllocsPerRun(100, func() { tab.lookup("openai/GPT-4.1", "openai") }); allocs != 0 {
		t.Errorf("a cached lookup allocates %v times", allocs)
	}
	if allocs := testing.AllocsPerRun(100, func() { tab.resolve("Vertex_AI/Claude-Sonnet-4.5-20250929", "anthropic") }); allocs != 0 {
		t.Errorf("resolving allocates %v times", allocs)
	}
}

// Long-context prices apply to the whole request when its input is above
// the tier's size, as providers bill it: settled at the input the
// upstream reports (Anthropic's cache reads and writes count), reserved at
// admission at the input estimate.
func TestLongContextTierPricesTheWholeRequest(t *testing.T) {
	mustLoad(t, "zone tiers\ncalibrate off\nprices_file "+litellmSample+"\nbudget 100 daily")
	for i, c := range []struct {
		name, path, body, answer string
		nano                     int64
	}{
		{"gemini-2.5-pro, 250k input (50k cached)", "/v1beta/models/gemini-2.5-pro:generateContent", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":1000}}`,
			`{"candidates":[],"usageMetadata":{"promptTokenCount":250000,"cachedContentTokenCount":50000,"candidatesTokenCount":1000}}`,
			200000*2500 + 50000*250 + 1000*15000}, // the tier's; below it 266,250,000
		{"gemini-2.5-pro, 200k input: not above", "/v1beta/models/gemini-2.5-pro:generateContent", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":1000}}`,
			`{"candidates":[],"usageMetadata":{"promptTokenCount":200000,"candidatesTokenCount":1000}}`,
			200000*1250 + 1000*10000},
		{"claude-sonnet-4-5, 150k input + 60k cache reads", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`,
			`{"type":"message","content":[],"usage":{"input_tokens":150000,"cache_read_input_tokens":60000,"output_tokens":100}}`,
			150000*6000 + 60000*600 + 100*22500},
		{"azure/gpt-5.4, 300k input: the 272k tier", "/v1/chat/completions", `{"model":"azure/gpt-5.4","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}`,
			`{"choices":[],"usage":{"prompt_tokens":300000,"completion_tokens":1000}}`,
			300000*5000 + 1000*22500},
	} {
		setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, c.answer)
		})
		key := fmt.Sprintf("sk-tier-%d", i)
		if r := send(t, c.path, key, c.body); r.status != 200 {
			t.Fatalf("%s: %d %s", c.name, r.status, r.body)
		}
		if st := spendStatsOf(t, "tiers", key); st.SpendUSD == nil || math.Abs(*st.SpendUSD-usd(c.nano)) > 1e-12 {
			t.Errorf("%s: spend %v, want %v", c.name, spendUSD(st), usd(c.nano))
		}
	}

	// Admission: a request whose input estimate is above 200k tokens
	// reserves its worst case at the tier's prices. A budget between the
	// worst case below the tier and at it refuses it.
	body := `{"contents":[{"parts":[{"text":"` + strings.Repeat("A long context of words. ", 60000) + `"}]}],"generationConfig":{"maxOutputTokens":1000}}`
	const path = "/v1beta/models/gemini-2.5-pro:generateContent"
	var info requestInfo
	if err := parseRequest(dGemini, path, []byte(body), &info); err != nil {
		t.Fatal(err)
	}
	in := float64(inputEstimate(dGemini, info))
	tab, _ := loadSample(t, litellmSample)
	fp := tab.exact["gemini-2.5-pro"]
	below, above := fp.p.worst(in, 1000), priceAt(fp.p, fp.tiers, in).worst(in, 1000)
	if in <= 200000 || above <= below {
		t.Fatalf("input estimate %v: worst %d below the tier, %d at it", in, below, above)
	}
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, `{"candidates":[],"usageMetadata":{"promptTokenCount":%d,"candidatesTokenCount":1000}}`, int64(in))
	})
	mustLoad(t, fmt.Sprintf("zone tiers_admit\ncalibrate off\nprices_file %s\nbudget %.9f daily", litellmSample, usd((below+above)/2)))
	if r := send(t, path, "sk-tier-admit", body); r.status != 429 || !strings.Contains(r.body, "RESOURCE_EXHAUSTED") {
		t.Fatalf("a budget that covers the worst case below the tier only: %d %.300s, want the budget's 429", r.status, r.body)
	}
	mustLoad(t, fmt.Sprintf("zone tiers_admit2\ncalibrate off\nprices_file %s\nbudget %.9f daily", litellmSample, usd(above)))
	if r := send(t, path, "sk-tier-admit", body); r.status != 200 {
		t.Fatalf("a budget of the worst case at the tier: %d %.300s", r.status, r.body)
	}
	if st := spendStatsOf(t, "tiers_admit2", "sk-tier-admit"); st.SpendUSD == nil || math.Abs(*st.SpendUSD-usd(int64(in)*2500+1000*15000)) > 1e-12 {
		t.Errorf("spend %v, want %v (the tier's prices)", spendUSD(st), usd(int64(in)*2500+1000*15000))
	}
}
