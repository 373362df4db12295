package llmratelimit

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An Anthropic-format request gets Anthropic's own rate-limit header
// family, an OpenAI-format one OpenAI's, never both: each kind from the
// bucket of that kind that constrains most (here the key × model TPM over
// the key's), remaining rounded down, reset as RFC 3339 (UTC, whole
// seconds) when the bucket is full again.
func TestRateLimitHeadersTakeTheFormatsFamily(t *testing.T) {
	mustLoad(t, "zone headers_family\ncalibrate off\nrpm 10\ntpm 100000\nitpm 8000\notpm 2000\nmodel claude-x {\ntpm 5000\n}")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"type":"message","content":[],"usage":{"input_tokens":10,"output_tokens":5}}`)
	})
	body := `{"model":"claude-x","max_tokens":300,"messages":[{"role":"user","content":"hi"}]}`
	var info requestInfo
	if err := parseRequest(dAnthropic, "/v1/messages", []byte(body), &info); err != nil {
		t.Fatal(err)
	}
	in := inputEstimate(dAnthropic, info)
	before := clk.Now()
	r := send(t, "/v1/messages", "sk-headers", body)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for name := range r.header {
		if strings.HasPrefix(strings.ToLower(name), "x-ratelimit-") {
			t.Errorf("an Anthropic request got %s", name)
		}
	}
	get := func(k, f string) string { return r.header.Get("anthropic-ratelimit-" + k + "-" + f) }
	for _, c := range []struct {
		kind             string
		limit, remaining int64
		fullIn           time.Duration // how long until that bucket is full again
	}{
		{"requests", 10, 9, 6 * time.Second},
		{"tokens", 5000, 5000 - in - 300, time.Duration(float64(in+300) / 5000 * float64(time.Minute))},
		{"input-tokens", 8000, 8000 - in, time.Duration(float64(in) / 8000 * float64(time.Minute))},
		{"output-tokens", 2000, 2000 - 300, time.Duration(300.0 / 2000 * float64(time.Minute))},
	} {
		if got := get(c.kind, "limit"); got != strconv.FormatInt(c.limit, 10) {
			t.Errorf("%s-limit = %q, want %d", c.kind, got, c.limit)
		}
		if got := get(c.kind, "remaining"); got != strconv.FormatInt(c.remaining, 10) {
			t.Errorf("%s-remaining = %q, want %d", c.kind, got, c.remaining)
		}
		reset, err := time.Parse(time.RFC3339, get(c.kind, "reset"))
		if err != nil || reset.Location() != time.UTC || reset.Nanosecond() != 0 {
			t.Errorf("%s-reset = %q: want RFC 3339 in UTC, whole seconds (%v)", c.kind, get(c.kind, "reset"), err)
			continue
		}
		want := before.Add(c.fullIn)
		if reset.Before(want.Add(-time.Second)) || reset.After(want.Add(time.Second)) {
			t.Errorf("%s-reset = %s, want about %s (when the bucket is full)", c.kind, reset, want.UTC())
		}
	}

	// The same limits through an OpenAI-format request: OpenAI's family only.
	r = send(t, "/v1/chat/completions", "sk-headers-openai", `{"model":"gpt-x","max_tokens":300,"messages":[{"role":"user","content":"hi"}]}`)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for name := range r.header {
		if strings.HasPrefix(strings.ToLower(name), "anthropic-ratelimit-") {
			t.Errorf("an OpenAI request got %s", name)
		}
	}
	if r.header.Get("x-ratelimit-limit-requests") != "10" || r.header.Get("x-ratelimit-remaining-requests") != "9" ||
		r.header.Get("x-ratelimit-limit-tokens") != "2000" { // the most constraining token bucket: otpm
		t.Errorf("x-ratelimit-*: %v", r.header)
	}

	// A rejected Anthropic request gets the family too.
	for range 10 {
		r = send(t, "/v1/messages", "sk-headers", body)
	}
	if r.status != 429 || get("requests", "remaining") != "0" || r.header.Get("x-ratelimit-remaining-requests") != "" {
		t.Errorf("rejected: %d, requests-remaining %q, x-ratelimit %q", r.status, get("requests", "remaining"), r.header.Get("x-ratelimit-remaining-requests"))
	}
}
