package llmratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// chatBody13k is a ~1.3 KB chat request, the size the overhead target uses.
var chatBody13k = []byte(`{"model":"gpt-4o","max_tokens":512,"temperature":0.2,"messages":[{"role":"system","content":"You are a careful assistant that answers questions about Go programs concisely and correctly."},{"role":"user","content":"` +
	strings.Repeat("Explain how a token bucket limits both requests and tokens per minute. ", 15) + `"}]}`)

const upstreamJSON = `{"id":"chatcmpl-1","object":"chat.completion","created":1741569952,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"A token bucket refills continuously."},"finish_reason":"stop"}],"usage":{"prompt_tokens":260,"completion_tokens":9,"total_tokens":269}}`

// provisioned returns a handler provisioned outside a running Caddy, in its
// own zone.
func provisioned(b testing.TB, h *Handler) *Handler {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Cleanup() })
	return h
}

type nextJSON struct{}

func (nextJSON) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	_, _ = io.Copy(io.Discard, r.Body)
	_ = r.Body.Close() // as reverse_proxy's transport does
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	_, err := io.WriteString(w, upstreamJSON)
	return err
}

// discardWriter is a ResponseWriter that keeps nothing but a header map
// and the status: the first WriteHeader's, or 200 on a Write without one,
// as net/http does. status is 0 until then.
type discardWriter struct {
	h      http.Header
	status int
}

func (d *discardWriter) Header() http.Header { return d.h }

func (d *discardWriter) Write(p []byte) (int, error) {
	if d.status == 0 {
		d.status = http.StatusOK
	}
	return len(p), nil
}

func (d *discardWriter) WriteHeader(code int) {
	if d.status == 0 {
		d.status = code
	}
}

// BenchmarkHandlerOverhead is the plugin's own cost per request, without
// the network or reverse_proxy: key → body → estimate → admit → a next
// handler answering JSON with usage → settle, over 1,000 rotating keys.
func BenchmarkHandlerOverhead(b *testing.B) {
	lim := Limits{RPM: 1 << 40, TPM: 1 << 50, Concurrent: 1 << 20}
	b.Run("plain", func(b *testing.B) {
		benchHandler(b, &Handler{Zone: "bench-overhead", Limits: lim})
	})
	// With a price and a budget: the worst case reserved at admission,
	// the cost settled from the usage (the extra cost of spend).
	b.Run("priced", func(b *testing.B) {
		benchHandler(b, &Handler{Zone: "bench-overhead-priced", Limits: lim,
			DefaultPrice: &Price{Input: 2.5, Output: 10}, Budget: &Budget{USD: 1e9, Period: "monthly"}})
	})
	// Everything on, as bench/overhead and issue 18 measure it: a pool of
	// two accounts whose limits are learned from every answer's headers,
	// calibration, a price and a budget.
	b.Run("everything", func(b *testing.B) {
		benchHandler(b, &Handler{Zone: "bench-overhead-everything", Limits: lim,
			DefaultPrice: &Price{Input: 2.5, Output: 10}, Budget: &Budget{USD: 1e9, Period: "monthly"},
			Upstreams: []Account{
				{Name: "a", Limits: Limits{RPM: 1 << 40}, HeaderUp: map[string]string{"Authorization": "Bearer sk-provider-a"}},
				{Name: "b", Limits: Limits{RPM: 1 << 40}, HeaderUp: map[string]string{"Authorization": "Bearer sk-provider-b"}, Priority: 1},
			}})
	})
	// Priced by a prices_file under a budget: the model's price and
	// limits found by its exact name, and by a name as clients send it
	// (a provider prefix, another case), which the table resolves.
	for _, c := range []struct{ name, model string }{
		{"prices_file-exact", "acme-chat-large"},
		{"prices_file-resolved", "openai/Acme-Chat-Large"},
	} {
		b.Run(c.name, func(b *testing.B) {
			body := bytes.Replace(chatBody13k, []byte(`"model":"gpt-4o"`), []byte(`"model":"`+c.model+`"`), 1)
			benchHandlerBody(b, &Handler{Zone: "bench-overhead-" + c.name, Limits: lim,
				PricesFile: "testdata/prices/model_prices_sample.json", Budget: &Budget{USD: 1e9, Period: "monthly"}}, body)
		})
	}
}

