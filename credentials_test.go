package llmratelimit

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// The kinds of credential an account can set with header_up, one for each
// place a provider reads it.
var accountCredentials = []struct {
	name, field, value string
}{
	{"authorization", "Authorization", "Bearer sk-provider-openai"},
	{"x-api-key", "x-api-key", "sk-provider-anthropic"},
	{"x-goog-api-key", "x-goog-api-key", "AIza-provider-google"},
	{"api-key", "api-key", "azure-provider-key"},
}

// The places a client can put its gateway key.
var clientKeyPlaces = []struct {
	name string
	set  func(r *http.Request, key string)
}{
	{"Authorization", func(r *http.Request, key string) { r.Header.Set("Authorization", "Bearer "+key) }},
	{"x-api-key", func(r *http.Request, key string) { r.Header.Set("x-api-key", key) }},
	{"x-goog-api-key", func(r *http.Request, key string) { r.Header.Set("x-goog-api-key", key) }},
	{"api-key", func(r *http.Request, key string) { r.Header.Set("api-key", key) }},
	{"?key=", func(r *http.Request, key string) {
		q := r.URL.Query()
		q.Set("key", key)
		r.URL.RawQuery = q.Encode()
	}},
}

// The wire formats, each with a path its clients call and a query
// parameter that must survive the removal of ?key=.
var credentialFormats = []struct {
	name, path, keep, body string
}{
	{"openai", "/v1/chat/completions?trace=1", "trace=1", chatBody},
	{"anthropic", "/v1/messages?beta=true", "beta=true", messagesBody},
	{"gemini", geminiModelPath + ":generateContent?alt=json", "alt=json", `{"contents":[{"parts":[{"text":"Hi"}]}]}`},
	{"azure", "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21", "api-version=2024-10-21",
		`{"messages":[{"role":"user","content":"Hi"}],"max_tokens":10}`},
}

// credentialSite is a Caddyfile with one llm_ratelimit handler per kind of
// account credential, chosen by the X-Test-Account header: each a named
// account of a pool (named) or the unnamed upstream block (unnamed).
func credentialSite(form string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tstorage file_system %s\n}\nhttp://%s {\n",
		testAdmin, testStorage, nextGateway())
	for _, c := range accountCredentials {
		name := ""
		if form == "named" {
			name = "acct "
		}
		fmt.Fprintf(&b, "\t@%[1]s header X-Test-Account %[1]s\n\tllm_ratelimit @%[1]s {\n\t\tzone creds_%[2]s_%[1]s\n\t\trpm 1000\n"+
			"\t\tupstream %[3]s{\n\t\t\trpm 1000\n\t\t\theader_up %[4]s %[5]q\n\t\t}\n\t}\n",
			c.name, form, name, c.field, c.value)
	}
	fmt.Fprintf(&b, "\treverse_proxy %s\n}\n", upstream.Listener.Addr())
	return b.String()
}

// providerAnswer answers in the format of the path, with usage.
func providerAnswer(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/v1/messages"):
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":6,"output_tokens":2}}`)
	case strings.Contains(r.URL.Path, ":generateContent"):
		geminiUpstream(6, 2, 0)(w, r)
	default:
		chatCompletion(w, r, 6, 2)
	}
}

