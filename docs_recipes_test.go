package llmratelimit

import (
	"bytes"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// docProvider is how a documented Caddyfile that proxies to a provider is
// sent a request, as that provider's clients send it: where the customer's
// key goes, the path and the body. A Caddyfile that proxies to none of
// these fails TestDocCaddyfilesServeARequest: add a row for a new provider.
type docProvider struct {
	name   string
	host   *regexp.Regexp // the provider's address in the Caddyfile
	path   string
	header string // the header that carries the customer's key
	value  string
	body   string
	answer string // in the mock provider's answer, so that it came through
	// reply is how the mock provider answers a request whose path ends in
	// path; nil: as OpenAI or Anthropic does. A dialect's test file can
	// add its provider's row in an init function.
	reply http.HandlerFunc
}

var docProviders = []docProvider{
	{"openai", regexp.MustCompile(`https://api\.openai\.com`), "/v1/chat/completions", "Authorization", "Bearer " + docClient,
		`{"model":"gpt-4o","max_tokens":50,"messages":[{"role":"user","content":"Say hi."}]}`, `"object":"chat.completion"`, nil},
	{"anthropic", regexp.MustCompile(`https://api\.anthropic\.com`), "/v1/messages", "X-Api-Key", docClient,
		`{"model":"claude-sonnet-4-5","max_tokens":50,"messages":[{"role":"user","content":"Say hi."}]}`, `"type":"message"`, nil},
	{"azure", regexp.MustCompile(`https://[a-z0-9-]+\.openai\.azure\.com`), "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", "Api-Key", docClient,
		`{"max_tokens":50,"messages":[{"role":"user","content":"Say hi."}]}`, `"object":"chat.completion"`, nil},
}

var stripPrefixRE = regexp.MustCompile(`uri strip_prefix (\S+)`)

// TestDocCaddyfilesServeARequest runs every Caddyfile of the README and
// docs/ as written in the in-process Caddy and sends a request through it
// to each provider it proxies to (docProviders), with the customer's key
// where that provider's clients put it; under each `uri strip_prefix` it
// names, one request per prefix. Only what cannot run here changes: the
// site's address and the admin and storage options, the provider's address
// (a mock that answers with usage), the keys file (docKeysFile: a real
// line of the Caddyfile's first tier), files and Redis (a real
// redis-server; Cluster, Sentinel, TLS and credentials dropped). Where the
// Caddyfile has a keys file, the request must be counted under the key's
// tier, so that one whose key template does not find the client's key
// fails. Every Caddyfile must answer at least one request: none is skipped.
func TestDocCaddyfilesServeARequest(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	blocks := docCaddyfiles(t)
	srv := startRedis(t)
	for _, k := range []string{"OPENAI_KEY_1", "OPENAI_KEY_2", "OPENAI_KEY_3", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_KEY_EASTUS", "AZURE_KEY_WESTEUROPE"} {
		t.Setenv(k, "sk-provider-"+strings.ToLower(k))
	}
	t.Setenv("REDIS_PASSWORD", "")
	var mu sync.Mutex
	var leaked []string
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		for _, h := range []string{"Authorization", "X-Api-Key", "Api-Key"} {
			if strings.Contains(r.Header.Get(h), docClient) && r.Header.Get("X-Docs-Passthrough") == "" {
				mu.Lock()
				leaked = append(leaked, r.URL.Path+" "+h)
				mu.Unlock()
			}
		}
		for _, p := range docProviders {
			if p.reply != nil && strings.HasSuffix(r.URL.Path, p.path) {
				p.reply(w, r)
				return
			}
		}
		if strings.HasPrefix(r.URL.Path, "/v1/messages") {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}`)
			return
		}
		chatCompletion(w, r, 12, 3)
	})
	caddyfiles, served := 0, 0
	for i, b := range blocks {
		if b.grammar() {
			continue
		}
		caddyfiles++
		t.Run(filepath.Base(b.where), func(t *testing.T) {
			site := docSite(t, b, i, srv.addr)
			if err := load(t, site); err != nil {
				t.Fatalf("%s: %v\n%s", b.where, err, site)
			}
			tier := ""
			if m := tierLineRE.FindStringSubmatch(b.text); m != nil && strings.Contains(b.text, "keys_file") {
				tier = m[1]
			}
			// A Caddyfile that passes the client's own key through (no
			// credential header of its own) sends it to the provider, as it
			// says: the mock does not count that as a leak.
			lower := strings.ToLower(b.text)
			passthrough := !strings.Contains(lower, "header_up authorization") && !strings.Contains(lower, "header_up x-api-key") &&
				!strings.Contains(lower, "header_up api-key")
			prefixes := []string{""}
			if m := stripPrefixRE.FindAllStringSubmatch(b.text, -1); m != nil {
				prefixes = prefixes[:0]
				for _, p := range m {
					prefixes = append(prefixes, p[1])
				}
			}
			sent := 0
			for _, p := range docProviders {
				if !p.host.MatchString(b.text) {
					continue
				}
				for _, prefix := range prefixes {
					docSend(t, b, docZone(i), p, prefix, passthrough, tier)
					sent++
				}
			}
			if sent == 0 {
				t.Fatalf("%s: the Caddyfile proxies to no provider the test can send a request to (docProviders):\n%s", b.where, b.text)
			}
			served++
		})
	}
	if served != caddyfiles {
		t.Fatalf("%d of %d Caddyfiles of README.md and docs/ answered a request; want every one", served, caddyfiles)
	}
	if len(leaked) > 0 {
		t.Fatalf("the customer's key reached the provider through a Caddyfile with its own credentials: %v", leaked)
	}
	t.Logf("%d Caddyfiles of README.md and docs/ each answered a request", served)
}

// docSite turns a documented Caddyfile (the i-th block) into one that runs
// here: the harness's admin, storage and a gateway address of its own, the
// block's other global options kept.
func docSite(t *testing.T, b docCaddyfile, i int, redisAddr string) string {
	t.Helper()
	cfg, globals := b.text, ""
	if strings.HasPrefix(cfg, "{\n") {
		end := strings.Index(cfg, "\n}\n")
		for _, line := range strings.Split(cfg[2:end], "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || strings.HasPrefix(f[0], "#") || f[0] == "admin" || f[0] == "storage" {
				continue // the harness's own admin and storage instead
			}
			globals += line + "\n"
		}
		cfg = strings.TrimLeft(cfg[end+3:], "\n")
	}
	if !strings.HasPrefix(cfg, ":8080 {") {
		t.Fatalf("%s: the Caddyfile does not start with a :8080 site:\n%s", b.where, b.text)
	}
	cfg = fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tstorage file_system %s\n%s}\nhttp://%s {",
		testAdmin, testStorage, globals, nextGateway()) + strings.TrimPrefix(cfg, ":8080 {")
	for _, p := range docProviders {
		cfg = p.host.ReplaceAllString(cfg, "http://"+upstream.Listener.Addr().String())
	}
	cfg = keysFileRE.ReplaceAllString(cfg, "keys_file "+docKeysFile(t, b))
	cfg = pricesRE.ReplaceAllString(cfg, "prices_file testdata/prices/model_prices_sample.json")
	cfg = regexp.MustCompile(`(?m)^(\s*)address .*$`).ReplaceAllString(cfg, "${1}address "+redisAddr)
	cfg = regexp.MustCompile(`url rediss?://\S+`).ReplaceAllString(cfg, "url redis://"+redisAddr)
	cfg = regexp.MustCompile(`(?m)^\s*(cluster|tls|sentinel \S+|username \S+|password \S+|prefix \S+|timeout \S+)\s*$\n`).ReplaceAllString(cfg, "")
	// Each Caddyfile gets zones and a Redis prefix of its own, so that
	// what a request left in one is never taken for another's, and the
	// tests' Redis timeout: a loaded machine must not turn a slow call
	// into fail closed's 503.
	cfg = zoneLineRE.ReplaceAllString(cfg, "${1}zone "+docZone(i)+"${2}")
	return strings.ReplaceAll(cfg, "store redis {", fmt.Sprintf("store redis {\n\t\t\tprefix docs%d:\n\t\t\ttimeout %v", i, time.Duration(testRedisTimeout)))
}

var zoneLineRE = regexp.MustCompile(`(?m)^(\s*)zone (\S+)`)

// docZone is the prefix of the i-th block's zone names in the test.
func docZone(i int) string { return fmt.Sprintf("docs%d-", i) }

// docSend sends provider p's request with the customer's key under prefix
// and wants the mock provider's 200, and the request counted for the key
// in a zone of this Caddyfile (named with zonePrefix); with tier set,
// under that tier.
func docSend(t *testing.T, b docCaddyfile, zonePrefix string, p docProvider, prefix string, passthrough bool, tier string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+gateway+prefix+p.path, bytes.NewBufferString(p.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(p.header, p.value)
	if p.name == "anthropic" {
		req.Header.Set("anthropic-version", "2023-06-01")
	}
	if passthrough {
		req.Header.Set("X-Docs-Passthrough", "1")
	}
	before, _ := docKeyCount(zonePrefix)
	r := sendReq(t, req)
	if r.status != 200 || !strings.Contains(r.body, p.answer) {
		t.Fatalf("%s: POST %s%s (%s): %d %s; want the provider's answer", b.where, prefix, p.path, p.name, r.status, r.body)
	}
	after, tiers := docKeyCount(zonePrefix)
	if after != before+1 {
		t.Fatalf("%s: POST %s%s (%s): the key's requests in the Caddyfile's zones went from %d to %d; want one more", b.where, prefix, p.path, p.name, before, after)
	}
	if tier == "" {
		return
	}
	for _, got := range tiers {
		if got == tier {
			return
		}
	}
	t.Fatalf("%s: POST %s%s: the customer's key is not counted under its keys-file tier %q (tiers seen: %v): the Caddyfile does not find the key where the client put it", b.where, prefix, p.path, tier, tiers)
}

// docKeyCount is docClient's requests in the zones named with zonePrefix,
// and the tiers it has there.
func docKeyCount(zonePrefix string) (requests int64, tiers []string) {
	id := hashKey(docClient).id()
	zones.Range(func(name, v any) bool {
		if !strings.HasPrefix(name.(string), zonePrefix) {
			return true
		}
		for _, k := range v.(*zone).stats(clk.Now().UnixNano()).Keys {
			if k.KeyID == id {
				requests += k.RequestsTotal
				tiers = append(tiers, k.Tier)
			}
		}
		return true
	})
	return requests, tiers
}