func benchHandler(b *testing.B, cfg *Handler) { benchHandlerBody(b, cfg, chatBody13k) }

// benchHandlerBody is benchHandler with a body of its own.
func benchHandlerBody(b *testing.B, cfg *Handler, chatBody13k []byte) {
	setClock(nil)
	b.Cleanup(func() { setClock(clk) })
	h := provisioned(b, cfg)
	h.logger = zap.NewNop() // Caddy's default level is INFO: admitted requests log nothing
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("Bearer sk-bench-%04d-abcdefghijklmnopqrstuvwxyz", i)
	}
	var next caddyhttp.Handler = nextJSON{}
	w := &discardWriter{h: make(http.Header, 8)}
	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	body := bytes.NewReader(chatBody13k)
	b.SetBytes(int64(len(chatBody13k)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body.Reset(chatBody13k)
		r := req.Clone(req.Context())
		r.Body = io.NopCloser(body)
		r.ContentLength = int64(len(chatBody13k))
		r.Header.Set("Authorization", keys[i%len(keys)])
		clear(w.h)
		w.status = 0
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
		if w.status != http.StatusOK {
			b.Fatalf("request %d: status %d, want 200 (a rejection must fail the benchmark, not speed it up)", i, w.status)
		}
	}
}

// BenchmarkAdmitSettle is one admission and its settle for one key.
func BenchmarkAdmitSettle(b *testing.B) {
	z := newZone("bench-admit")
	defer z.Destruct()
	z.use.on.Store(true) // usage for billing is counted by default
	q := ask{kh: hashKey("sk-one"), lim: Limits{RPM: 1 << 40, TPM: 1 << 50, ITPM: 1 << 50, OTPM: 1 << 50, Concurrent: 1 << 20}, d: demand{in: 300, out: 512}}
	u := usage{Input: 280, Output: 40}
	t0 := time.Now().UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	var tk ticket
	var dec decision
	for i := 0; i < b.N; i++ {
		z.admitInto(&q, t0+int64(i), false, false, &tk, &dec)
		if !dec.ok {
			b.Fatal("rejected")
		}
		tk.finish(t0+int64(i), &u, false)
	}
}

// BenchmarkAdmitSettleParallel runs admissions of many keys on every
// processor: with the key map sharded, throughput scales with GOMAXPROCS.
func BenchmarkAdmitSettleParallel(b *testing.B) {
	z := newZone("bench-admit-parallel")
	defer z.Destruct()
	z.use.on.Store(true) // usage for billing is counted by default
	keys := make([]keyHash, 4096)
	for i := range keys {
		keys[i] = hashKey(fmt.Sprint("sk-", i))
	}
	lim := Limits{RPM: 1 << 40, TPM: 1 << 50}
	u := usage{Input: 280, Output: 40}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			q := ask{kh: keys[i%len(keys)], lim: lim, d: demand{in: 300, out: 512}}
			nowNs := time.Now().UnixNano()
			tk, dec := z.admit(q, nowNs, false, false)
			if !dec.ok {
				b.Errorf("rejected: %+v", dec.verdict)
				return
			}
			tk.finish(nowNs, &u, false)
		}
	})
}