// Every kind of account credential × every place a client can put its key
// × every format, with each account a named one of a pool and the unnamed
// block: the provider gets the account's credential and never the
// client's key, and the rest of the query is kept.
func TestClientCredentialsNeverReachTheProvider(t *testing.T) {
	for _, form := range []string{"named", "unnamed"} {
		t.Run(form, func(t *testing.T) {
			if err := load(t, credentialSite(form)); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var seen *http.Request
			setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				seen = &http.Request{Header: r.Header.Clone(), URL: r.URL}
				mu.Unlock()
				providerAnswer(w, r)
			})
			for _, acct := range accountCredentials {
				for _, place := range clientKeyPlaces {
					for _, f := range credentialFormats {
						t.Run(acct.name+"/"+place.name+"/"+f.name, func(t *testing.T) {
							secret := "sk-client-secret-" + form + "-" + acct.name + "-" + f.name
							req := newReq(t, f.path, "", f.body)
							req.Header.Set("X-Test-Account", acct.name)
							place.set(req, secret)
							mu.Lock()
							seen = nil
							mu.Unlock()
							r := sendReq(t, req)
							mu.Lock()
							defer mu.Unlock()
							if r.status != http.StatusOK || seen == nil {
								t.Fatalf("status %d %s; want 200 from the provider", r.status, r.body)
							}
							if got := seen.Header.Get(acct.field); got != acct.value {
								t.Errorf("the provider got %s %q, want the account's %q", acct.field, got, acct.value)
							}
							for field, vals := range seen.Header {
								for _, v := range vals {
									if strings.Contains(v, "sk-client") {
										t.Errorf("the client's key reached the provider in %s: %q", field, v)
									}
								}
							}
							if u := seen.URL.String(); strings.Contains(u, "sk-client") || strings.Contains(u, "key=") || !strings.Contains(u, f.keep) {
								t.Errorf("the provider's URL is %s: want %s kept and no key", u, f.keep)
							}
						})
					}
				}
			}
		})
	}
}

// The unnamed upstream block takes a named account's subdirectives: its
// header_up reaches the provider in place of the client's key, and its rpm
// is the quota every key shares.
func TestUnnamedUpstreamBlockSendsItsCredentialsAndLimits(t *testing.T) {
	mustLoad(t, "zone unnamed_creds\nupstream {\n\trpm 2\n\theader_up x-api-key sk-provider-single\n\theader_up anthropic-version 2023-06-01\n}")
	var log providerLog
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		log.add(r)
		providerAnswer(w, r)
	})
	for i, key := range []string{"sk-client-one", "sk-client-two"} {
		if r := send(t, "/v1/messages", key, messagesBody); r.status != 200 {
			t.Fatalf("request %d: %d %s", i+1, r.status, r.body)
		}
	}
	r := send(t, "/v1/messages", "sk-client-three", messagesBody)
	if e := r.errorBody(t); r.status != 429 || e.Error.Type != "rate_limit_error" || !strings.Contains(e.Error.Message, "the shared upstream quota's requests per min (RPM): Limit 2") {
		t.Fatalf("third request over the account's rpm 2: %d %s", r.status, r.body)
	}
	if len(log.seen) != 2 {
		t.Fatalf("the provider saw %d requests, want 2", len(log.seen))
	}
	for i, h := range log.seen {
		if h.Get("X-Api-Key") != "sk-provider-single" || h.Get("Anthropic-Version") != "2023-06-01" || h.Get("Authorization") != "" {
			t.Errorf("request %d reached the provider with %v", i+1, h)
		}
	}
	if leak := log.leaked("sk-client"); leak != "" {
		t.Fatalf("a client's key reached the provider: %s", leak)
	}
}

// The unnamed block's models are the only ones it serves: another is 404,
// as for a pool.
func TestUnnamedUpstreamBlockServesOnlyItsModels(t *testing.T) {
	mustLoad(t, "zone unnamed_models\nupstream {\n\tmodels gpt-4o*\n\tpriority 3\n}")
	setUpstream(t, providerAnswer)
	if r := send(t, "/v1/chat/completions", "sk-models-1", chatBody); r.status != 200 {
		t.Fatalf("gpt-4o: %d %s", r.status, r.body)
	}
	r := send(t, "/v1/messages", "sk-models-1", messagesBody)
	if e := r.errorBody(t); r.status != 404 || e.Error.Type != "not_found_error" {
		t.Fatalf("claude-sonnet-4-5: %d %s, want 404 not_found_error", r.status, r.body)
	}
}

// The unnamed block's subdirectives land in the JSON config's upstream.
func TestUnnamedUpstreamBlockAdaptsToJSON(t *testing.T) {
	out, err := adaptCaddyfileForTest(`:8080 {
	llm_ratelimit {
		upstream {
			rpm 500
			header_up api-key {env.AZURE_KEY}
			models gpt-4o*
		}
	}
	reverse_proxy 127.0.0.1:9
}`)
	if err != nil {
		t.Fatal(err)
	}
	if want := `"upstream":{"header_up":{"Api-Key":"{env.AZURE_KEY}"},"models":["gpt-4o*"],"rpm":500}`; !strings.Contains(string(out), want) {
		t.Fatalf("adapted JSON lacks %s:\n%s", want, out)
	}
}

