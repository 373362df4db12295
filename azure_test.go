package llmratelimit

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// Azure OpenAI speaks OpenAI's wire format on its own paths, and its
// clients send their key in api-key.

const azureDeploymentPath = "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"

// azureReq is a request as Azure's clients send it: the key in api-key.
func azureReq(t *testing.T, path, key, body string) *http.Request {
	t.Helper()
	req := newReq(t, path, "", body)
	req.Header.Set("api-key", key)
	return req
}

func TestAzureRequestsAreAdmittedCountedAndSettled(t *testing.T) {
	mustLoad(t, "zone azure_paths\nrpm 100\ntpm 1000\nmodel gpt-4o-prod {\n\trpm 1\n}")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 12, 3) })
	noModel := `{"messages":[{"role":"user","content":"Hi"}],"max_tokens":10}`
	for _, c := range []struct {
		name, path, key, body string
		status                int
		reason                string // in a 429's message
		requests, in, out     int64  // the key's totals after it (a 429 counts none)
	}{
		{"deployment path, key in api-key", azureDeploymentPath, "azure-key-1", noModel, 200, "", 1, 12, 3},
		{"the model is the deployment's name", azureDeploymentPath, "azure-key-1", noModel, 429, "for model gpt-4o-prod", 1, 12, 3},
		{"the body's model wins over the deployment", azureDeploymentPath, "azure-key-1", `{"model":"gpt-4o-mini","messages":[],"max_tokens":10}`, 200, "", 2, 24, 6},
		{"the tpm applies", azureDeploymentPath, "azure-key-1", `{"model":"gpt-4o-mini","messages":[],"max_tokens":5000}`, 429, "request too large for tokens per min (TPM)", 2, 24, 6},
		{"the v1 path, key in api-key", "/openai/v1/chat/completions", "azure-key-2", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"max_tokens":10}`, 200, "", 1, 12, 3},
		{"a deployment's embeddings reserve no output", "/openai/deployments/embed/embeddings?api-version=2024-10-21", "azure-key-3", `{"input":"Hi"}`, 200, "", 1, 12, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := sendReq(t, azureReq(t, c.path, c.key, c.body))
			if r.status != c.status {
				t.Fatalf("status %d %s, want %d", r.status, r.body, c.status)
			}
			if c.reason != "" && !strings.Contains(r.errorBody(t).Error.Message, c.reason) {
				t.Fatalf("429 %s, want it to say %q", r.body, c.reason)
			}
			st := keyTotals(t, "azure_paths", c.key)
			if st.RequestsTotal != c.requests || st.InputTokensTotal != c.in || st.OutputTokensTotal != c.out {
				t.Fatalf("key totals %+v, want %d requests, %d in, %d out", st, c.requests, c.in, c.out)
			}
		})
	}
}

// A streaming chat request is asked for its usage on an Azure deployment
// only from the api-version that accepts stream_options: an older one
// would answer 400 to it.
func TestAzureStreamsAskForUsageOnlyWhereTheAPIVersionAcceptsIt(t *testing.T) {
	mustLoad(t, "zone azure_stream\ntpm 100000")
	var mu sync.Mutex
	var sent string
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		sent = string(b)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n")
		if strings.Contains(string(b), `"include_usage":true`) {
			fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n")
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	body := `{"stream":true,"messages":[{"role":"user","content":"Hi"}],"max_tokens":50}`
	for _, c := range []struct {
		path     string
		injected bool
		out      int64 // the key's settled output: the usage's, or the reservation kept
	}{
		{"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", true, 2},
		{"/openai/deployments/gpt-4o/chat/completions?api-version=2024-09-01-preview", true, 2},
		{"/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01", false, 50},
		{"/openai/deployments/gpt-4o/chat/completions", false, 50},
		{"/openai/v1/chat/completions?api-version=preview", true, 2},
	} {
		t.Run(c.path, func(t *testing.T) {
			key := "azure-stream-" + c.path
			r := sendReq(t, azureReq(t, c.path, key, body))
			mu.Lock()
			got := strings.Contains(sent, "stream_options")
			mu.Unlock()
			if r.status != 200 || got != c.injected {
				t.Fatalf("status %d %s; stream_options sent upstream: %v, want %v", r.status, r.body, got, c.injected)
			}
			if strings.Contains(r.body, `"usage"`) {
				t.Fatalf("the client saw a usage chunk it did not ask for: %s", r.body)
			}
			if st := keyTotals(t, "azure_stream", key); st.OutputTokensTotal != c.out {
				t.Fatalf("output settled at %d, want %d", st.OutputTokensTotal, c.out)
			}
		})
	}
}

// The Azure paths that `format auto` reads as OpenAI's, and the model each
// request names: the body's, else the deployment's.
func TestAzurePathsAreReadAsOpenAI(t *testing.T) {
	for _, c := range []struct {
		path, body string
		parsed     bool
		model      string
		noOutput   bool
	}{
		{"/openai/deployments/gpt-4o-prod/chat/completions", `{}`, true, "gpt-4o-prod", false},
		{"/openai/deployments/gpt-4o-prod/chat/completions/", `{"model":"gpt-4o"}`, true, "gpt-4o", false},
		{"/eu/openai/deployments/davinci/completions", `{}`, true, "davinci", false},
		{"/openai/deployments/embed-small/embeddings", `{}`, true, "embed-small", true},
		{"/openai/deployments/o4-mini/responses", `{}`, true, "o4-mini", false},
		{"/openai/responses", `{"model":"o4-mini"}`, true, "o4-mini", false},
		{"/openai/v1/chat/completions", `{"model":"gpt-4o"}`, true, "gpt-4o", false},
		{"/openai/v1/embeddings", `{}`, true, "", true},
		{"/openai/deployments/dall-e-3/images/generations", `{}`, false, "", false},
		{"/openai/deployments//chat/completions", `{}`, false, "", false},
		{"/openai/deployments/gpt-4o-prod/extensions/chat/completions", `{}`, false, "", false},
		{"/chat/completions", `{}`, false, "", false},
	} {
		d := dialectForPath(c.path)
		if (d == dOpenAI) != c.parsed || d != nil && d != dOpenAI {
			t.Errorf("%s: dialect %v, want openai %v", c.path, d, c.parsed)
			continue
		}
		if !c.parsed {
			continue
		}
		info := requestInfo{N: 1}
		if _, err := d.parse(&jsonScanner{data: []byte(c.body)}, &textCounter{}, c.path, &info); err != nil || info.Model != c.model || info.NoOutput != c.noOutput {
			t.Errorf("%s %s: model %q, no output %v (%v); want %q, %v", c.path, c.body, info.Model, info.NoOutput, err, c.model, c.noOutput)
		}
	}
}
