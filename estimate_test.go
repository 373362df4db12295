package llmratelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// corpusDir is the estimator reference corpus (copied into this repository
// so that a clone tests alone), relative to the package dir.
const corpusDir = "testdata/estimator"

type referenceEntry struct {
	File                 string  `json:"file"`
	Format               string  `json:"format"`
	TextBytes            int64   `json:"text_bytes"`
	TextTokensO200k      int64   `json:"text_tokens_o200k"`
	Messages             int64   `json:"messages"`
	ImageTokens          []int64 `json:"image_tokens_by_formula"`
	MaxOutput            int64   `json:"max_output"`
	N                    int64   `json:"n"`
	ReferenceInputTokens int64   `json:"reference_input_tokens"`
}

// loadCorpus reads reference.json. A missing corpus fails the test (or
// benchmark): skipping would let the estimator go unchecked unnoticed.
func loadCorpus(t testing.TB) []referenceEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir, "reference.json"))
	if err != nil {
		t.Fatalf("estimator corpus not found: %v; it lives in %s (a copy of the reference corpus kept in this repository)", err, corpusDir)
	}
	var refs []referenceEntry
	if err := json.Unmarshal(b, &refs); err != nil {
		t.Fatalf("reference.json: %v", err)
	}
	if len(refs) == 0 {
		t.Fatal("reference.json lists no bodies")
	}
	return refs
}

func readCorpusBody(t testing.TB, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir, file))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return b
}

func formatOf(name string) dialect {
	if name == "anthropic" {
		return dAnthropic
	}
	return dOpenAI
}

// inputEstimate is the handler's own input estimate (demandFor) with no
// model block: default image costs, token_ratio 1.
func inputEstimate(f dialect, info requestInfo) int64 {
	h := &Handler{DefaultMaxOutput: defaultMaxOutput}
	return int64(h.demandFor(&info, nil, f).in)
}

type corpusRow struct {
	ref  referenceEntry
	info requestInfo
	est  int64
}

// corpusEstimates parses every corpus body and logs the ratio table.
func corpusEstimates(t testing.TB, refs []referenceEntry) (rows []corpusRow, aggregate float64) {
	t.Helper()
	var sumEst, sumRef int64
	t.Logf("%-38s %8s %8s %6s", "file", "estimate", "ref", "ratio")
	for _, r := range refs {
		f := formatOf(r.Format)
		var info requestInfo
		if err := parseRequest(f, "", readCorpusBody(t, r.File), &info); err != nil {
			t.Errorf("%s: %v", r.File, err)
			continue
		}
		est := inputEstimate(f, info)
		rows = append(rows, corpusRow{r, info, est})
		sumEst += est
		sumRef += r.ReferenceInputTokens
		t.Logf("%-38s %8d %8d %6.3f", r.File, est, r.ReferenceInputTokens, float64(est)/float64(r.ReferenceInputTokens))
	}
	aggregate = float64(sumEst) / float64(sumRef)
	t.Logf("%-38s %8d %8d %6.3f", "aggregate", sumEst, sumRef, aggregate)
	return rows, aggregate
}

func TestEstimateCorpus(t *testing.T) {
	refs := loadCorpus(t)
	rows, aggregate := corpusEstimates(t, refs)
	for _, row := range rows {
		r, info := row.ref, row.info
		if ratio := float64(row.est) / float64(r.ReferenceInputTokens); ratio < estimateLow || ratio > estimateHigh {
			t.Errorf("%s: estimate %d vs reference %d: ratio %.3f outside %.2f..%.2f", r.File, row.est, r.ReferenceInputTokens, ratio, estimateLow, estimateHigh)
		}
		if info.Messages != r.Messages {
			t.Errorf("%s: Messages = %d, want %d", r.File, info.Messages, r.Messages)
		}
		var low, high int64
		for _, it := range r.ImageTokens {
			if it == 85 {
				low++
			} else {
				high++
			}
		}
		if info.ImagesLow != low || info.Images != high {
			t.Errorf("%s: images low/other = %d/%d, want %d/%d", r.File, info.ImagesLow, info.Images, low, high)
		}
		if info.MaxOutput != r.MaxOutput {
			t.Errorf("%s: MaxOutput = %d, want %d", r.File, info.MaxOutput, r.MaxOutput)
		}
		if wantN := max(r.N, 1); info.N != wantN {
			t.Errorf("%s: N = %d, want %d", r.File, info.N, wantN)
		}
	}
	if math.Abs(aggregate-1) > 0.05 {
		t.Errorf("aggregate ratio %.3f outside ±5%%", aggregate)
	}
}

