package llmratelimit

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-ratelimit"
)

// The package's tests drive one real Caddy, in-process, through its admin
// API, in front of a real HTTP upstream. The ports are this package's own:
// the admin API on base+19 and the gateways from base+81, with base 29400
// unless LLM_RATELIMIT_TEST_PORT_BASE moves it (to run two checkouts'
// tests at once).
var testAdmin, testGatewayPort = testPorts()

func testPorts() (admin string, gateway int) {
	base := 29400
	if v := os.Getenv("LLM_RATELIMIT_TEST_PORT_BASE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1024 || n > 65000 {
			panic("LLM_RATELIMIT_TEST_PORT_BASE: want a port from 1024 to 65000, got " + v)
		}
		base = n
	}
	return fmt.Sprintf("localhost:%d", base+19), base + 80
}

// Every config the tests load listens on a port of its own: after a
// reload, Caddy's old server may still accept a connection for a moment,
// and a request must never be served by the config before.
var (
	gatewayPort    = testGatewayPort
	gateway        string // the address of the loaded config's gateway
	pendingGateway string // the address of the config being loaded
)

// nextGateway picks the port of the next config's gateway: the next one
// up that Caddy can listen on now. Caddy listens on every interface, and a
// port may be taken: from 32768 up (Linux's ephemeral range) every
// outgoing connection of the machine, and its TIME_WAIT, holds one.
func nextGateway() string {
	for {
		gatewayPort++
		if l, err := net.Listen("tcp", fmt.Sprintf(":%d", gatewayPort)); err == nil {
			l.Close()
			break
		}
	}
	pendingGateway = fmt.Sprintf("127.0.0.1:%d", gatewayPort)
	return pendingGateway
}

var (
	testStorage  string // Caddy's storage in every config the tests load
	upstream     *httptest.Server
	upstreamFunc atomic.Pointer[http.HandlerFunc]
	clk          = &fakeClock{t: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)}
	// client opens a connection per request: a kept-alive connection to
	// the server of the previous config could still be served by it.
	client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}
)

// fakeClock is the package clock in tests: time passes only when a test
// says, or when the code under test sleeps. By default a sleep moves the
// clock to its own wake-up time at once and records the wait. In manual
// mode a sleep blocks until Advance passes its wake-up time (or its context
// ends), so that a test can hold requests in a wait, count them and cancel
// them.
type fakeClock struct {
	mu       sync.Mutex
	t        time.Time
	slept    []time.Duration
	manual   bool
	sleepers []*sleeper
}

type sleeper struct {
	wake time.Time
	done chan struct{}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	kept := c.sleepers[:0]
	for _, s := range c.sleepers {
		if s.wake.After(c.t) {
			kept = append(kept, s)
		} else {
			close(s.done)
		}
	}
	c.sleepers = kept
	c.mu.Unlock()
}

func (c *fakeClock) SleepUntil(ctx context.Context, wake time.Time) error {
	c.mu.Lock()
	c.slept = append(c.slept, wake.Sub(c.t))
	if !wake.After(c.t) {
		c.mu.Unlock()
		return ctx.Err()
	}
	if !c.manual {
		c.t = wake
		c.mu.Unlock()
		return ctx.Err()
	}
	s := &sleeper{wake: wake, done: make(chan struct{})}
	c.sleepers = append(c.sleepers, s)
	c.mu.Unlock()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		for i, o := range c.sleepers {
			if o == s {
				c.sleepers = append(c.sleepers[:i], c.sleepers[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
		return ctx.Err()
	}
}

// setManual switches manual mode for one test.
func (c *fakeClock) setManual(t *testing.T) {
	c.mu.Lock()
	c.manual = true
	c.mu.Unlock()
	t.Cleanup(func() {
		c.mu.Lock()
		c.manual = false
		for _, s := range c.sleepers {
			close(s.done)
		}
		c.sleepers = nil
		c.mu.Unlock()
	})
}

// sleeping counts the sleeps waiting in manual mode.
func (c *fakeClock) sleeping() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sleepers)
}

// takeSleeps returns and forgets the waits slept so far.
func (c *fakeClock) takeSleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.slept
	c.slept = nil
	return s
}

func TestMain(m *testing.M) {
	setClock(clk)
	upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := upstreamFunc.Load(); f != nil {
			(*f)(w, r)
			return
		}
		chatCompletion(w, r, 10, 5)
	}))
	// Spend ledgers go to a directory of this run, never to the user's
	// Caddy data directory.
	dir, err := os.MkdirTemp("", "llm-ratelimit-test-storage-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testStorage = dir
	cfg := fmt.Sprintf(`{"admin":{"listen":%q,"config":{"persist":false}}}`, testAdmin)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		fmt.Fprintln(os.Stderr, "starting caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = caddy.Stop()
	upstream.Close()
	_ = os.RemoveAll(testStorage)
	os.Exit(code)
}

// setUpstream swaps the upstream's behaviour for one test.
func setUpstream(t *testing.T, f http.HandlerFunc) {
	t.Helper()
	upstreamFunc.Store(&f)
	t.Cleanup(func() { upstreamFunc.Store(nil) })
}

// chatCompletion answers like OpenAI's chat completions, with usage.
func chatCompletion(w http.ResponseWriter, r *http.Request, prompt, completion int) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("x-ratelimit-remaining-tokens", "999999") // replaced by the gateway's when it has a token bucket
	fmt.Fprintf(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"usage\":{}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
		prompt, completion, prompt+completion)
}