// The default key is read from the first place that holds one, in the
// order SPEC gives: bearer token, x-api-key, x-goog-api-key, the key query
// parameter, api-key. The known key wins only where it comes first.
func TestDefaultKeyLookupOrder(t *testing.T) {
	mustLoad(t, "zone key_order\nrequire_known_keys\napi_key sk-right gold\ntier gold {\n\trpm 1000\n}")
	setUpstream(t, providerAnswer)
	for _, c := range []struct {
		name   string
		first  string // the place that holds sk-right
		second string // the place that holds sk-wrong
		status int
	}{
		{"bearer before x-api-key", "Authorization", "x-api-key", 200},
		{"x-api-key before x-goog-api-key", "x-api-key", "x-goog-api-key", 200},
		{"x-goog-api-key before ?key=", "x-goog-api-key", "?key=", 200},
		{"?key= before api-key", "?key=", "api-key", 200},
		{"x-api-key after bearer", "x-api-key", "Authorization", 401},
		{"api-key after bearer", "api-key", "Authorization", 401},
		{"api-key after ?key=", "api-key", "?key=", 401},
		{"api-key alone", "api-key", "", 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := newReq(t, "/openai/deployments/d/chat/completions?api-version=2024-10-21", "", chatBody)
			for _, p := range clientKeyPlaces {
				switch p.name {
				case c.first:
					p.set(req, "sk-right")
				case c.second:
					p.set(req, "sk-wrong")
				}
			}
			if r := sendReq(t, req); r.status != c.status {
				t.Fatalf("status %d %s, want %d", r.status, r.body, c.status)
			}
		})
	}
	// A Basic scheme is no key: api-key supplies it.
	req := newReq(t, "/v1/chat/completions", "", chatBody)
	req.Header.Set("Authorization", "Basic c2stazp4")
	req.Header.Set("api-key", "sk-right")
	if r := sendReq(t, req); r.status != 200 {
		t.Fatalf("Basic with api-key: %d %s", r.status, r.body)
	}
	// The 401 names every place, from the same list.
	r := send(t, "/v1/chat/completions", "", chatBody)
	if e := r.errorBody(t); r.status != 401 || e.Error.Message != "Missing API key: send it as 'Authorization: Bearer <key>', x-api-key, x-goog-api-key, the key query parameter or api-key." {
		t.Fatalf("401 without a key: %d %s", r.status, r.body)
	}
}

// The key query parameter is read and removed as url.ParseQuery reads it,
// every occurrence, and the rest of the query is kept byte for byte.
func TestKeyQueryParameterIsReadAndRemovedExactly(t *testing.T) {
	for _, c := range []struct {
		raw, value, without string
	}{
		{"", "", ""},
		{"alt=sse", "", "alt=sse"},
		{"key=abc", "abc", ""},
		{"alt=sse&key=abc", "abc", "alt=sse"},
		{"key=abc&alt=sse", "abc", "alt=sse"},
		{"a=1&key=x&b=2&key=y", "x", "a=1&b=2"},
		{"k%65y=esc%2Faped&z=%20", "esc/aped", "z=%20"},
		{"api-key=no&monkey=no&key", "", "api-key=no&monkey=no"},
		{"keys=no&key=a+b", "a b", "keys=no"},
		{"a=1&&key=x&&b=2", "x", "a=1&b=2"},
	} {
		if got := queryValue(c.raw, "key"); got != c.value {
			t.Errorf("queryValue(%q) = %q, want %q", c.raw, got, c.value)
		}
		if got := withoutQueryParam(c.raw, "key"); got != c.without {
			t.Errorf("withoutQueryParam(%q) = %q, want %q", c.raw, got, c.without)
		}
		if want := url.Values(must(url.ParseQuery(c.raw))).Get("key"); want != c.value {
			t.Errorf("%q: url.ParseQuery reads %q, the table says %q", c.raw, want, c.value)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		_ = withoutQueryParam("alt=sse&x=1", "key")
		_ = queryValue("alt=sse&key=abc", "key")
	}); n != 0 {
		t.Errorf("%v allocations reading a query without escapes", n)
	}
}

func must[T any](v T, _ error) T { return v }
