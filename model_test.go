package llmratelimit

import (
	"net/http"
	"strings"
	"testing"
)

func TestModelMatchesExactThenLongestGlob(t *testing.T) {
	models := []Model{{Name: "gpt-4*"}, {Name: "gpt-4o*"}, {Name: "gpt-4o"}, {Name: "claude-?-*"}}
	h2 := &Handler{Models: models}
	h2.provisionModels()
	for _, tc := range []struct{ model, want string }{
		{"gpt-4o", "gpt-4o"},
		{"gpt-4o-mini", "gpt-4o*"},
		{"gpt-4-turbo", "gpt-4*"},
		{"claude-3-opus", "claude-?-*"},
		{"llama", ""},
		{"", ""},
	} {
		got := ""
		if m := h2.modelFor(tc.model); m != nil {
			got = m.Name
		}
		if got != tc.want {
			t.Errorf("modelFor(%q) = %q, want %q", tc.model, got, tc.want)
		}
	}
}

func TestContextWindowRejectsBeforeAnyDebit(t *testing.T) {
	mustLoad(t, `zone ctxwin
rpm 10
model small {
	context_window 1000
}`)
	over := `{"model":"small","messages":[{"role":"user","content":"hi"}],"max_tokens":2000}`
	r := send(t, "/v1/chat/completions", "sk-ctx", over)
	if r.status != 400 {
		t.Fatalf("status %d, want 400", r.status)
	}
	if e := r.errorBody(t); e.Error.Code == nil || *e.Error.Code != "context_length_exceeded" {
		t.Fatalf("body %s", r.body)
	}
	// Nothing was debited; and with no max_tokens the reservation is capped
	// at what the window leaves, so a small request fits.
	r = send(t, "/v1/chat/completions", "sk-ctx", `{"model":"small","messages":[{"role":"user","content":"hi"}]}`)
	if r.status != 200 || r.header.Get("x-ratelimit-remaining-requests") != "9" {
		t.Fatalf("next request: %d remaining %q, want 200 and 9", r.status, r.header.Get("x-ratelimit-remaining-requests"))
	}
}

func TestKeyTimesModelBucketsApplyOnTopOfTheKeys(t *testing.T) {
	mustLoad(t, `zone keymodel
rpm 100
model gpt-4o {
	rpm 2
}`)
	body := func(model string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`
	}
	for i := 0; i < 2; i++ {
		if r := send(t, "/v1/chat/completions", "sk-km", body("gpt-4o")); r.status != 200 {
			t.Fatalf("gpt-4o %d: %d", i, r.status)
		}
	}
	r := send(t, "/v1/chat/completions", "sk-km", body("gpt-4o"))
	if r.status != 429 || !strings.Contains(r.errorBody(t).Error.Message, "for model gpt-4o") {
		t.Fatalf("3rd gpt-4o: %d %s", r.status, r.body)
	}
	// Another model is not held back by gpt-4o's bucket; the key's own
	// bucket saw 2 admitted requests (the rejected one took nothing).
	r = send(t, "/v1/chat/completions", "sk-km", body("gpt-3.5"))
	if r.status != 200 || r.header.Get("x-ratelimit-remaining-requests") != "97" {
		t.Fatalf("other model: %d remaining %q, want 200 and 97", r.status, r.header.Get("x-ratelimit-remaining-requests"))
	}
	// A second key has its own key × model bucket.
	if r := send(t, "/v1/chat/completions", "sk-km2", body("gpt-4o")); r.status != 200 {
		t.Fatalf("second key: %d", r.status)
	}
}

func TestDryRunNeverRejects(t *testing.T) {
	mustLoad(t, "zone dryrun\nrpm 1\ndry_run")
	for i := 0; i < 3; i++ {
		if r := send(t, "/v1/chat/completions", "sk-dry", chatBody); r.status != 200 {
			t.Fatalf("request %d: %d", i, r.status)
		}
	}
	if n := zoneOf(t, "dryrun").inflight(hashKey("sk-dry")); n != 0 {
		t.Fatalf("dry-run requests left %d slots taken", n)
	}
}

func TestHeadersOffSendsNoRateLimitHeaders(t *testing.T) {
	mustLoad(t, "zone headersoff\nrpm 5\nheaders off")
	r := send(t, "/v1/chat/completions", "sk-h", chatBody)
	if r.status != 200 {
		t.Fatal(r.status)
	}
	for k := range r.header {
		if strings.HasPrefix(strings.ToLower(k), "x-ratelimit-") && r.header.Get(k) != "999999" {
			t.Errorf("header %s present with headers off", k)
		}
	}
}

func TestUnparsedPathCostsOneRequestAndNoTokens(t *testing.T) {
	mustLoad(t, "zone unparsed\nrpm 5\ntpm 100")
	r := send(t, "/v1/models", "sk-u", "not json at all")
	if r.status != 200 || r.header.Get("x-ratelimit-remaining-requests") != "4" || r.header.Get("x-ratelimit-remaining-tokens") != "100" {
		t.Fatalf("%d %v", r.status, r.header)
	}
}

func TestOnlyPostBodiesAreParsed(t *testing.T) {
	mustLoad(t, "zone getlist\nrpm 5\ntpm 100")
	req := newReq(t, "/v1/chat/completions", "sk-g", "")
	req.Method = http.MethodGet
	r := sendReq(t, req)
	if r.status != 200 || r.header.Get("x-ratelimit-remaining-tokens") != "100" {
		t.Fatalf("GET /v1/chat/completions: %d %v", r.status, r.header)
	}
}
