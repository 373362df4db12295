package llmratelimit

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestParseUsageJSON(t *testing.T) {
	longContent := strings.Repeat(`{\"k\": [1, 2, \"usage\"]} `, 2000)
	cases := []struct {
		name string
		f    dialect
		body string
		want usage
		ok   bool
	}{
		{"openai chat", dOpenAI, `{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}`, usage{19, 10}, true},
		{"openai chat, usage first, big content after", dOpenAI, `{"usage":{"completion_tokens":3,"prompt_tokens":4},"choices":[{"message":{"content":"` + longContent + `"}}]}`, usage{4, 3}, true},
		{"openai chat, big content before usage", dOpenAI, `{"choices":[{"message":{"content":"` + longContent + `","usage":{"prompt_tokens":999}}}],"usage":{"prompt_tokens":4,"completion_tokens":3}}`, usage{4, 3}, true},
		{"openai completions", dOpenAI, `{"object":"text_completion","choices":[{"text":"x"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}`, usage{5, 7}, true},
		{"openai embeddings", dOpenAI, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,0.0156]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}`, usage{8, 0}, true},
		{"openai responses", dOpenAI, `{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}`, usage{36, 87}, true},
		{"anthropic with cache fields", dAnthropic, `{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":30000,"output_tokens":120,"service_tier":"standard"}}`, usage{2050, 120}, true},
		{"anthropic without cache fields", dAnthropic, `{"type":"message","usage":{"input_tokens":12,"output_tokens":6}}`, usage{12, 6}, true},
		{"anthropic cache null", dAnthropic, `{"usage":{"input_tokens":12,"cache_creation_input_tokens":null,"output_tokens":6}}`, usage{12, 6}, true},
		{"missing usage", dOpenAI, `{"id":"x","choices":[]}`, usage{}, false},
		{"usage null", dOpenAI, `{"usage":null}`, usage{}, false},
		{"usage empty", dAnthropic, `{"usage":{}}`, usage{}, false},
		{"usage with other fields only", dOpenAI, `{"usage":{"total_tokens":5}}`, usage{}, false},
		// The usage is read from the tail of a response that streams past, so
		// the last usage object counts wherever it stands, and what comes
		// before it is not judged.
		{"usage nested (a Responses event)", dOpenAI, `{"response":{"usage":{"input_tokens":1,"output_tokens":2}}}`, usage{Input: 1, Output: 2}, true},
		{"malformed before usage", dOpenAI, `{"choices":[},"usage":{"prompt_tokens":1}}`, usage{Input: 1}, true},
		{"malformed usage", dOpenAI, `{"usage":{"prompt_tokens":1,"completion_tokens":}}`, usage{}, false},
		{"truncated", dAnthropic, `{"usage":{"input_tokens":1`, usage{}, false},
		{"anthropic input plus cache writes saturates", dAnthropic, `{"usage":{"input_tokens":9223372036854775807,"cache_creation_input_tokens":1,"output_tokens":1}}`, usage{Input: math.MaxInt64, Output: 1}, true},
		{"usage inside an array", dOpenAI, `[{"usage":{"prompt_tokens":1}}]`, usage{Input: 1}, true},
		{"empty body", dOpenAI, ``, usage{}, false},
		{"html error page", dAnthropic, `<html>502 Bad Gateway</html>`, usage{}, false},
		{"negative and fractional counts are ignored", dOpenAI, `{"usage":{"prompt_tokens":-1,"completion_tokens":2.5}}`, usage{}, false},
		{"format none", dNone, `{"usage":{"prompt_tokens":1}}`, usage{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := parseUsageJSON(c.f, []byte(c.body))
			if got != c.want || ok != c.ok {
				t.Errorf("parseUsageJSON = %+v, %v; want %+v, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

func TestAppendOpenAIError(t *testing.T) {
	msg := "Rate limit reached on tokens per min (TPM): Limit 80000, Used 79500, Requested 1200. \"Quoted\" \\ path\nnew line \x01 \xff"
	prefix := []byte("keep:")
	out := appendOpenAIError(prefix, "tokens", "rate_limit_exceeded", msg)
	if !strings.HasPrefix(string(out), "keep:") {
		t.Fatalf("dst prefix lost: %s", out)
	}
	body := out[len(prefix):]
	var got struct {
		Error struct {
			Message *string `json:"message"`
			Type    *string `json:"type"`
			Param   any     `json:"param"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	e := got.Error
	if e.Message == nil || *e.Message != strings.ReplaceAll(msg, "\xff", "\uFFFD") || *e.Type != "tokens" || *e.Code != "rate_limit_exceeded" || e.Param != nil {
		t.Errorf("decoded %+v from %s", e, body)
	}
	var raw map[string]map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	if p, ok := raw["error"]["param"]; !ok || p != nil {
		t.Errorf("param must be present and null: %s", body)
	}
	if len(raw) != 1 || len(raw["error"]) != 4 {
		t.Errorf("unexpected fields: %s", body)
	}
	// An empty code is null.
	if err := json.Unmarshal(appendOpenAIError(nil, "invalid_request_error", "", "x"), &raw); err != nil || raw["error"]["code"] != nil {
		t.Errorf("empty code: %v %v", raw, err)
	}
}

func TestAppendAnthropicError(t *testing.T) {
	msg := "Number of request tokens has exceeded your per-minute rate limit \"ITPM\"\t\u2028 中"
	body := appendAnthropicError(nil, "rate_limit_error", msg)
	var got struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if got.Type != "error" || got.Error.Type != "rate_limit_error" || got.Error.Message != msg {
		t.Errorf("decoded %+v from %s", got, body)
	}
	if want := `{"type":"error","error":{"type":"rate_limit_error","message":`; !strings.HasPrefix(string(body), want) {
		t.Errorf("field order: %s", body)
	}
}

func TestErrorBodiesDoNotAllocateBeyondDst(t *testing.T) {
	buf := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() {
		buf = appendOpenAIError(buf[:0], "tokens", "rate_limit_exceeded", "Rate limit reached")
		buf = appendAnthropicError(buf[:0], "rate_limit_error", "Rate limit reached")
	})
	if allocs != 0 {
		t.Errorf("%v allocations per call", allocs)
	}
}

func BenchmarkParseUsageJSON(b *testing.B) {
	content := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 200)
	bodies := map[string]struct {
		f    dialect
		body string
	}{
		"openai_chat": {dOpenAI, `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"` + content + `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}`},
		"anthropic":   {dAnthropic, `{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"` + content + `"}],"usage":{"input_tokens":50,"cache_creation_input_tokens":20,"cache_read_input_tokens":30,"output_tokens":120}}`},
	}
	for name, c := range bodies {
		body := []byte(c.body)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := parseUsageJSON(c.f, body); !ok {
					b.Fatal("no usage")
				}
			}
		})
	}
}
