package llmratelimit

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
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
		{"openai chat", dOpenAI, `{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}`, usage{Input: 19, Output: 10}, true},
		{"openai chat, usage first, big content after", dOpenAI, `{"usage":{"completion_tokens":3,"prompt_tokens":4},"choices":[{"message":{"content":"` + longContent + `"}}]}`, usage{Input: 4, Output: 3}, true},
		{"openai chat, big content before usage", dOpenAI, `{"choices":[{"message":{"content":"` + longContent + `","usage":{"prompt_tokens":999}}}],"usage":{"prompt_tokens":4,"completion_tokens":3}}`, usage{Input: 4, Output: 3}, true},
		{"openai chat with cached tokens", dOpenAI, `{"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}`, usage{Input: 2006, Output: 300, Cached: 1920}, true},
		{"openai responses with cached tokens", dOpenAI, `{"usage":{"input_tokens":5000,"input_tokens_details":{"cached_tokens":4096},"output_tokens":10,"output_tokens_details":{"reasoning_tokens":0}}}`, usage{Input: 5000, Output: 10, Cached: 4096}, true},
		{"openai cached tokens above the prompt are capped", dOpenAI, `{"usage":{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":99}}}`, usage{Input: 10, Output: 1, Cached: 10}, true},
		{"openai completions", dOpenAI, `{"object":"text_completion","choices":[{"text":"x"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}`, usage{Input: 5, Output: 7}, true},
		{"openai embeddings", dOpenAI, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,0.0156]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}`, usage{Input: 8, Output: 0}, true},
		{"openai responses", dOpenAI, `{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}`, usage{Input: 36, Output: 87}, true},
		{"anthropic with cache fields", dAnthropic, `{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":30000,"output_tokens":120,"service_tier":"standard"}}`, usage{Input: 2050, Output: 120, Cached: 30000, CacheWrite: 2000}, true},
		{"anthropic without cache fields", dAnthropic, `{"type":"message","usage":{"input_tokens":12,"output_tokens":6}}`, usage{Input: 12, Output: 6}, true},
		{"anthropic cache null", dAnthropic, `{"usage":{"input_tokens":12,"cache_creation_input_tokens":null,"output_tokens":6}}`, usage{Input: 12, Output: 6}, true},
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
		{"anthropic input plus cache writes saturates", dAnthropic, `{"usage":{"input_tokens":9223372036854775807,"cache_creation_input_tokens":1,"output_tokens":1}}`, usage{Input: math.MaxInt64, Output: 1, CacheWrite: 1}, true},
		{"usage inside an array", dOpenAI, `[{"usage":{"prompt_tokens":1}}]`, usage{Input: 1}, true},
		{"empty body", dOpenAI, ``, usage{}, false},
		{"html error page", dAnthropic, `<html>502 Bad Gateway</html>`, usage{}, false},
		{"negative and fractional counts are ignored", dOpenAI, `{"usage":{"prompt_tokens":-1,"completion_tokens":2.5}}`, usage{}, false},
		{"format none", dNone, `{"usage":{"prompt_tokens":1}}`, usage{}, false},
		{"openai with spaces", dOpenAI, "{\"usage\" : {\n  \"prompt_tokens\" : 19 ,\n  \"completion_tokens\": 10\n}}", usage{Input: 19, Output: 10}, true},
		{"anthropic with spaces", dAnthropic, `{"usage": {"input_tokens": 50, "cache_creation_input_tokens": 20, "output_tokens": 7}}`, usage{Input: 70, Output: 7, CacheWrite: 20}, true},
		{"gemini", dGemini, `{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":7,"thoughtsTokenCount":5,"cachedContentTokenCount":3,"totalTokenCount":23}}`, usage{Input: 11, Output: 12, Cached: 3}, true},
		{"gemini without thoughts, with spaces", dGemini, "{\"usageMetadata\": {\"promptTokenCount\": 4, \"candidatesTokenCount\": 2}}", usage{Input: 4, Output: 2}, true},
		{"gemini streamed array: the last chunk counts", dGemini, `[{"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1}},` + "\r\n" + `{"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":9,"thoughtsTokenCount":2}}]`, usage{Input: 4, Output: 11}, true},
		{"gemini output saturates", dGemini, `{"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":9223372036854775807,"thoughtsTokenCount":9}}`, usage{Input: 1, Output: math.MaxInt64}, true},
		{"gemini reads no openai usage", dGemini, `{"usage":{"prompt_tokens":1}}`, usage{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := parseUsageJSON(c.f, []byte(c.body))
			got.Read = 0 // TestUsageReadIsAllTheInput checks it
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

// Stream events are read whatever JSON white space they use: servers that
// copy a provider's format (vLLM, local model servers, other gateways) write
// "type": "message_stop" with a space.
func TestStreamLinesAreReadWithAnyJSONSpacing(t *testing.T) {
	for _, c := range []struct {
		name  string
		d     dialect
		lines []string
		end   bool
		want  usage
		ok    bool
	}{
		{"openai done", dOpenAI, []string{`data: {"choices":[],"usage": {"prompt_tokens": 3, "completion_tokens": 4}}`, "data: [DONE]\r"}, true, usage{Input: 3, Output: 4}, true},
		{"openai done without a space", dOpenAI, []string{`data:{"usage":{"prompt_tokens":3,"completion_tokens":4}}`, "data:[DONE]"}, true, usage{Input: 3, Output: 4}, true},
		{"openai responses completed, spaced", dOpenAI, []string{`data: {"type" : "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 6}}}`}, true, usage{Input: 5, Output: 6}, true},
		{"openai: [DONE] inside content is no end", dOpenAI, []string{`data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}`}, false, usage{}, false},
		{"anthropic spaced", dAnthropic, []string{
			`data: {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}}`,
			`data: {"type" :"message_delta", "usage": {"output_tokens": 8}}`,
			`data: {"type":  "message_stop"}`,
		}, true, usage{Input: 10, Output: 8}, true},
		{"anthropic: message_stop in text is no end", dAnthropic, []string{`data: {"type":"content_block_delta","delta":{"text":"\"type\":\"message_stop\""}}`}, false, usage{}, false},
		{"anthropic without message_delta has no final usage", dAnthropic, []string{`data: {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}}`}, false, usage{}, false},
		{"gemini: cumulative, the last counts", dGemini, []string{
			`data: {"usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1}}` + "\r",
			`data: {"usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "thoughtsTokenCount": 3}}` + "\r",
		}, false, usage{Input: 9, Output: 7}, true},
		{"event lines are not data", dOpenAI, []string{"event: usage", `: {"usage":{"prompt_tokens":1}}`}, false, usage{}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			uw := usageWriter{d: c.d, framing: c.d.spec().stream}
			for _, l := range c.lines {
				uw.line([]byte(l))
			}
			end := uw.ended
			u, ok := streamUsage(c.d, &uw.acc)
			u.Read = 0
			if end != c.end || u != c.want || ok != c.ok {
				t.Fatalf("end %v usage %+v %v; want end %v usage %+v %v", end, u, ok, c.end, c.want, c.ok)
			}
		})
	}
}

// Every dialect writes each of the handler's own errors as valid JSON in
// its provider's shape, with the message, and a Gemini 429 that may be
// retried carries RetryInfo with the wait.
func TestEveryDialectShapesEveryError(t *testing.T) {
	for _, d := range dialects {
		for k := errUnauthorized; k <= errUnavailable; k++ {
			e := &apiError{kind: k, msg: "msg \"quoted\"", dim: dimTokens, wait: 1500 * time.Millisecond}
			body := appendError(d, nil, e)
			var v map[string]any
			if err := json.Unmarshal(body, &v); err != nil {
				t.Fatalf("%s kind %d: %v: %s", d.spec().name, k, err, body)
			}
			if !strings.Contains(string(body), `msg \"quoted\"`) {
				t.Errorf("%s kind %d: message missing: %s", d.spec().name, k, body)
			}
		}
	}
	e := &apiError{kind: errRateLimited, msg: "m", wait: 1500 * time.Millisecond}
	if got, want := string(appendError(dGemini, nil, e)), `{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.500s"}]}}`; got != want {
		t.Errorf("gemini 429:\n got %s\nwant %s", got, want)
	}
	e.never = true
	if got := string(appendError(dGemini, nil, e)); strings.Contains(got, "RetryInfo") {
		t.Errorf("a 429 that can never fit carries no RetryInfo: %s", got)
	}
	e = &apiError{kind: errTooLarge, msg: "m"}
	if got, want := string(appendError(dGemini, nil, e)), `{"error":{"code":413,"message":"m","status":"INVALID_ARGUMENT"}}`; got != want {
		t.Errorf("gemini 413: %s", got)
	}
	e = &apiError{kind: errRateLimited, msg: "m", dim: dimInput}
	if got := string(appendError(dOpenAI, nil, e)); !strings.Contains(got, `"type":"input_tokens","param":null,"code":"rate_limit_exceeded"`) {
		t.Errorf("openai 429 type by limit: %s", got)
	}
}

// The paths that auto format gives each dialect.
func TestDialectForPath(t *testing.T) {
	for path, want := range map[string]dialect{
		"/v1/chat/completions":  dOpenAI,
		"/openai/v1/responses/": dOpenAI,
		"/v1/embeddings":        dOpenAI,
		"/v1/messages":          dAnthropic,
		"/v1beta/models/gemini-2.5-flash:generateContent":                                              dGemini,
		"/v1/models/gemini-2.0-flash:streamGenerateContent":                                            dGemini,
		"/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent": dGemini,
		"/v1beta/models/gemini-2.5-flash:countTokens":                                                  dNone,
		"/v1beta/models/:generateContent":                                                              dNone,
		"/v2/models/x:generateContent":                                                                 dNone,
		"/v1/models":                                                                                   dNone,
		"/health":                                                                                      dNone,
	} {
		if got := dialectForPath(path); got != want {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
	}
	info := requestInfo{N: 1}
	sc := jsonscan.New([]byte(`{}`))
	if _, err := dGemini.parse(&sc, &costmodel.Counter{}, "/v1beta/models/gemini-2.5-pro:streamGenerateContent", &info); err != nil || info.Model != "gemini-2.5-pro" || !info.Stream {
		t.Errorf("model and stream from the path: %+v %v", info, err)
	}
}
