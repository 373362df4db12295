package llmratelimit

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// TestReadmeRecipesServeARequest runs every README recipe as written in
// the in-process Caddy and sends a request through it, as its users'
// clients would: an OpenAI one (Authorization: Bearer) where it proxies to
// OpenAI, an Anthropic one (x-api-key, /v1/messages) where it proxies to
// Anthropic. Only what cannot run here changes: the site's address and
// global options, the provider's address (a mock that answers with usage),
// the keys file (readmeKeysFile: a real line of the recipe's first tier),
// files and Redis (a real redis-server; Cluster, Sentinel, TLS and
// credentials dropped). Where the recipe has a keys file, the request must
// be counted under the key's tier, so that a recipe whose key template
// does not find the client's key fails. The Azure recipes have their own
// end-to-end test (TestReadmeAzureRecipesWorkEndToEnd).
func TestReadmeRecipesServeARequest(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	srv := startRedis(t)
	for _, k := range []string{"OPENAI_KEY_1", "OPENAI_KEY_2", "OPENAI_KEY_3", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"} {
		t.Setenv(k, "sk-provider-"+strings.ToLower(k))
	}
	t.Setenv("REDIS_PASSWORD", "")
	var mu sync.Mutex
	var leaked []string
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		for _, h := range []string{"Authorization", "X-Api-Key"} {
			if strings.Contains(r.Header.Get(h), readmeClient) && r.Header.Get("X-Readme-Passthrough") == "" {
				mu.Lock()
				leaked = append(leaked, r.URL.Path+" "+h)
				mu.Unlock()
			}
		}
		if strings.HasPrefix(r.URL.Path, "/v1/messages") {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}`)
			return
		}
		chatCompletion(w, r, 12, 3)
	})
	served := 0
	for i, b := range regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(raw), -1) {
		cfg := b[1]
		if strings.Contains(cfg, "<name>") || !strings.Contains(cfg, "reverse_proxy") || strings.Contains(cfg, ".openai.azure.com") {
			continue // the grammar, a global-options snippet, the Azure recipes
		}
		t.Run(fmt.Sprintf("block %d", i+1), func(t *testing.T) {
			site := readmeRecipeSite(t, cfg, srv.addr)
			if err := load(t, site); err != nil {
				t.Fatalf("%v\n%s", err, site)
			}
			tier := ""
			if m := regexp.MustCompile(`(?m)^\s*tier (\S+) \{`).FindStringSubmatch(cfg); m != nil && strings.Contains(cfg, "keys_file") {
				tier = m[1]
			}
			// A recipe that passes the client's own key through (no
			// credential header of its own) sends it to the provider, as it
			// says: the mock does not count that as a leak.
			passthrough := !strings.Contains(cfg, "header_up Authorization") && !strings.Contains(cfg, "header_up x-api-key")
			if strings.Contains(cfg, "api.openai.com") {
				readmeSend(t, "/v1/chat/completions", "Authorization", "Bearer "+readmeClient, passthrough,
					`{"model":"gpt-4o","max_tokens":50,"messages":[{"role":"user","content":"Say hi."}]}`, tier)
				served++
			}
			if strings.Contains(cfg, "api.anthropic.com") {
				readmeSend(t, "/v1/messages", "X-Api-Key", readmeClient, passthrough,
					`{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[{"role":"user","content":"Say hi."}]}`, tier)
				served++
			}
		})
	}
	if served < 14 {
		t.Fatalf("sent %d requests through README recipes; want one through each", served)
	}
	if len(leaked) > 0 {
		t.Fatalf("the customer's key reached the provider through a recipe with its own credentials: %v", leaked)
	}
}

// readmeRecipeSite turns a README recipe into a Caddyfile that runs here.
func readmeRecipeSite(t *testing.T, cfg, redisAddr string) string {
	t.Helper()
	if strings.HasPrefix(cfg, "{\n") { // global options: the test's own instead
		end := strings.Index(cfg, "\n}\n")
		cfg = strings.TrimLeft(cfg[end+3:], "\n")
	}
	if !strings.HasPrefix(cfg, ":8080 {") {
		t.Fatalf("README recipe does not start with a :8080 site:\n%s", cfg)
	}
	cfg = fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tstorage file_system %s\n}\nhttp://%s {",
		testAdmin, testStorage, nextGateway()) + strings.TrimPrefix(cfg, ":8080 {")
	cfg = regexp.MustCompile(`https://api\.(openai|anthropic)\.com`).ReplaceAllString(cfg, "http://"+upstream.Listener.Addr().String())
	cfg = regexp.MustCompile(`keys_file \S+`).ReplaceAllString(cfg, "keys_file "+readmeKeysFile(t, cfg))
	cfg = regexp.MustCompile(`prices_file \S+`).ReplaceAllString(cfg, "prices_file testdata/prices/model_prices_sample.json")
	cfg = regexp.MustCompile(`(?m)^(\s*)address .*$`).ReplaceAllString(cfg, "${1}address "+redisAddr)
	cfg = regexp.MustCompile(`url rediss?://\S+`).ReplaceAllString(cfg, "url redis://"+redisAddr)
	cfg = regexp.MustCompile(`(?m)^\s*(cluster|tls|sentinel \S+|username \S+|password \S+|prefix \S+)\s*$\n`).ReplaceAllString(cfg, "")
	// Each recipe gets a Redis prefix of its own.
	return strings.ReplaceAll(cfg, "store redis {", fmt.Sprintf("store redis {\n\t\t\tprefix readme%d:", len(cfg)))
}

// readmeSend sends one request with the customer's key in header and wants
// a 200; with tier set, the key must be counted under that tier.
func readmeSend(t *testing.T, path, header, value string, passthrough bool, body, tier string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+gateway+path, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(header, value)
	if header == "X-Api-Key" {
		req.Header.Set("anthropic-version", "2023-06-01")
	}
	if passthrough {
		req.Header.Set("X-Readme-Passthrough", "1")
	}
	r := sendReq(t, req)
	if r.status != 200 {
		t.Fatalf("POST %s: %d %s", path, r.status, r.body)
	}
	if tier == "" {
		return
	}
	id := hashKey(readmeClient).id()
	var tiers []string
	zones.Range(func(_, v any) bool {
		for _, k := range v.(*zone).stats(clk.Now().UnixNano()).Keys {
			if k.KeyID == id {
				tiers = append(tiers, k.Tier)
			}
		}
		return true
	})
	for _, got := range tiers {
		if got == tier {
			return
		}
	}
	t.Fatalf("POST %s: the customer's key is not counted under its keys-file tier %q (tiers seen: %v): the recipe does not find the key where the client put it", path, tier, tiers)
}
