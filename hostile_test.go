package llmratelimit

import (
	"bytes"
	"compress/gzip"
	"io"
	"strings"
	"testing"
)

// TestHostileRequestsGetADefinedAnswer sends requests built to break a
// limiter. Each gets the answer in its row — a 4xx of the SPEC's table, or
// a documented pass-through (200) — never a 5xx.
func TestHostileRequestsGetADefinedAnswer(t *testing.T) {
	mustLoad(t, "zone hostile\nrpm 100000\ntpm 1000000")
	const chat, msgs, gem = "/v1/chat/completions", "/v1/messages", geminiModelPath + ":generateContent"
	msg := func(extra string) string {
		return `{"model":"m","messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	deep := strings.Repeat(`{"a":`, 10000) + `1` + strings.Repeat(`}`, 10000)
	gz := func(s string) string {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		io.WriteString(w, s)
		w.Close()
		return b.String()
	}
	big64k := strings.Repeat("k", 64<<10)
	for _, tc := range []struct {
		name    string
		path    string
		body    string
		header  map[string]string
		chunked bool
		status  int
		want    string // in the body
	}{
		{"10k-level nesting is rejected by depth", chat, `{"messages":` + deep + `}`, nil, false, 400, "nesting deeper than 128"},
		{"10k-level nesting at the top", chat, deep, nil, false, 400, "nesting deeper than 128"},
		{"1M-element messages array of numbers", chat, `{"messages":[` + strings.Repeat("1,", 1<<20) + `1]}`, nil, false, 400, "messages[0]"},
		{"1M empty messages never fit the tpm", chat, `{"max_tokens":1,"messages":[` + strings.Repeat("{},", 1<<20) + `{}]}`, nil, false, 429, "request too large"},
		{"1M-element prompt array is counted", "/v1/completions", `{"max_tokens":1,"prompt":[` + strings.Repeat("1,", 1<<20) + `1]}`, nil, false, 429, "request too large"},
		{"max_tokens beyond int64", chat, msg(`,"max_tokens":99999999999999999999`), nil, false, 400, "max_tokens"},
		{"max_tokens 1e30", chat, msg(`,"max_tokens":1e30`), nil, false, 400, "max_tokens"},
		{"max_tokens at int64's max never fits", chat, msg(`,"max_tokens":9223372036854775807`), nil, false, 429, "request too large"},
		{"n at int64's max never fits", chat, msg(`,"max_tokens":10,"n":9223372036854775807`), nil, false, 429, "request too large"},
		{"negative n", chat, msg(`,"n":-1`), nil, false, 400, "n"},
		{"zero n", chat, msg(`,"n":0`), nil, false, 400, "n"},
		{"fractional n", chat, msg(`,"n":1.5`), nil, false, 400, "n"},
		{"n as a string", chat, msg(`,"n":"2"`), nil, false, 400, "n"},
		{"NaN as a string", chat, msg(`,"max_tokens":"NaN"`), nil, false, 400, "max_tokens"},
		{"bare NaN", chat, msg(`,"max_tokens":NaN`), nil, false, 400, "invalid"},
		{"bare Infinity", chat, msg(`,"max_tokens":Infinity`), nil, false, 400, "invalid"},
		{"negative max_tokens", chat, msg(`,"max_tokens":-5`), nil, false, 400, "max_tokens"},
		{"leading zeros", chat, msg(`,"max_tokens":0123`), nil, false, 400, "invalid"},
		{"duplicated keys: the last wins", chat, `{"messages":7,"messages":[{"role":"user","content":"x"}]}`, nil, false, 400, "messages"},
		{"duplicated valid keys pass", chat, `{"messages":[],"messages":[{"role":"user","content":"x"}]}`, nil, false, 200, ""},
		{"invalid UTF-8 is counted, not judged", chat, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe bad\"}]}", nil, false, 200, ""},
		{"lone surrogate escape", chat, `{"messages":[{"role":"user","content":"\ud800"}]}`, nil, false, 200, ""},
		{"bad unicode escape", chat, `{"messages":[{"role":"user","content":"\uZZZZ"}]}`, nil, false, 400, "invalid"},
		{"raw control character in a string", chat, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\x01b\"}]}", nil, false, 400, "invalid"},
		{"byte order mark", chat, "\xEF\xBB\xBF" + msg(""), nil, false, 400, "invalid"},
		{"trailing garbage", chat, msg("") + " x", nil, false, 400, "invalid"},
		{"top-level array", chat, `[]`, nil, false, 400, ""},
		{"top-level null", chat, `null`, nil, false, 400, ""},
		{"stream as a string", chat, msg(`,"stream":"true"`), nil, false, 400, "stream"},
		{"content a number", chat, `{"messages":[{"role":"user","content":5}]}`, nil, false, 400, "content"},
		{"anthropic system a number", msgs, `{"max_tokens":5,"system":1,"messages":[]}`, nil, false, 400, "system"},
		{"anthropic max_tokens never fits", msgs, `{"max_tokens":2000000,"messages":[]}`, nil, false, 429, "request too large"},
		{"gzip request body", chat, gz(msg("")), map[string]string{"Content-Encoding": "gzip"}, false, 400, "Content-Encoding"},
		{"chunked without a length is read and re-sent", chat, msg(""), nil, true, 200, ""},
		{"wrong Content-Type is not judged", chat, msg(""), map[string]string{"Content-Type": "text/plain"}, false, 200, ""},
		{"64 KB key: Caddy's header limit answers", chat, msg(""), map[string]string{"Authorization": "Bearer " + big64k}, false, 431, ""},
		{"8 KB key is hashed like any other", chat, msg(""), map[string]string{"Authorization": "Bearer " + big64k[:8<<10]}, false, 200, ""},
		{"bearer without a token", chat, msg(""), map[string]string{"Authorization": "Bearer"}, false, 401, ""},
		{"upper-case scheme", chat, msg(""), map[string]string{"Authorization": "BEARER sk-hostile"}, false, 200, ""},
		{"tab after the scheme", chat, msg(""), map[string]string{"Authorization": "Bearer\tsk-hostile"}, false, 401, ""},
		{"token scheme", chat, msg(""), map[string]string{"Authorization": "Token sk-hostile"}, false, 401, ""},
		{"blank x-api-key", chat, msg(""), map[string]string{"Authorization": "", "x-api-key": "   "}, false, 401, ""},
		{"empty object", chat, `{}`, nil, false, 200, ""},
		{"gemini: empty object", gem, `{}`, nil, false, 200, ""},
		{"gemini: contents a string", gem, `{"contents":"hi"}`, nil, false, 400, "contents must be an array"},
		{"gemini: a turn not an object", gem, `{"contents":["hi"]}`, nil, false, 400, "contents[0] must be an object"},
		{"gemini: parts an object", gem, `{"contents":[{"parts":{"text":"hi"}}]}`, nil, false, 400, "parts must be an array"},
		{"gemini: text a number", gem, `{"contents":[{"parts":[{"text":5}]}]}`, nil, false, 400, "text must be a string"},
		{"gemini: 10k-level nesting in a function call", gem, `{"contents":[{"parts":[{"functionCall":` + deep + `}]}]}`, nil, false, 400, "nesting deeper than 128"},
		{"gemini: 64k parts of inline data never fit the tpm", gem, `{"contents":[{"parts":[` + strings.Repeat(`{"inlineData":{}},`, 1<<16) + `{}]}]}`, nil, false, 429, "request too large"},
		{"gemini: maxOutputTokens beyond int64", gem, `{"generationConfig":{"maxOutputTokens":99999999999999999999}}`, nil, false, 400, "maxOutputTokens"},
		{"gemini: maxOutputTokens at int64's max never fits", gem, `{"generationConfig":{"maxOutputTokens":9223372036854775807}}`, nil, false, 429, "request too large"},
		{"gemini: candidateCount 0", gem, `{"generationConfig":{"candidateCount":0}}`, nil, false, 400, "candidateCount must be >= 1"},
		{"gemini: candidateCount as a string", gem, `{"generationConfig":{"candidateCount":"2"}}`, nil, false, 400, "candidateCount"},
		{"gemini: generationConfig an array", gem, `{"generation_config":[]}`, nil, false, 400, "generation_config must be an object"},
		{"gemini: snake_case fields are read", gem, `{"system_instruction":{"parts":[{"text":"be brief"}]},"contents":[{"parts":[{"text":"hi"}]}],"generation_config":{"max_output_tokens":5}}`, nil, false, 200, ""},
		{"gemini: tools an object", gem, `{"tools":{"functionDeclarations":[]}}`, nil, false, 400, "tools must be an array"},
		{"gemini: trailing garbage", gem, `{"contents":[]} x`, nil, false, 400, "invalid"},
		{"gemini: an empty model in the path is not parsed", "/v1beta/models/:generateContent", `not json`, nil, false, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newReq(t, tc.path, "sk-hostile", tc.body)
			if tc.chunked {
				req.Body = io.NopCloser(strings.NewReader(tc.body)) // no length: chunked
				req.ContentLength = -1
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			r := sendReq(t, req)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %.300s", r.status, tc.status, r.body)
			}
			if r.status >= 500 {
				t.Fatalf("a 5xx: %s", r.body)
			}
			if tc.want != "" && !strings.Contains(r.body, tc.want) {
				t.Errorf("body does not mention %q: %.300s", tc.want, r.body)
			}
			if r.status == 429 && r.header.Get("x-should-retry") != "false" {
				t.Errorf("a request that can never fit must not be retried: %v", r.header)
			}
		})
	}
}
