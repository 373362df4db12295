package llmratelimit

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// An upstream that reports usage near the int64 limit must leave the key
// deep in debt, so that its next request is refused with an honest wait,
// never admitted through an overflow: for every dialect, from a JSON answer
// and from a stream.
func TestUsageOf9e18LeavesTheKeyInDebtAndRefusesItsNextRequest(t *testing.T) {
	const huge = "9000000000000000000"
	openAIJSON := `{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":` + huge + `,"completion_tokens":` + huge + `}}`
	openAISSE := "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n" +
		"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":" + huge + ",\"completion_tokens\":" + huge + "}}\n\n" +
		"data: [DONE]\n\n"
	anthropicJSON := `{"type":"message","content":[],"usage":{"input_tokens":` + huge + `,"cache_creation_input_tokens":` + huge + `,"output_tokens":` + huge + `}}`
	anthropicSSE := "event: message_start\ndata: {\"type\": \"message_start\", \"message\": {\"usage\": {\"input_tokens\": " + huge + ", \"output_tokens\": 1}}}\n\n" +
		"event: message_delta\ndata: {\"type\": \"message_delta\", \"delta\": {}, \"usage\": {\"output_tokens\": " + huge + "}}\n\n" +
		"event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n"
	geminiJSON := `{"candidates":[],"usageMetadata":{"promptTokenCount":` + huge + `,"candidatesTokenCount":` + huge + `,"thoughtsTokenCount":` + huge + `}}`
	geminiSSE := "data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":" + huge + ",\"candidatesTokenCount\":" + huge + "}}\r\n\r\n"

	for i, c := range []struct {
		name, path, body, contentType, answer string
	}{
		{"openai json", "/v1/chat/completions", chatBody, "application/json", openAIJSON},
		{"openai stream", "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, "text/event-stream", openAISSE},
		{"anthropic json", "/v1/messages", `{"model":"claude","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`, "application/json", anthropicJSON},
		{"anthropic stream", "/v1/messages", `{"model":"claude","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, "text/event-stream", anthropicSSE},
		{"gemini json", geminiModelPath + ":generateContent", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":10}}`, "application/json", geminiJSON},
		{"gemini stream", geminiModelPath + ":streamGenerateContent?alt=sse", `{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":10}}`, "text/event-stream", geminiSSE},
	} {
		t.Run(c.name, func(t *testing.T) {
			zoneName := fmt.Sprintf("debt_%d", i)
			mustLoad(t, "zone "+zoneName+"\nrpm 100\ntpm 100000\nitpm 100000\notpm 100000")
			setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", c.contentType)
				fmt.Fprint(w, c.answer)
			})
			const key = "sk-deep-debt"
			if r := send(t, c.path, key, c.body); r.status != 200 {
				t.Fatalf("first request: %d %s", r.status, r.body)
			}
			st := keyTotals(t, zoneName, key)
			if st.InputTokensTotal != maxSettledTokens || st.OutputTokensTotal != maxSettledTokens {
				t.Fatalf("settled %d in, %d out; want each clamped to %d", st.InputTokensTotal, st.OutputTokensTotal, int64(maxSettledTokens))
			}
			if *st.TPMAvailable != 0 {
				t.Fatalf("tpm_available = %d, want 0 (in debt)", *st.TPMAvailable)
			}
			clk.Advance(time.Hour) // an hour of refill does not pay off a billion tokens
			r := send(t, c.path, key, c.body)
			if r.status != 429 {
				t.Fatalf("the next request after 9e18 tokens: %d %s, want 429", r.status, r.body)
			}
			ms, err := strconv.ParseInt(r.header.Get("retry-after-ms"), 10, 64)
			if err != nil || ms <= int64(time.Hour/time.Millisecond) {
				t.Fatalf("retry-after-ms = %q (%v), want a long positive wait", r.header.Get("retry-after-ms"), err)
			}
			secs, err := strconv.ParseInt(r.header.Get("Retry-After"), 10, 64)
			if err != nil || secs <= 0 || r.header.Get("x-should-retry") != "true" {
				t.Fatalf("Retry-After %q x-should-retry %q", r.header.Get("Retry-After"), r.header.Get("x-should-retry"))
			}
		})
	}
}

// The conversions between tokens and time never overflow: a debt of 9e18
// tokens is a very long wait, not a negative one.
func TestTokenDurationConversionsCapInsteadOfOverflowing(t *testing.T) {
	for _, c := range []struct {
		limit int64
		n     float64
		want  time.Duration
	}{
		{60, 30, 30 * time.Second},
		{1000, 9e18, maxDuration},
		{1, math.MaxFloat64, maxDuration},
		{1000, math.Inf(1), maxDuration},
		{1000, math.NaN(), 0},
		{1000, -5, 0},
		{0, 10, 0},
	} {
		if got := durationFromTokens(c.limit, c.n); got != c.want {
			t.Errorf("durationFromTokens(%d, %v) = %v, want %v", c.limit, c.n, got, c.want)
		}
	}
	if got := tokensFromDuration(60, time.Second); got != 1 {
		t.Errorf("tokensFromDuration(60, 1s) = %v, want 1", got)
	}

	// A bucket 9e18 tokens in debt refuses, with the capped wait.
	b := bucket{level: -9e18, at: 1}
	var a admission
	a.add(&b, 1000, 1, dimTokens, scopeKey)
	v := a.try(2)
	if v.ok || v.wait != maxDuration || b.level != -9e18+tokensFromDuration(1000, 1) {
		t.Fatalf("verdict %+v level %v: want a refusal with wait %v and no debit", v, b.level, maxDuration)
	}
	if at := b.fullAt(1000); at <= 0 {
		t.Fatalf("fullAt = %d, want a time in the future, not an overflow", at)
	}
}