// Hand-made texts and their token counts, counted once with o200k_base
// (tiktoken) when these tests were written.
var (
	proseText   = refText{"The committee met on Tuesday to review the proposal for a new public library in the centre of town. After a long discussion about costs, opening hours and the needs of students, most members agreed that the plan was sound, although several asked for a clearer budget before the final vote next month.", 58}
	prose2Text  = refText{"Please summarise the main arguments in two short paragraphs, and point out anything that seems inconsistent or unsupported by the evidence presented.", 25}
	systemText  = refText{"You are a helpful assistant.", 6}
	goText      = refText{"func (s *Server) handle(w http.ResponseWriter, r *http.Request) {\n\tif r.Method != http.MethodPost {\n\t\thttp.Error(w, \"method not allowed\", http.StatusMethodNotAllowed)\n\t\treturn\n\t}\n\tdefer r.Body.Close()\n\tvar req struct {\n\t\tName  string `json:\"name\"`\n\t\tCount int    `json:\"count\"`\n\t}\n\tif err := json.NewDecoder(r.Body).Decode(&req); err != nil {\n\t\thttp.Error(w, err.Error(), http.StatusBadRequest)\n\t\treturn\n\t}\n\tfmt.Fprintf(w, \"hello %s, %d\\n\", req.Name, req.Count)\n}\n", 132}
	jsonText    = refText{"{\n  \"orders\": [\n    {\"id\": 10234, \"customer\": \"Alice Martin\", \"total_cents\": 4599, \"status\": \"shipped\"},\n    {\"id\": 10235, \"customer\": \"Bob Chen\", \"total_cents\": 12900, \"status\": \"pending\"},\n    {\"id\": 10236, \"customer\": \"Carla Diaz\", \"total_cents\": 750, \"status\": \"refunded\"}\n  ],\n  \"page\": 1,\n  \"has_more\": false\n}", 115}
	chineseText = refText{"人工智能正在改变我们的工作方式。许多公司开始使用大型语言模型来回答客户的问题、撰写文档以及分析数据。不过，专家提醒说，这些系统仍然会出错，因此重要的决定应该由人来审核。", 52}
	russianText = refText{"Вчера вечером мы долго гуляли по старому городу, разговаривали о книгах и о путешествиях, а потом зашли в маленькое кафе, где подавали очень вкусный чай с вареньем.", 47}
	// Tool definitions and calls, as compact JSON.
	toolsJSON      = refText{`[{"type":"function","function":{"name":"get_order","description":"Look up an order by its numeric id and return its status.","parameters":{"type":"object","properties":{"order_id":{"type":"integer","description":"The order id"}},"required":["order_id"]}}}]`, 57}
	anthToolsJSON  = refText{`[{"name":"get_order","description":"Look up an order by its numeric id and return its status.","input_schema":{"type":"object","properties":{"order_id":{"type":"integer","description":"The order id"}},"required":["order_id"]}}]`, 52}
	argsJSON       = refText{`{"order_id":10234}`, 7}
	toolResultJSON = refText{`{"id":10234,"status":"shipped","carrier":"DHL","eta":"2025-03-14"}`, 25}
	toolName       = refText{"get_order", 2}
)

type refText struct {
	text   string
	tokens int64
}