// BenchmarkAdmitSettle1MKeys admits over a million keys, and reports the
// heap each idle key costs.
func BenchmarkAdmitSettle1MKeys(b *testing.B) {
	const n = 1 << 20
	z := newZone("bench-1m")
	defer z.Destruct()
	z.use.on.Store(true) // usage for billing is counted by default
	keys := make([]keyHash, n)
	for i := range keys {
		keys[i] = hashKey(fmt.Sprint("sk-", i))
	}
	lim := Limits{RPM: 1000, TPM: 1000000}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	t0 := time.Now().UnixNano()
	for i, kh := range keys {
		tk, dec := z.admit(ask{kh: kh, lim: lim, d: demand{in: 300, out: 512}}, t0+int64(i), false, false)
		if !dec.ok {
			b.Fatalf("filling: key %d rejected: %+v", i, dec.verdict)
		}
		tk.finish(t0+int64(i), nil, false)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perKey := float64(after.HeapAlloc-before.HeapAlloc) / n
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		kh := keys[i%n]
		tk, dec := z.admit(ask{kh: kh, lim: lim, d: demand{in: 300, out: 512}}, t0+int64(n+i), false, false)
		if !dec.ok {
			b.Fatalf("iteration %d: rejected: %+v", i, dec.verdict)
		}
		tk.finish(t0+int64(n+i), nil, false)
	}
	b.ReportMetric(perKey, "heap-B/idle-key") // after ResetTimer, which drops reported metrics
}

