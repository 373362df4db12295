package llmratelimit

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
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
		sc := jsonscan.New([]byte(c.body))
		if _, err := d.parse(&sc, &costmodel.Counter{}, c.path, &info); err != nil || info.Model != c.model || info.NoOutput != c.noOutput {
			t.Errorf("%s %s: model %q, no output %v (%v); want %q, %v", c.path, c.body, info.Model, info.NoOutput, err, c.model, c.noOutput)
		}
	}
}

// fakeRegion is an Azure OpenAI region: it records what reached it and
// answers like a chat deployment, or 429 (Azure's retry-after-ms) while
// busy.
type fakeRegion struct {
	srv  *httptest.Server
	busy bool
	log  providerLog
	mu   sync.Mutex
	host []string // the Host of each request
}

func newFakeRegion(t *testing.T, busy bool) *fakeRegion {
	f := &fakeRegion{busy: busy}
	f.srv = httptestServer(t, func(w http.ResponseWriter, r *http.Request) {
		f.log.add(r)
		f.mu.Lock()
		f.host = append(f.host, r.Host)
		f.mu.Unlock()
		if f.busy {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("retry-after-ms", "3000")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded call rate limit."}}`)
			return
		}
		chatCompletion(w, r, 12, 3)
	})
	return f
}

// docAzureSite is the one Caddyfile of README.md and docs/ that contains
// marker, made to run here: its site on the harness's next gateway with
// the harness's global options, each https://<name>.openai.azure.com the
// fake region of that name, keys_file the given file, Redis the test's.
func docAzureSite(t *testing.T, marker string, regions map[string]*fakeRegion, keysFile, redisAddr string) string {
	t.Helper()
	b := docCaddyfileWith(t, marker)
	cfg := b.text
	if !strings.HasPrefix(cfg, ":8080 {") {
		t.Fatalf("%s: the Caddyfile with %q is not a site :8080", b.where, marker)
	}
	cfg = fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tstorage file_system %s\n}\nhttp://%s {",
		testAdmin, testStorage, nextGateway()) + strings.TrimPrefix(cfg, ":8080 {")
	cfg = regexp.MustCompile(`https://([a-z0-9-]+)\.openai\.azure\.com`).ReplaceAllStringFunc(cfg, func(u string) string {
		name := strings.TrimSuffix(strings.TrimPrefix(u, "https://"), ".openai.azure.com")
		f := regions[name]
		if f == nil {
			t.Fatalf("no fake region for %s", u)
		}
		return "http://" + f.srv.Listener.Addr().String()
	})
	cfg = keysFileRE.ReplaceAllString(cfg, "keys_file "+keysFile)
	return regexp.MustCompile(`url rediss://\S+`).ReplaceAllString(cfg, "url redis://"+redisAddr)
}

// The documented two Azure recipes, as written, in front of fake regions:
// an Azure client (its gateway key in api-key, a deployment path) is
// admitted, its tokens count against the region's quota, and each region
// gets its own key, never the client's.
func TestDocAzureRecipesWorkEndToEnd(t *testing.T) {
	const client = "sk-gateway-client-azure"
	keys := filepath.Join(t.TempDir(), "gateway-keys.txt")
	if err := os.WriteFile(keys, []byte(client+" team\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AZURE_KEY_EASTUS", "azure-secret-eastus")
	t.Setenv("AZURE_KEY_WESTEUROPE", "azure-secret-westeurope")
	t.Setenv("REDIS_PASSWORD", "") // the test's Redis has none
	const path = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
	body := `{"messages":[{"role":"user","content":"Hi"}],"max_tokens":10}`

	// checkRegion fails unless the region saw n requests on the deployment
	// path, each with its own key and Host, and no trace of the client's key.
	checkRegion := func(t *testing.T, name string, f *fakeRegion, n int) {
		t.Helper()
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.log.seen) != n {
			t.Fatalf("%s saw %d requests, want %d", name, len(f.log.seen), n)
		}
		for i, h := range f.log.seen {
			if h.Get("Api-Key") != "azure-secret-"+name || f.host[i] != "my-"+name+".openai.azure.com" && f.host[i] != "example-"+name+".openai.azure.com" ||
				f.log.urls[i] != path {
				t.Errorf("%s request %d: %s Host %s api-key %q", name, i+1, f.log.urls[i], f.host[i], h.Get("Api-Key"))
			}
		}
		if leak := f.log.leaked(client); leak != "" {
			t.Errorf("the client's key reached %s: %s", name, leak)
		}
	}

	t.Run("a second region", func(t *testing.T) {
		eastus, westeurope := newFakeRegion(t, true), newFakeRegion(t, false)
		if err := load(t, docAzureSite(t, "zone regions", map[string]*fakeRegion{"my-eastus": eastus, "my-westeurope": westeurope}, keys, "")); err != nil {
			t.Fatal(err)
		}
		r := sendReq(t, azureReq(t, path, client, body))
		if r.status != 200 || r.header.Get("x-llm-ratelimit-upstream") != "westeurope" {
			t.Fatalf("%d %v %s; want 200 from westeurope after eastus's 429", r.status, r.header, r.body)
		}
		checkRegion(t, "eastus", eastus, 1)
		checkRegion(t, "westeurope", westeurope, 1)
		if st := keyTotals(t, "regions", client); st.RequestsTotal != 1 || st.InputTokensTotal != 12 || st.OutputTokensTotal != 3 {
			t.Errorf("key totals %+v, want 1 request, 12 in, 3 out", st)
		}
		up := zoneOf(t, "regions").stats(clk.Now().UnixNano()).Upstreams["westeurope"]
		if up.TPMAvailable == nil || *up.TPMAvailable != 300000-15 {
			t.Errorf("westeurope's tpm available %v, want the 15 tokens used gone", up.TPMAvailable)
		}
		if r := sendReq(t, azureReq(t, path, "sk-stranger", body)); r.status != 401 {
			t.Errorf("an unknown key: %d, want 401", r.status)
		}
	})

	t.Run("several regions", func(t *testing.T) {
		rs := startRedis(t)
		eastus, westeurope := newFakeRegion(t, false), newFakeRegion(t, false)
		if err := load(t, docAzureSite(t, "zone azure-westeurope", map[string]*fakeRegion{"example-eastus": eastus, "example-westeurope": westeurope}, keys, rs.addr)); err != nil {
			t.Fatal(err)
		}
		for _, region := range []string{"eu", "us"} {
			if r := sendReq(t, azureReq(t, "/"+region+path, client, body)); r.status != 200 {
				t.Fatalf("%s: %d %s", region, r.status, r.body)
			}
		}
		// The deployment's body is read: a request that no region's tpm can
		// ever hold is refused, naming that region's quota.
		for region, tpm := range map[string]string{"eu": "1000000", "us": "2000000"} {
			big := `{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2500000}`
			r := sendReq(t, azureReq(t, "/"+region+path, client, big))
			if r.status != 429 || !strings.Contains(r.errorBody(t).Error.Message, "request too large for the shared upstream quota's tokens per min (TPM): Limit "+tpm) {
				t.Errorf("%s: %d %s, want a 429 naming the region's tpm %s", region, r.status, r.body, tpm)
			}
		}
		checkRegion(t, "eastus", eastus, 1)
		checkRegion(t, "westeurope", westeurope, 1)
	})
}
