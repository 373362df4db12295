package llmratelimit

import (
	"net/http"
	"strings"
	"testing"
)

func TestBadInputGetsSpecStatusAndShape(t *testing.T) {
	mustLoad(t, `zone badinput
rpm 1000
api_key sk-known gold
tier gold {
	rpm 1000
}
require_known_keys`)
	const chat, msgs = "/v1/chat/completions", "/v1/messages"
	big := `{"messages":[{"role":"user","content":"` + strings.Repeat("a", 17<<20) + `"}]}`
	for _, tc := range []struct {
		name, path, key, body string
		status                int
		openaiCode            string // for openai paths
		anthropicType         string // for anthropic paths
	}{
		{"malformed JSON", chat, "sk-known", `{"messages": [}`, 400, "invalid_json", ""},
		{"truncated JSON", chat, "sk-known", `{"messages":[{"role":"user","content":"hi"`, 400, "invalid_json", ""},
		{"messages a number", chat, "sk-known", `{"messages": 42}`, 400, "invalid_json", ""},
		{"max_tokens a string", chat, "sk-known", `{"messages":[],"max_tokens":"100"}`, 400, "invalid_json", ""},
		{"n below 1", chat, "sk-known", `{"messages":[],"n":0}`, 400, "invalid_json", ""},
		{"empty body", chat, "sk-known", ``, 400, "invalid_json", ""},
		{"17 MiB body", chat, "sk-known", big, 413, "request_too_large", ""},
		{"no key", chat, "", chatBody, 401, "invalid_api_key", ""},
		{"unknown key", chat, "sk-stranger", chatBody, 401, "invalid_api_key", ""},
		{"anthropic malformed", msgs, "sk-known", `{"messages":`, 400, "", "invalid_request_error"},
		{"anthropic wrong type", msgs, "sk-known", `{"system":7,"messages":[]}`, 400, "", "invalid_request_error"},
		{"anthropic too large", msgs, "sk-known", big, 413, "", "request_too_large"},
		{"anthropic no key", msgs, "", messagesBody, 401, "", "authentication_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := send(t, tc.path, tc.key, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			e := r.errorBody(t)
			if tc.openaiCode != "" {
				if e.Error.Code == nil || *e.Error.Code != tc.openaiCode || e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
					t.Errorf("openai error shape: %s", r.body)
				}
			} else if e.Type != "error" || e.Error.Type != tc.anthropicType || e.Error.Message == "" {
				t.Errorf("anthropic error shape: %s", r.body)
			}
			if strings.Contains(r.body, "sk-stranger") || strings.Contains(r.body, "sk-known") {
				t.Errorf("the raw key leaked into the response: %s", r.body)
			}
		})
	}
}

func TestKeyComesFromBearerElseXAPIKey(t *testing.T) {
	mustLoad(t, `zone keys
api_key sk-known gold
api_key sha256:`+sha256Hex("sk-hashed")+` gold
tier gold {
	rpm 5
}
require_known_keys`)
	for _, tc := range []struct {
		name   string
		header map[string]string
		status int
	}{
		{"bearer", map[string]string{"Authorization": "Bearer sk-known"}, 200},
		{"lower-case bearer", map[string]string{"Authorization": "bearer sk-known"}, 200},
		{"x-api-key", map[string]string{"x-api-key": "sk-known"}, 200},
		{"key given as sha256 in the config", map[string]string{"Authorization": "Bearer sk-hashed"}, 200},
		{"basic scheme is no key", map[string]string{"Authorization": "Basic c2stazp4"}, 401},
		{"basic scheme, x-api-key supplies it", map[string]string{"Authorization": "Basic c2stazp4", "x-api-key": "sk-known"}, 200},
		{"empty bearer", map[string]string{"Authorization": "Bearer "}, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newReq(t, "/v1/chat/completions", "", chatBody)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			if r := sendReq(t, req); r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
		})
	}
}

func TestKeyTemplateChoosesTheCaller(t *testing.T) {
	mustLoad(t, "zone keytemplate\nkey {http.request.header.X-Team}\nrpm 1")
	req := func(team string) *http.Request {
		r := newReq(t, "/v1/chat/completions", "sk-same", chatBody)
		if team != "" {
			r.Header.Set("X-Team", team)
		}
		return r
	}
	if r := sendReq(t, req("")); r.status != 401 {
		t.Fatalf("empty template value: %d, want 401", r.status)
	}
	if r := sendReq(t, req("red")); r.status != 200 {
		t.Fatalf("red: %d", r.status)
	}
	if r := sendReq(t, req("blue")); r.status != 200 {
		t.Fatalf("blue has its own bucket: %d", r.status)
	}
	if r := sendReq(t, req("red")); r.status != 429 {
		t.Fatalf("red again: %d, want 429", r.status)
	}
}
