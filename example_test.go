package llmratelimit

import (
	"os"
	"strings"
	"testing"
)

// TestExampleServesThroughTheMockUpstream loads example.Caddyfile as it is,
// except for the ports, and walks the README's curl lines: a 200 through the
// gateway to the built-in mock upstream, key_info, a 429 with headers, a
// 401.
func TestExampleServesThroughTheMockUpstream(t *testing.T) {
	raw, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer(
		"admin localhost:2019", "admin "+testAdmin,
		":8080 {", "http://"+nextGateway()+" {",
		"localhost:8081", "127.0.0.1:29479",
		":8081 {", "http://127.0.0.1:29479 {",
	).Replace(string(raw))
	if err := load(t, cfg); err != nil {
		t.Fatal(err)
	}
	r := send(t, "/v1/chat/completions", "sk-demo-pro", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}`)
	if r.status != 200 || !strings.Contains(r.body, `"chat.completion"`) || r.header.Get("x-ratelimit-limit-requests") != "600" {
		t.Fatalf("through the gateway: %d %v %s", r.status, r.header, r.body)
	}
	r = send(t, "/v1/messages", "sk-demo-pro", `{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"Hello"}]}`)
	if r.status != 200 || !strings.Contains(r.body, `"type":"message"`) {
		t.Fatalf("anthropic through the gateway: %d %s", r.status, r.body)
	}
	for _, path := range []string{":generateContent", ":streamGenerateContent?alt=sse"} {
		req := newReq(t, geminiModelPath+path, "", `{"contents":[{"role":"user","parts":[{"text":"Hello"}]}],"generationConfig":{"maxOutputTokens":256}}`)
		req.Header.Set("x-goog-api-key", "sk-demo-pro")
		r = sendReq(t, req)
		if r.status != 200 || !strings.Contains(r.body, `"usageMetadata"`) || r.header.Get("x-ratelimit-limit-requests") != "600" {
			t.Fatalf("gemini %s through the gateway: %d %v %s", path, r.status, r.header, r.body)
		}
	}
	st := keyTotals(t, "example", "sk-demo-pro")
	if st.RequestsTotal != 4 || st.OutputTokensTotal != 13+14+13+13 {
		t.Fatalf("the example's key after 4 answers with usage: %+v", st)
	}
	// docs/customers.md "Key info": the key's own quota.
	ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-demo-pro"))
	if ki.Tier != "pro" || *ki.Limits.RPM != 600 || *ki.Remaining.Requests != 596 || ki.UsageToday.Requests != 4 || ki.UsageToday.OutputTokens != 13+14+13+13 || ki.Budget != nil {
		t.Fatalf("key_info of the example's key after 4 answers: %+v", ki)
	}
	if testing.Verbose() {
		t.Logf("GET /v1/llm_ratelimit/key: %s", getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-demo-pro").body)
	}
	for i := 0; i < 3; i++ {
		send(t, "/v1/chat/completions", "sk-demo-free", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}`)
	}
	r = send(t, "/v1/chat/completions", "sk-demo-free", `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}`)
	if r.status != 429 || r.header.Get("Retry-After") == "" {
		t.Fatalf("4th free-tier request: %d %v", r.status, r.header)
	}
	if r = send(t, "/v1/chat/completions", "", `{}`); r.status != 401 {
		t.Fatalf("no key: %d", r.status)
	}
}