// q is s as a JSON string literal.
func q(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestEstimateTextKinds: the estimator against o200k on short hand-made
// texts, within the bounds every text of the broad corpus meets. Fluent
// English and modern Chinese news prose run high (the table averages them
// with code, technical text and classical Chinese); high is the safe side.
func TestEstimateTextKinds(t *testing.T) {
	cases := []struct {
		name string
		ref  refText
	}{
		{"english prose", proseText},
		{"english request", prose2Text},
		{"go source", goText},
		{"pretty JSON", jsonText},
		{"chinese", chineseText},
		{"russian", russianText},
		{"compact JSON tool result", toolResultJSON},
		{"compact JSON schema", toolsJSON},
	}
	for _, c := range cases {
		got := costmodel.EstimateText([]byte(c.ref.text))
		ratio := float64(got) / float64(c.ref.tokens)
		t.Logf("%-26s estimate %4d  o200k %4d  ratio %.3f  (bytes/4 ratio %.3f)", c.name, got, c.ref.tokens, ratio, float64(len(c.ref.text))/4/float64(c.ref.tokens))
		if ratio < estimateLow || ratio > estimateHigh {
			t.Errorf("%s: estimate %d vs o200k %d: ratio %.3f outside %.2f..%.2f", c.name, got, c.ref.tokens, ratio, estimateLow, estimateHigh)
		}
	}
}

// Appending characters never lowers an estimate (every charge is >= 0:
// internal/costmodel's TestChargesAreNeverNegative), nor does adding a
// message.
func TestEstimateMonotonic(t *testing.T) {
	for _, r := range []refText{proseText, goText, jsonText, chineseText, russianText, toolsJSON} {
		prev := int64(0)
		for n := 0; n <= len(r.text); n++ {
			if n < len(r.text) && !utf8.RuneStart(r.text[n]) {
				continue // text is whole characters
			}
			got := costmodel.EstimateText([]byte(r.text[:n]))
			if got < prev {
				t.Fatalf("estimate fell from %d to %d at byte %d of %.20q", prev, got, n, r.text)
			}
			prev = got
		}
	}
	// Body level: one more message never lowers the estimate.
	one := `{"messages":[{"role":"user","content":` + q(proseText.text) + `}]}`
	two := `{"messages":[{"role":"user","content":` + q(proseText.text) + `},{"role":"user","content":"ok"}]}`
	var a, b requestInfo
	if err := parseRequest(dOpenAI, "", []byte(one), &a); err != nil {
		t.Fatal(err)
	}
	if err := parseRequest(dOpenAI, "", []byte(two), &b); err != nil {
		t.Fatal(err)
	}
	if inputEstimate(dOpenAI, b) <= inputEstimate(dOpenAI, a) {
		t.Errorf("adding a message: %d -> %d", inputEstimate(dOpenAI, a), inputEstimate(dOpenAI, b))
	}
}

func TestParseRequestShapes(t *testing.T) {
	img := `"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="`
	cases := []struct {
		name string
		f    dialect
		body string
		text int64   // hand reference for TextTokens
		tol  float64 // 0: TextTokens exact; else within estimateLow..estimateHigh of the hand reference
		want requestInfo
	}{
		{
			name: "openai chat string content",
			f:    dOpenAI,
			body: `{"model":"gpt-4o","messages":[{"role":"system","content":` + q(systemText.text) + `},{"role":"user","content":` + q(proseText.text) + `}],"max_tokens":100}`,
			text: systemText.tokens + proseText.tokens, tol: 0.10,
			want: requestInfo{Model: "gpt-4o", Messages: 2, MaxOutput: 100, N: 1},
		},
		{
			name: "openai chat content parts with images",
			f:    dOpenAI,
			body: `{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":` + q(proseText.text) + `},{"type":"image_url","image_url":{"url":` + img + `,"detail":"low"}},{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}},{"image_url":{"detail":"high","url":` + img + `},"type":"image_url"}]}]}`,
			text: proseText.tokens, tol: 0.10,
			want: requestInfo{Model: "gpt-4o", Messages: 1, ImagesLow: 1, Images: 2, N: 1},
		},
		{
			name: "openai chat tools, tool_calls and tool result",
			f:    dOpenAI,
			body: `{"model":"gpt-4o","tools":` + toolsJSON.text + `,"messages":[{"role":"user","content":` + q(proseText.text) + `},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_order","arguments":` + q(argsJSON.text) + `}}]},{"role":"tool","tool_call_id":"call_1","content":` + q(toolResultJSON.text) + `}],"max_completion_tokens":300,"max_tokens":50,"n":2,"stream":true,"stream_options":{"include_usage":true}}`,
			text: toolsJSON.tokens + proseText.tokens + toolName.tokens + argsJSON.tokens + toolResultJSON.tokens, tol: 0.10,
			want: requestInfo{Model: "gpt-4o", Messages: 3, MaxOutput: 300, N: 2, Stream: true, StreamUsageSet: true},
		},
		{
			name: "openai legacy functions and function_call",
			f:    dOpenAI,
			body: `{"functions":[{"name":"get_order","description":"Look up an order by its numeric id and return its status.","parameters":{"type":"object","properties":{"order_id":{"type":"integer","description":"The order id"}},"required":["order_id"]}}],"messages":[{"role":"user","content":` + q(proseText.text) + `},{"role":"assistant","function_call":{"name":"get_order","arguments":` + q(argsJSON.text) + `}},{"role":"function","name":"get_order","content":` + q(toolResultJSON.text) + `}]}`,
			text: 50 + proseText.tokens + 2*toolName.tokens + argsJSON.tokens + toolResultJSON.tokens, tol: 0.10,
			want: requestInfo{Messages: 3, N: 1},
		},
		{
			name: "completions prompt string",
			f:    dOpenAI,
			body: `{"model":"gpt-3.5-turbo-instruct","prompt":` + q(proseText.text) + `,"max_tokens":64,"n":3}`,
			text: proseText.tokens, tol: 0.10,
			want: requestInfo{Model: "gpt-3.5-turbo-instruct", MaxOutput: 64, N: 3},
		},
		{
			name: "completions prompt array: max_tokens per prompt",
			f:    dOpenAI,
			body: `{"prompt":[` + q(proseText.text) + `,` + q(prose2Text.text) + `],"max_tokens":64}`,
			text: proseText.tokens + prose2Text.tokens, tol: 0.10,
			want: requestInfo{MaxOutput: 128, N: 1},
		},
		{
			name: "completions token ids",
			f:    dOpenAI,
			body: `{"prompt":[1212,318,257,1332],"max_tokens":16}`,
			text: 4,
			want: requestInfo{MaxOutput: 16, N: 1},
		},
		{
			name: "completions arrays of token ids",
			f:    dOpenAI,
			body: `{"prompt":[[1212,318],[257,1332,13]],"max_tokens":16}`,
			text: 5,
			want: requestInfo{MaxOutput: 32, N: 1},
		},
		{
			name: "responses input string and instructions",
			f:    dOpenAI,
			body: `{"model":"gpt-4.1","instructions":` + q(systemText.text) + `,"input":` + q(proseText.text) + `,"max_output_tokens":500}`,
			text: systemText.tokens + proseText.tokens, tol: 0.10,
			want: requestInfo{Model: "gpt-4.1", MaxOutput: 500, N: 1},
		},
		{
			name: "responses input items",
			f:    dOpenAI,
			body: `{"input":[{"role":"user","content":[{"type":"input_text","text":` + q(proseText.text) + `},{"type":"input_image","detail":"low","image_url":` + img + `},{"type":"input_image","image_url":` + img + `}]},{"type":"function_call","call_id":"c1","name":"get_order","arguments":` + q(argsJSON.text) + `},{"type":"function_call_output","call_id":"c1","output":` + q(toolResultJSON.text) + `},{"role":"assistant","content":[{"type":"output_text","text":` + q(prose2Text.text) + `}]}],"tools":` + toolsJSON.text + `}`,
			text: proseText.tokens + toolName.tokens + argsJSON.tokens + toolResultJSON.tokens + prose2Text.tokens + toolsJSON.tokens, tol: 0.10,
			want: requestInfo{Messages: 4, ImagesLow: 1, Images: 1, N: 1},
		},
		{
			name: "embeddings string",
			f:    dOpenAI,
			body: `{"model":"text-embedding-3-small","input":` + q(proseText.text) + `}`,
			text: proseText.tokens, tol: 0.10,
			want: requestInfo{Model: "text-embedding-3-small", N: 1},
		},
		{
			name: "embeddings array of strings",
			f:    dOpenAI,
			body: `{"input":[` + q(proseText.text) + `,` + q(goText.text) + `,` + q(chineseText.text) + `]}`,
			text: proseText.tokens + goText.tokens + chineseText.tokens, tol: 0.10,
			want: requestInfo{N: 1},
		},
		{
			name: "embeddings token ids",
			f:    dOpenAI,
			body: `{"input":[1,2,3]}`,
			text: 3,
			want: requestInfo{N: 1},
		},
		{
			name: "embeddings arrays of token ids",
			f:    dOpenAI,
			body: `{"input":[[1,2,3],[4,5]]}`,
			text: 5,
			want: requestInfo{N: 1},
		},
		{
			name: "chat with code, JSON, Chinese and Russian",
			f:    dOpenAI,
			body: `{"messages":[{"role":"user","content":` + q(goText.text) + `},{"role":"user","content":` + q(jsonText.text) + `},{"role":"user","content":` + q(chineseText.text) + `},{"role":"user","content":` + q(russianText.text) + `}]}`,
			text: goText.tokens + jsonText.tokens + chineseText.tokens + russianText.tokens, tol: 0.10,
			want: requestInfo{Messages: 4, N: 1},
		},
		{
			name: "anthropic system string",
			f:    dAnthropic,
			body: `{"model":"claude-sonnet-4-5","system":` + q(systemText.text) + `,"messages":[{"role":"user","content":` + q(proseText.text) + `}],"max_tokens":1024,"stream":true}`,
			text: systemText.tokens + proseText.tokens, tol: 0.10,
			want: requestInfo{Model: "claude-sonnet-4-5", Messages: 1, MaxOutput: 1024, N: 1, Stream: true},
		},
		{
			name: "anthropic system blocks and text blocks",
			f:    dAnthropic,
			body: `{"system":[{"type":"text","text":` + q(systemText.text) + `,"cache_control":{"type":"ephemeral"}},{"type":"text","text":` + q(prose2Text.text) + `}],"messages":[{"role":"user","content":[{"type":"text","text":` + q(proseText.text) + `}]},{"role":"assistant","content":[{"type":"text","text":` + q(goText.text) + `}]}],"max_tokens":10}`,
			text: systemText.tokens + prose2Text.tokens + proseText.tokens + goText.tokens, tol: 0.10,
			want: requestInfo{Messages: 2, MaxOutput: 10, N: 1},
		},
		{
			name: "anthropic tools, tool_use, tool_result and image",
			f:    dAnthropic,
			body: `{"tools":` + anthToolsJSON.text + `,"messages":[{"role":"user","content":` + q(proseText.text) + `},{"role":"assistant","content":[{"type":"text","text":` + q(prose2Text.text) + `},{"type":"tool_use","id":"toolu_1","name":"get_order","input":` + argsJSON.text + `}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":` + q(toolResultJSON.text) + `},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]},{"type":"image","source":{"type":"url","url":"https://example.com/a.png"}}]}],"max_tokens":1024}`,
			text: anthToolsJSON.tokens + proseText.tokens + prose2Text.tokens + toolName.tokens + argsJSON.tokens + toolResultJSON.tokens, tol: 0.10,
			want: requestInfo{Messages: 3, Images: 2, MaxOutput: 1024, N: 1},
		},
		{
			name: "anthropic tool_result string and text document",
			f:    dAnthropic,
			body: `{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":` + q(proseText.text) + `},{"type":"document","source":{"data":` + q(goText.text) + `,"type":"text","media_type":"text/plain"}},{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQK"}}]}],"max_tokens":5}`,
			text: proseText.tokens + goText.tokens, tol: 0.10,
			want: requestInfo{Messages: 1, MaxOutput: 5, N: 1},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var info requestInfo
			if err := parseRequest(c.f, "", []byte(c.body), &info); err != nil {
				t.Fatalf("parseRequest: %v", err)
			}
			if c.tol == 0 {
				if info.TextTokens != c.text {
					t.Errorf("TextTokens = %d, want %d", info.TextTokens, c.text)
				}
			} else if ratio := float64(info.TextTokens) / float64(c.text); ratio < estimateLow || ratio > estimateHigh {
				t.Errorf("TextTokens = %d, hand reference %d: ratio %.3f outside %.2f..%.2f", info.TextTokens, c.text, ratio, estimateLow, estimateHigh)
			}
			got := info
			got.TextTokens = 0
			if got != c.want {
				t.Errorf("info = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestParseRequestBehaviour(t *testing.T) {
	parse := func(t *testing.T, f dialect, body string) requestInfo {
		t.Helper()
		var info requestInfo
		if err := parseRequest(f, "", []byte(body), &info); err != nil {
			t.Fatalf("parseRequest(%.80s): %v", body, err)
		}
		return info
	}
	t.Run("escapes are decoded before counting", func(t *testing.T) {
		raw := parse(t, dOpenAI, `{"prompt":`+q(chineseText.text+"\n\tx")+`}`)
		var esc []byte
		for _, r := range chineseText.text {
			esc = fmt.Appendf(esc, `\u%04x`, r)
		}
		escaped := parse(t, dOpenAI, `{"prompt":"`+string(esc)+`\n\tx"}`)
		if raw.TextTokens != escaped.TextTokens {
			t.Errorf("escaped text counts %d, raw %d", escaped.TextTokens, raw.TextTokens)
		}
	})
	t.Run("a 1 MB base64 image counts as one image", func(t *testing.T) {
		data := strings.Repeat("iVBORw0KGgoAAAANSUhEUgAA", 1<<20/24)
		for _, c := range []struct {
			f    dialect
			body string
		}{
			{dOpenAI, `{"messages":[{"role":"user","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,` + data + `"}}]}]}`},
			{dOpenAI, `{"input":[{"role":"user","content":[{"type":"input_image","image_url":"data:image/png;base64,` + data + `"}]}]}`},
			{dAnthropic, `{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` + data + `"}},{"type":"text","text":"What is this?"}]}]}`},
		} {
			info := parse(t, c.f, c.body)
			if info.Images != 1 || info.TextTokens > 10 {
				t.Errorf("%.40s: Images = %d, TextTokens = %d; want 1 image and a few tokens", c.body, info.Images, info.TextTokens)
			}
		}
	})
	t.Run("duplicate keys: the last one counts", func(t *testing.T) {
		info := parse(t, dOpenAI, `{"max_tokens":10,"messages":[{"content":`+q(goText.text)+`}],"max_tokens":20,"messages":[{"content":"hi","content":"hello"},{"content":"x"}],"n":3,"n":null}`)
		last := parse(t, dOpenAI, `{"messages":[{"content":"hello"},{"content":"x"}]}`)
		if info.MaxOutput != 20 || info.Messages != 2 || info.TextTokens != last.TextTokens || info.N != 1 {
			t.Errorf("got %+v; want MaxOutput 20, Messages 2, TextTokens %d, N 1", info, last.TextTokens)
		}
		info = parse(t, dAnthropic, `{"system":`+q(goText.text)+`,"system":"hi","messages":[{"role":"user","content":[{"type":"text","text":`+q(goText.text)+`,"text":"yo"}]}]}`)
		last = parse(t, dAnthropic, `{"system":"hi","messages":[{"role":"user","content":[{"type":"text","text":"yo"}]}]}`)
		if info.TextTokens != last.TextTokens || info.TextTokens > 3 {
			t.Errorf("anthropic TextTokens = %d, want %d (that of the last occurrences alone)", info.TextTokens, last.TextTokens)
		}
	})
	t.Run("invalid UTF-8 is accepted and counted by bytes", func(t *testing.T) {
		info := parse(t, dOpenAI, "{\"prompt\":\"abc \xff\xfe\xc3 def\"}")
		if info.TextTokens < 3 {
			t.Errorf("TextTokens = %d, want >= 3", info.TextTokens)
		}
	})
	t.Run("fields the estimator does not read are not judged", func(t *testing.T) {
		info := parse(t, dOpenAI, `{"temperature":"hot","model":42,"user":{"a":[1,{"b":null}]},"messages":[{"role":7,"content":"hi","weird":[true]}],"metadata":[]}`)
		if info.Messages != 1 || info.Model != "" {
			t.Errorf("got %+v", info)
		}
		parse(t, dAnthropic, `{"n":"many","prompt":5,"input":true,"max_completion_tokens":"x","messages":[]}`)
	})
	t.Run("null means absent", func(t *testing.T) {
		info := parse(t, dOpenAI, `{"messages":null,"input":null,"prompt":null,"instructions":null,"tools":null,"max_tokens":null,"max_completion_tokens":null,"max_output_tokens":null,"n":null,"stream":null,"stream_options":null,"model":null}`)
		if info != (requestInfo{N: 1}) {
			t.Errorf("got %+v", info)
		}
		info = parse(t, dAnthropic, `{"system":null,"messages":null,"tools":null,"max_tokens":null,"stream":null}`)
		if info != (requestInfo{N: 1}) {
			t.Errorf("got %+v", info)
		}
	})
	t.Run("max_tokens precedence", func(t *testing.T) {
		for body, want := range map[string]int64{
			`{"max_tokens":1,"max_output_tokens":2,"max_completion_tokens":3}`: 3,
			`{"max_tokens":1,"max_output_tokens":2}`:                           2,
			`{"max_tokens":1}`:                                                 1,
			`{"max_tokens":1.0e2}`:                                             100,
			`{}`:                                                               0,
		} {
			if got := parse(t, dOpenAI, body).MaxOutput; got != want {
				t.Errorf("%s: MaxOutput = %d, want %d", body, got, want)
			}
		}
	})
	t.Run("format none reads nothing", func(t *testing.T) {
		info := requestInfo{Model: "stale", Messages: 9}
		if err := parseRequest(dNone, "", []byte("not json"), &info); err != nil || info != (requestInfo{N: 1}) {
			t.Errorf("got %+v, %v", info, err)
		}
	})
	t.Run("nesting up to the limit is accepted", func(t *testing.T) {
		inner := strings.Repeat("[", jsonscan.MaxDepth-1) + strings.Repeat("]", jsonscan.MaxDepth-1)
		parse(t, dOpenAI, `{"x":`+inner+`}`)
	})
}

func TestParseRequestRejects(t *testing.T) {
	deep := strings.Repeat("[", 10000) + strings.Repeat("]", 10000)
	deepObj := strings.Repeat(`{"a":`, 10000) + "1" + strings.Repeat("}", 10000)
	cases := []struct {
		name string
		f    dialect
		body string
		want string // substring of the error
	}{
		{"empty body", dOpenAI, ``, "empty"},
		{"white space only", dAnthropic, " \n\t ", "empty"},
		{"malformed JSON", dOpenAI, `{"messages":[}`, "invalid JSON"},
		{"truncated JSON", dOpenAI, `{"messages":[{"role":"user","content":"hel`, "unexpected end of input"},
		{"truncated after key", dAnthropic, `{"messages"`, "unexpected end of input"},
		{"trailing garbage", dOpenAI, `{"messages":[]} x`, "after the top-level object"},
		{"two objects", dOpenAI, `{}{}`, "after the top-level object"},
		{"top-level array", dOpenAI, `[{"messages":[]}]`, "must be a JSON object"},
		{"top-level string", dAnthropic, `"hi"`, "must be a JSON object"},
		{"messages a number", dOpenAI, `{"messages":5}`, "messages must be an array"},
		{"anthropic messages a string", dAnthropic, `{"messages":"hi"}`, "messages must be an array"},
		{"message not an object", dOpenAI, `{"messages":["hi"]}`, "messages[0] must be an object"},
		{"content a number", dAnthropic, `{"messages":[{"content":1}]}`, "messages[0].content must be a string or an array"},
		{"max_tokens a string", dOpenAI, `{"max_tokens":"100"}`, "max_tokens must be an integer"},
		{"max_tokens 1.5", dOpenAI, `{"max_tokens":1.5}`, "max_tokens must be an integer"},
		{"max_tokens 1e30", dAnthropic, `{"max_tokens":1e30}`, "max_tokens must be an integer"},
		{"max_tokens too large for int64", dOpenAI, `{"max_tokens":9223372036854775808}`, "max_tokens must be an integer"},
		{"negative max_completion_tokens", dOpenAI, `{"max_completion_tokens":-1}`, "max_completion_tokens must be >= 0"},
		{"max_output_tokens a bool", dOpenAI, `{"max_output_tokens":true}`, "max_output_tokens must be an integer"},
		{"n 0", dOpenAI, `{"n":0}`, "n must be >= 1"},
		{"n -1", dOpenAI, `{"n":-1}`, "n must be >= 1"},
		{"n a string", dOpenAI, `{"n":"2"}`, "n must be an integer"},
		{"stream yes", dOpenAI, `{"stream":"yes"}`, "stream must be a boolean"},
		{"anthropic stream 1", dAnthropic, `{"stream":1}`, "stream must be a boolean"},
		{"include_usage a string", dOpenAI, `{"stream_options":{"include_usage":"true"}}`, "include_usage must be a boolean"},
		{"stream_options an array", dOpenAI, `{"stream_options":[]}`, "stream_options must be an object"},
		{"system a number", dAnthropic, `{"system":1}`, "system must be a string or an array"},
		{"tools an object", dOpenAI, `{"tools":{}}`, "tools must be an array"},
		{"anthropic tools a string", dAnthropic, `{"tools":"x"}`, "tools must be an array"},
		{"input a number", dOpenAI, `{"input":1}`, "input must be a string or an array"},
		{"input element a bool", dOpenAI, `{"input":[true]}`, "input[0] must be"},
		{"prompt an object", dOpenAI, `{"prompt":{}}`, "prompt must be a string or an array"},
		{"instructions an array", dOpenAI, `{"instructions":["x"]}`, "instructions must be a string"},
		{"10,000-deep arrays", dOpenAI, `{"metadata":` + deep + `}`, "nesting deeper than 128"},
		{"10,000-deep objects in messages", dAnthropic, `{"messages":[{"content":[{"type":"tool_result","content":[` + deepObj + `]}]}]}`, "nesting deeper than 128"},
		{"10,000-deep top level", dOpenAI, deep, "nesting deeper than 128"},
		{"129 levels", dOpenAI, `{"x":` + strings.Repeat("[", jsonscan.MaxDepth) + strings.Repeat("]", jsonscan.MaxDepth) + `}`, "nesting deeper than 128"},
		{"control character in string", dOpenAI, "{\"prompt\":\"a\tb\"}", "control character"},
		{"invalid escape", dOpenAI, `{"prompt":"a\qb"}`, "invalid escape"},
		{"short unicode escape", dOpenAI, `{"prompt":"\u12"}`, "invalid escape"},
		{"trailing comma in array", dOpenAI, `{"messages":[{"content":"a"},]}`, "invalid JSON"},
		{"trailing comma in object", dOpenAI, `{"model":"x",}`, "invalid JSON"},
		{"bad literal", dOpenAI, `{"stream":tru}`, "invalid"},
		{"bad number", dOpenAI, `{"max_tokens":01}`, "invalid JSON"},
		{"number without digits", dOpenAI, `{"x":-}`, "invalid JSON"},
		{"unquoted key", dOpenAI, `{model:"x"}`, "invalid JSON"},
		{"missing colon", dAnthropic, `{"model" "x"}`, "invalid JSON"},
		{"syntax error in an unread field", dOpenAI, `{"metadata":{"a":[1,2}}`, "invalid JSON"},
		{"syntax error wins over a type error", dOpenAI, `{"max_tokens":"abc`, "invalid JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var info requestInfo
			err := parseRequest(c.f, "", []byte(c.body), &info)
			if err == nil {
				t.Fatalf("parseRequest accepted %.60q", c.body)
			}
			var bre *jsonscan.Error
			if !errors.As(err, &bre) {
				t.Fatalf("error %T %v is not a *jsonscan.Error", err, err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// parseRequest allocates only the model string.
func TestParseRequestAllocations(t *testing.T) {
	body := []byte(`{"model":"gpt-4o","tools":` + toolsJSON.text + `,"messages":[{"role":"user","content":[{"type":"text","text":` + q(proseText.text) + `},{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]},{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}],"max_tokens":5,"stream_options":{"include_usage":true}}`)
	anth := []byte(`{"model":"claude","system":[{"type":"text","text":"hi"}],"messages":[{"role":"user","content":[{"type":"tool_result","content":[{"type":"text","text":"x"}]},{"type":"document","source":{"type":"text","data":"doc"}}]}],"max_tokens":5}`)
	var info requestInfo
	for _, c := range []struct {
		f    dialect
		body []byte
	}{{dOpenAI, body}, {dAnthropic, anth}} {
		allocs := testing.AllocsPerRun(50, func() {
			if err := parseRequest(c.f, "", c.body, &info); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > 1 {
			t.Errorf("%v: %v allocations per parse, want <= 1", c.f, allocs)
		}
	}
}

func BenchmarkEstimate(b *testing.B) {
	refs := loadCorpus(b)
	var bodies [][]byte
	var formats []dialect
	total := 0
	for _, r := range refs {
		body := readCorpusBody(b, r.File)
		bodies = append(bodies, body)
		formats = append(formats, formatOf(r.Format))
		total += len(body)
	}
	b.Run("corpus", func(b *testing.B) {
		b.SetBytes(int64(total))
		b.ReportAllocs()
		var info requestInfo
		for b.Loop() {
			for i, body := range bodies {
				if err := parseRequest(formats[i], "", body, &info); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	for i, r := range refs {
		if !strings.Contains(r.File, "prose_40k") && !strings.Contains(r.File, "images") && !strings.Contains(r.File, "chinese_12k") {
			continue
		}
		b.Run(r.File, func(b *testing.B) {
			b.SetBytes(int64(len(bodies[i])))
			b.ReportAllocs()
			var info requestInfo
			for b.Loop() {
				if err := parseRequest(formats[i], "", bodies[i], &info); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// geminiBodyOf rewrites a chat or messages body of the corpus as a Gemini
// request with the same text: system text as systemInstruction, every other
// message as a turn of text parts, images as inlineData. ok is false for a
// body it does not rewrite (tools, prompts, Responses items, embeddings).
func geminiBodyOf(t *testing.T, raw []byte) (body []byte, turns, images int, ok bool) {
	t.Helper()
	var in struct {
		System   json.RawMessage `json:"system"`
		Messages []struct {
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
		Tools json.RawMessage `json:"tools"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	if len(in.Messages) == 0 || in.Tools != nil {
		return nil, 0, 0, false
	}
	type part map[string]any
	parts := func(content json.RawMessage) ([]part, bool) {
		var s string
		if json.Unmarshal(content, &s) == nil {
			return []part{{"text": s}}, true
		}
		var blocks []map[string]any
		if err := json.Unmarshal(content, &blocks); err != nil {
			return nil, false
		}
		var out []part
		for _, b := range blocks {
			switch b["type"] {
			case "text":
				out = append(out, part{"text": b["text"]})
			case "image", "image_url":
				images++
				out = append(out, part{"inlineData": map[string]any{"mimeType": "image/png", "data": "iVBORw0KGgo="}})
			default:
				return nil, false
			}
		}
		return out, true
	}
	req := map[string]any{"generationConfig": map[string]any{"maxOutputTokens": 100}}
	var contents []map[string]any
	var system []part
	if in.System != nil {
		p, ok := parts(in.System)
		if !ok {
			return nil, 0, 0, false
		}
		system = append(system, p...)
	}
	for _, m := range in.Messages {
		p, ok := parts(m.Content)
		if !ok {
			return nil, 0, 0, false
		}
		if m.Role == "system" {
			system = append(system, p...)
			continue
		}
		contents = append(contents, map[string]any{"role": m.Role, "parts": p})
	}
	if system != nil {
		req["systemInstruction"] = map[string]any{"parts": system}
	}
	req["contents"] = contents
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return body, len(contents), images, true
}

// TestEstimateCorpusAsGemini reads the corpus's chat and messages bodies
// rewritten as Gemini requests: the same text must estimate within the
// bounds of every body against its o200k reference (text, 3 per turn, 258
// per inline image), and within 2 % of what it estimates in the format it
// came in (the same text, only the wrapping differs).
func TestEstimateCorpusAsGemini(t *testing.T) {
	refs := loadCorpus(t)
	rewritten := 0
	for _, r := range refs {
		body, turns, images, ok := geminiBodyOf(t, readCorpusBody(t, r.File))
		if !ok {
			continue
		}
		rewritten++
		var info requestInfo
		if err := parseRequest(dGemini, geminiModelPath+":generateContent", body, &info); err != nil {
			t.Fatalf("%s as gemini: %v", r.File, err)
		}
		if info.Messages != int64(turns) || info.Images != int64(images) || info.MaxOutput != 100 || info.Model != "gemini-2.5-flash" {
			t.Errorf("%s as gemini: %+v, want %d turns, %d images", r.File, info, turns, images)
		}
		ref := r.TextTokensO200k + 3*int64(turns) + geminiFileTokens*int64(images)
		got := inputEstimate(dGemini, info)
		ratio := float64(got) / float64(ref)
		var orig requestInfo
		if err := parseRequest(formatOf(r.Format), "", readCorpusBody(t, r.File), &orig); err != nil {
			t.Fatal(err)
		}
		t.Logf("%-34s gemini estimate %6d reference %6d ratio %.3f", r.File, got, ref, ratio)
		if ratio < estimateLow || ratio > estimateHigh {
			t.Errorf("%s as gemini: ratio %.3f outside %.2f..%.2f", r.File, ratio, estimateLow, estimateHigh)
		}
		if d := float64(info.TextTokens) / float64(orig.TextTokens); d < 0.98 || d > 1.02 {
			t.Errorf("%s as gemini: %d text tokens, %d in its own format", r.File, info.TextTokens, orig.TextTokens)
		}
	}
	if rewritten < 10 {
		t.Fatalf("only %d corpus bodies rewritten as Gemini requests, want the 11 chat and messages bodies without tools", rewritten)
	}
}