// toolsBody builds a chat body of about size bytes with tool definitions.
func toolsBody(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"model":"gpt-4o","tools":[`)
	for i := 0; i < 8; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"function","function":{"name":"tool_%d","description":"Looks up records of kind %d by id and returns them as JSON.","parameters":{"type":"object","properties":{"id":{"type":"string","description":"The record id."},"limit":{"type":"integer"}},"required":["id"]}}}`, i, i)
	}
	b.WriteString(`],"messages":[`)
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"role":"user","content":"Message %d: the gateway estimates tokens from the text the model reads, \"quoted\" and escaped\n, without a tokenizer."}`, i)
	}
	b.WriteString(`],"max_tokens":1024}`)
	return []byte(b.String())
}

// typedChat is what a gateway that unmarshals bodies would decode into.
type typedChat struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Tools     []json.RawMessage `json:"tools"`
	MaxTokens *int64            `json:"max_tokens"`
	N         *int64            `json:"n"`
	Stream    bool              `json:"stream"`
}

// BenchmarkEstimateVsUnmarshal compares the estimator with json.Unmarshal
// into typed structs of the same bodies, in the same run.
func BenchmarkEstimateVsUnmarshal(b *testing.B) {
	for _, size := range []int{1300, 10 << 10, 100 << 10} {
		body := toolsBody(size)
		if size == 1300 {
			body = chatBody13k
		}
		b.Run(fmt.Sprintf("estimate/%dB", len(body)), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var info requestInfo
			for i := 0; i < b.N; i++ {
				if err := parseRequest(dOpenAI, "", body, &info); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("json.Unmarshal/%dB", len(body)), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				var v typedChat
				if err := json.Unmarshal(body, &v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUsageFromSSE passes a chat stream through the usage reader: 200
// content events and the final usage chunk.
func BenchmarkUsageFromSSE(b *testing.B) {
	var s strings.Builder
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&s, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"token %d \"}}],\"usage\":null}\n\n", i)
	}
	s.WriteString("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":200}}\n\ndata: [DONE]\n\n")
	stream := []byte(s.String())
	events := bytes.SplitAfter(stream, []byte("\n\n"))
	h := usageBenchHandler(b)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		uw := usageWriter{ResponseWriter: &discardWriter{h: http.Header{"Content-Type": {"text/event-stream"}}}, h: h, d: dOpenAI}
		uw.WriteHeader(200)
		for _, ev := range events {
			if _, err := uw.Write(ev); err != nil {
				b.Fatal(err)
			}
		}
		if u, ok := uw.usage(); !ok || u.Output != 200 || !uw.t.done {
			b.Fatalf("usage %+v %v, settled %v", u, ok, uw.t.done)
		}
		uw.release()
	}
}

// usageBenchHandler is a handler with a zone, whose metrics the usage
// readers' settle counts into.
func usageBenchHandler(b *testing.B) *Handler {
	z := newZone("bench-usage-" + b.Name())
	b.Cleanup(func() { _ = z.Destruct() })
	return &Handler{zone: z}
}

// BenchmarkUsageFromJSONTail reads the usage of a 9 KB JSON answer as it
// passes in 4 KB writes.
func BenchmarkUsageFromJSONTail(b *testing.B) {
	answer := []byte(`{"id":"x","choices":[{"message":{"content":"` + strings.Repeat("word ", 1800) + `"}}],"usage":{"prompt_tokens":20,"completion_tokens":1800}}`)
	h := usageBenchHandler(b)
	b.SetBytes(int64(len(answer)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		uw := usageWriter{ResponseWriter: &discardWriter{h: http.Header{"Content-Type": {"application/json"}}}, h: h, d: dOpenAI}
		uw.WriteHeader(200)
		for p := answer; len(p) > 0; {
			n := min(4096, len(p))
			if _, err := uw.Write(p[:n]); err != nil {
				b.Fatal(err)
			}
			p = p[n:]
		}
		if u, ok := uw.usage(); !ok || u.Output != 1800 {
			b.Fatalf("usage %+v %v", u, ok)
		}
		uw.release()
	}
}

// BenchmarkThroughCaddy sends ~1.3 KB chat requests through the in-process
// Caddy (llm_ratelimit + reverse_proxy) over keep-alive connections: for
// profiling the plugin inside the real server (-cpuprofile).
func BenchmarkThroughCaddy(b *testing.B) {
	setClock(nil)
	b.Cleanup(func() { setClock(clk) })
	mustLoad(b, "zone bench_caddy\nrpm 100000000\ntpm 100000000000")
	upstreamFunc.Store(nil)
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("Bearer sk-bench-%04d-abcdefghijklmnopqrstuvwxyz", i)
	}
	kc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	url := "http://" + gateway + "/v1/chat/completions"
	b.ReportAllocs()
	b.ResetTimer()
	var n atomic.Int64
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(chatBody13k))
			if err != nil {
				b.Error(err)
				return
			}
			req.Header.Set("Authorization", keys[int(i)%len(keys)])
			resp, err := kc.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				b.Errorf("request %d: reading the body: %v", i, err)
				return
			}
			if resp.StatusCode != http.StatusOK {
				b.Errorf("request %d: status %d, want 200 (a rejection must fail the benchmark, not speed it up)", i, resp.StatusCode)
				return
			}
		}
	})
}

// BenchmarkChooseAccount8 is the choice of an account among 8 of a pool,
// under the zone's upstream lock as admission makes it: each account's
// buckets checked, the best by priority and headroom (peek: nothing is
// debited, so every round chooses among the same 8).
func BenchmarkChooseAccount8(b *testing.B) {
	z := newZone("bench-choose")
	defer z.Destruct()
	var accts []*accountCfg
	for i := range 8 {
		ac := &accountCfg{name: fmt.Sprintf("acct-%d", i), idx: i, priority: i % 2,
			lim: Limits{RPM: 10000, TPM: 2000000}, pool: true}
		ac.st = z.accountState(ac.name) // as Provision resolves it
		accts = append(accts, ac)
	}
	nowNs := time.Now().UnixNano()
	d := demand{in: 300, out: 512}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var a admission
		z.upMu.Lock()
		var v verdict
		ac, _ := z.chooseAccountInto(&a, accts, &d, nil, nil, nowNs, true, &v)
		z.upMu.Unlock()
		if ac == nil || !v.ok {
			b.Fatal("no account")
		}
	}
}

// BenchmarkUsageCount is what settling adds to count a request in its
// key's usage for billing (billing.go), alone.
func BenchmarkUsageCount(b *testing.B) {
	z := newZone("bench-usage-count")
	defer z.Destruct()
	ks := new(keyState)
	t := ticket{z: z, s: z.shard(hashKey("sk-one")), ks: ks, a: ask{kh: hashKey("sk-one"), d: demand{in: 300, out: 512}}}
	u := usage{Input: 280, Read: 280, Cached: 100, Output: 40}
	t0 := time.Now().UnixNano()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := countedTokens(&t.a.d, &u, false)
		t.countUsage(dayOf(t0+int64(i)), &c, 1234)
	}
	if ks.use.requests == 0 {
		b.Fatal("nothing counted")
	}
}