// siteConfig is a Caddyfile with the gateway site on the next gateway port
// (nextGateway): llm_ratelimit with the given body, then reverse_proxy to
// the upstream.
func siteConfig(directiveBody string) string {
	return siteConfigWith("", directiveBody)
}

// siteConfigWith is siteConfig with more global options.
func siteConfigWith(globals, directiveBody string) string {
	return fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	storage file_system %s
%s
}
http://%s {
	llm_ratelimit {
%s
	}
	reverse_proxy %s
}
`, testAdmin, testStorage, globals, nextGateway(), directiveBody, upstream.Listener.Addr().String())
}

// load posts a Caddyfile to the admin API's /load, as a reload does, and
// returns the error body when Caddy refuses it.
func load(t testing.TB, caddyfile string) error {
	t.Helper()
	var resp *http.Response
	var err error
	// Each load replaces Caddy's admin server and stops the old one in the
	// background: a new connection the old one accepted is closed unanswered
	// (EOF), and the request was not processed. Send it again.
	for attempt := 0; attempt < 5; attempt++ {
		req, _ := http.NewRequest(http.MethodPost, "http://"+testAdmin+"/load", strings.NewReader(caddyfile))
		req.Header.Set("Content-Type", "text/caddyfile")
		if resp, err = client.Do(req); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("load: %d %s", resp.StatusCode, body)
	}
	gateway = pendingGateway
	return nil
}

// mustLoad loads the gateway with the given llm_ratelimit body.
func mustLoad(t testing.TB, directiveBody string) {
	t.Helper()
	if err := load(t, siteConfig(directiveBody)); err != nil {
		t.Fatal(err)
	}
}

type reply struct {
	status int
	header http.Header
	body   string
}

// errorJSON is both error shapes: OpenAI's and Anthropic's.
type errorJSON struct {
	Type  string `json:"type"`
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Code    *string `json:"code"`
		Param   *string `json:"param"`
	} `json:"error"`
}

func (r reply) errorBody(t *testing.T) errorJSON {
	t.Helper()
	var e errorJSON
	if err := json.Unmarshal([]byte(r.body), &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, r.body)
	}
	return e
}

// send makes one request to the gateway with a bearer key (none when key
// is "").
func send(t *testing.T, path, key, body string) reply {
	t.Helper()
	return sendReq(t, newReq(t, path, key, body))
}

func newReq(t *testing.T, path, key, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+gateway+path, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return req
}

func sendReq(t *testing.T, req *http.Request) reply {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// zoneOf returns the live state of a zone, through the same pool the
// handlers use.
func zoneOf(t *testing.T, name string) *zone {
	t.Helper()
	var found *zone
	zones.Range(func(k, v any) bool {
		if k == name {
			found = v.(*zone)
			return false
		}
		return true
	})
	if found == nil {
		t.Fatalf("zone %q is not in the pool", name)
	}
	return found
}

// eventually waits for a condition that another goroutine makes true (a
// handler finishing after its client left). It does not make time pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const chatBody = `{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the gateway."}],"max_tokens":100}`
const messagesBody = `{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"Say hello to the gateway."}]}`

func sha256Hex(s string) string {
	kh := hashKey(s)
	return hex.EncodeToString(kh[:])
}

// inflight reports a key's requests in flight (0 for an unknown key).
func (z *zone) inflight(kh keyHash) int64 {
	s := z.shard(kh)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ks, ok := s.keys[kh.prefix()]; ok {
		return ks.inflight
	}
	return 0
}

// after429 answers the first request with a 429 that hints a 5 ms wait,
// and every later one with next. It counts the calls.
func after429(calls *atomic.Int32, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("retry-after-ms", "5")
			w.WriteHeader(429)
			return
		}
		next(w, r)
	}
}

// The registered dialects, for tests that name one.
var (
	dOpenAI    dialect = openAIDialect{}
	dAnthropic dialect = anthropicDialect{}
	dGemini    dialect = geminiDialect{}
	dNone      dialect
)

// parseUsageJSON is the usage that dialect d reads from a whole JSON answer;
// none for no dialect.
func parseUsageJSON(d dialect, body []byte) (usage, bool) {
	if d == nil {
		return usage{}, false
	}
	return jsonUsage(d, body)
}

// unnamed is the unnamed upstream block of these limits as the accounts
// of an ask; none for zero limits.
func unnamed(up Limits) []*accountCfg {
	if up == (Limits{}) {
		return nil
	}
	return []*accountCfg{{name: defaultAccount, lim: up}}
}

// httptestServer is another real upstream for one test.
func httptestServer(t *testing.T, f http.HandlerFunc) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(f)
	t.Cleanup(s.Close)
	return s
}
