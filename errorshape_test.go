package llmratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/genai"
)

// A Gemini client calling :countTokens, a path no dialect parses, hears
// the gateway's 429 and 401 in Google's shape: Google's own SDK reads
// them as RESOURCE_EXHAUSTED (with RetryInfo) and UNAUTHENTICATED.
func TestGeminiCountTokensGetsGoogleShapedErrors(t *testing.T) {
	mustLoad(t, "zone count_tokens\nrpm 1")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"totalTokens":3}`))
	})
	ctx := context.Background()
	gc := geminiClient(t, "AIza-count-tokens")
	if resp, err := gc.Models.CountTokens(ctx, "gemini-2.5-flash", genai.Text("Hi"), nil); err != nil || resp.TotalTokens != 3 {
		t.Fatalf("first call: %v %+v", err, resp)
	}
	_, err := gc.Models.CountTokens(ctx, "gemini-2.5-flash", genai.Text("Hi"), nil)
	var ae genai.APIError
	if !errors.As(err, &ae) || ae.Code != 429 || ae.Status != "RESOURCE_EXHAUSTED" || len(ae.Details) != 1 || ae.Details[0]["@type"] != "type.googleapis.com/google.rpc.RetryInfo" {
		t.Fatalf("over the rpm: want a 429 RESOURCE_EXHAUSTED with RetryInfo, got %T %v", err, err)
	}
	// Without a key: the SDK insists on one, so the request is made by hand.
	req, err := http.NewRequest(http.MethodPost, "http://"+gateway+geminiModelPath+":countTokens", strings.NewReader(`{"contents":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	r := sendReq(t, req)
	if r.status != 401 || !strings.Contains(r.body, `"code":401`) || !strings.Contains(r.body, `"status":"UNAUTHENTICATED"`) {
		t.Fatalf("without a key: %d %s, want Google's UNAUTHENTICATED", r.status, r.body)
	}
}

// SPEC "Azure OpenAI paths": a path that no dialect parses keeps the
// zone's shape when the zone has a format, else the shape of the dialect
// whose family of paths it belongs to, OpenAI's only as the last resort.
func TestUnparsedPathsAnswerInTheirFamilysShape(t *testing.T) {
	for _, c := range []struct {
		format, path string
		shape        string // google, anthropic or openai
	}{
		{"", geminiModelPath + ":countTokens", "google"},
		{"", "/v1/models/gemini-2.0-flash:embedContent", "google"},
		{"", "/v1beta/models", "google"},
		{"", "/v1/messages/count_tokens", "anthropic"},
		{"", "/v1/messages/batches", "anthropic"},
		{"", "/v1/complete", "anthropic"},
		{"", "/openai/deployments/dall-e-3/images/generations?api-version=2024-10-21", "openai"},
		{"", "/v1/models", "openai"},
		{"", "/v1beta/openai/chat/completions", "openai"},
		{"", "/health", "openai"},
		{"anthropic", geminiModelPath + ":countTokens", "anthropic"},
		{"gemini", "/v1/models", "google"},
		{"openai", "/v1/messages/count_tokens", "openai"},
	} {
		t.Run(c.format+c.path, func(t *testing.T) {
			cfg := "zone shape_" + c.format + "\nrpm 1"
			if c.format != "" {
				cfg += "\nformat " + c.format
			}
			mustLoad(t, cfg)
			setUpstream(t, providerAnswer)
			key := "sk-shape-" + c.format + c.path
			req := func(key string) *http.Request {
				req := newReq(t, c.path, "", `{}`)
				req.Header.Set("x-api-key", key)
				return req
			}
			if r := sendReq(t, req(key)); r.status != 200 {
				t.Fatalf("first request: %d %s", r.status, r.body)
			}
			checkShape(t, "429", sendReq(t, req(key)), 429, c.shape)
			checkShape(t, "401", sendReq(t, req("")), 401, c.shape)
		})
	}
}

// checkShape fails unless an answer of the handler's own has the status
// and the shape (google, anthropic or openai), and its rate-limit headers
// of that family on a 429.
func checkShape(t *testing.T, what string, r reply, status int, shape string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d %s, want %d", what, r.status, r.body, status)
	}
	var ok bool
	switch shape {
	case "google":
		var g struct {
			Error struct {
				Code   int    `json:"code"`
				Status string `json:"status"`
			} `json:"error"`
		}
		ok = json.Unmarshal([]byte(r.body), &g) == nil && g.Error.Code == status && g.Error.Status != ""
		if status == 429 {
			ok = ok && r.header.Get("x-ratelimit-limit-requests") == "1"
		}
	case "anthropic":
		e := r.errorBody(t)
		ok = e.Type == "error" && e.Error.Type != ""
		if status == 429 {
			ok = ok && r.header.Get("anthropic-ratelimit-requests-limit") == "1"
		}
	case "openai":
		e := r.errorBody(t)
		ok = e.Type == "" && e.Error.Type != "" && e.Error.Code != nil
		if status == 429 {
			ok = ok && r.header.Get("x-ratelimit-limit-requests") == "1"
		}
	}
	if !ok {
		t.Fatalf("%s: %v %s, want %s's shape", what, r.header, r.body, shape)
	}
}
