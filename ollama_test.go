package llmratelimit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
)

// Ollama's native API through the in-process gateway, in front of a real
// upstream that answers as Ollama does: one JSON object, or an NDJSON
// stream whose last line ("done":true) carries the counts. The request
// bodies are written byte for byte as Ollama's official clients send them:
// the Go client (github.com/ollama/ollama/api) marshals its request
// structs, so "options" is null when unset and "stream" is absent unless
// set; ollama-js sends JSON.stringify of the request with "stream" set.

var dOllama dialect = ollamaDialect{}

// Bodies as the Go client's json.Marshal writes them.
const (
	ollamaGoChat     = `{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],"options":null}`
	ollamaGoChatOnce = `{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],"stream":false,"options":{"num_predict":64,"temperature":0}}`
	ollamaGoGenerate = `{"model":"llama3.2","prompt":"Why is the sky blue?","system":"Answer briefly.","stream":false,"options":{"num_predict":32}}`
	ollamaGoEmbed    = `{"model":"all-minilm","input":["Why is the sky blue?","Why is grass green?"],"options":null}`
	// ollama-js: JSON.stringify({...request, stream}), images as base64.
	ollamaJSChat = `{"model":"llava","messages":[{"role":"user","content":"What is in this picture?","images":["iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="]}],"stream":true}`
)

// ollamaLine is one line of an Ollama chat stream, or its answer.
func ollamaLine(content string, done bool, prompt, eval int) string {
	if !done {
		return fmt.Sprintf(`{"model":"llama3.2","created_at":"2026-12-07T10:00:00.000Z","message":{"role":"assistant","content":%q},"done":false}`, content)
	}
	counts := ""
	if prompt >= 0 {
		counts = fmt.Sprintf(`,"prompt_eval_count":%d,"prompt_eval_duration":1000`, prompt)
	}
	return fmt.Sprintf(`{"model":"llama3.2","created_at":"2026-12-07T10:00:01.000Z","message":{"role":"assistant","content":%q},"done_reason":"stop","done":true,"total_duration":5000,"load_duration":100%s,"eval_count":%d,"eval_duration":3000}`,
		content, counts, eval)
}

// ollamaUpstream answers like Ollama: chat and generate as one object
// with "stream":false, else as an NDJSON stream (the default); embed with
// its embeddings and prompt_eval_count. prompt < 0 leaves
// prompt_eval_count out, as Ollama does for a cached prompt.
func ollamaUpstream(prompt, eval int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req struct {
			Stream *bool `json:"stream"`
		}
		_ = json.Unmarshal(body, &req)
		switch {
		case strings.HasSuffix(r.URL.Path, "/api/embed"):
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			fmt.Fprintf(w, `{"model":"all-minilm","embeddings":[[0.1,-0.2,0.3],[0.4,0.5,-0.6]],"total_duration":1000,"load_duration":10,"prompt_eval_count":%d}`, prompt)
		case req.Stream != nil && !*req.Stream:
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			fmt.Fprint(w, ollamaLine("The sky is blue because of Rayleigh scattering.", true, prompt, eval))
		default:
			w.Header().Set("Content-Type", "application/x-ndjson")
			for _, c := range []string{"The sky ", "is blue ", "because of Rayleigh scattering."} {
				fmt.Fprintln(w, ollamaLine(c, false, 0, 0))
				http.NewResponseController(w).Flush()
			}
			fmt.Fprintln(w, ollamaLine("", true, prompt, eval))
		}
	}
}

// ollamaSend sends body to the gateway with a key, as a client behind a
// gateway does (a bearer token), and the Go client's headers.
func ollamaSend(t *testing.T, path, key, body string) reply {
	t.Helper()
	req := newReq(t, path, key, body)
	req.Header.Set("Accept", "application/x-ndjson")
	req.Header.Set("User-Agent", "ollama/0.13.0 (amd64 linux) Go/go1.26.8")
	return sendReq(t, req)
}

func TestOllamaChatGenerateEmbedSettleTheirCounts(t *testing.T) {
	mustLoad(t, "zone ollama_e2e\nrpm 1000\ntpm 1000000")
	setUpstream(t, ollamaUpstream(26, 298))
	const key = "sk-ollama-e2e"

	r := ollamaSend(t, "/api/chat", key, ollamaGoChatOnce)
	if r.status != 200 || !strings.Contains(r.body, "Rayleigh") || r.header.Get("X-Ratelimit-Limit-Requests") != "1000" {
		t.Fatalf("chat: %d %v %s", r.status, r.header, r.body)
	}
	if st := keyTotals(t, "ollama_e2e", key); st.RequestsTotal != 1 || st.InputTokensTotal != 26 || st.OutputTokensTotal != 298 {
		t.Fatalf("after chat: %+v, want 1 request, 26 in, 298 out", st)
	}

	// A stream is the default: NDJSON lines, passed through unchanged, the
	// last one's counts settled.
	r = ollamaSend(t, "/api/chat", key, ollamaGoChat)
	if r.status != 200 || r.header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("chat stream: %d %v", r.status, r.header)
	}
	lines := 0
	var text strings.Builder
	sc := bufio.NewScanner(strings.NewReader(r.body))
	for sc.Scan() {
		var chunk struct {
			Message struct{ Content string } `json:"message"`
			Done    bool                     `json:"done"`
			Eval    int                      `json:"eval_count"`
		}
		if err := json.Unmarshal(sc.Bytes(), &chunk); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", lines+1, err, sc.Text())
		}
		lines++
		text.WriteString(chunk.Message.Content)
		if chunk.Done && chunk.Eval != 298 {
			t.Fatalf("the done line lost its counts: %s", sc.Text())
		}
	}
	if lines != 4 || text.String() != "The sky is blue because of Rayleigh scattering." {
		t.Fatalf("stream: %d lines, text %q", lines, text.String())
	}
	if st := keyTotals(t, "ollama_e2e", key); st.RequestsTotal != 2 || st.InputTokensTotal != 52 || st.OutputTokensTotal != 596 {
		t.Fatalf("after the stream: %+v, want 2 requests, 52 in, 596 out", st)
	}

	r = ollamaSend(t, "/api/generate", key, ollamaGoGenerate)
	if r.status != 200 {
		t.Fatalf("generate: %d %s", r.status, r.body)
	}
	r = ollamaSend(t, "/api/embed", key, ollamaGoEmbed)
	if r.status != 200 || !strings.Contains(r.body, `"embeddings"`) {
		t.Fatalf("embed: %d %s", r.status, r.body)
	}
	// generate: 26 in, 298 out; embed: 26 in, nothing out.
	if st := keyTotals(t, "ollama_e2e", key); st.RequestsTotal != 4 || st.InputTokensTotal != 104 || st.OutputTokensTotal != 894 {
		t.Fatalf("after generate and embed: %+v, want 4 requests, 104 in, 894 out", st)
	}

	// ollama-js, with an image, streaming.
	if r = ollamaSend(t, "/api/chat", key, ollamaJSChat); r.status != 200 {
		t.Fatalf("ollama-js chat: %d %s", r.status, r.body)
	}
	if st := keyTotals(t, "ollama_e2e", key); st.RequestsTotal != 5 || st.InputTokensTotal != 130 {
		t.Fatalf("after the ollama-js stream: %+v", st)
	}
}

func TestOllamaStreamWithoutPromptCountOrWithAnErrorLine(t *testing.T) {
	mustLoad(t, "zone ollama_lines\nformat ollama\nrpm 1000\ntpm 1000000")
	// A cached prompt: no prompt_eval_count on the done line; it counts 0.
	setUpstream(t, ollamaUpstream(-1, 40))
	const key = "sk-ollama-lines"
	if r := ollamaSend(t, "/api/chat", key, ollamaGoChat); r.status != 200 {
		t.Fatalf("chat: %d %s", r.status, r.body)
	}
	if st := keyTotals(t, "ollama_lines", key); st.InputTokensTotal != 0 || st.OutputTokensTotal != 40 {
		t.Fatalf("a done line without prompt_eval_count: %+v, want 0 in, 40 out", st)
	}

	// An error inside a stream that already answered 200 ends it; with no
	// counts, the reservation stands (num_predict 64, and the input).
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-ndjson")
		fmt.Fprintln(w, ollamaLine("The sky ", false, 0, 0))
		fmt.Fprintln(w, `{"error":"an error was encountered while running the model: unexpected EOF"}`)
	})
	body := `{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],"options":{"num_predict":64}}`
	r := ollamaSend(t, "/api/chat", key, body)
	if r.status != 200 || !strings.Contains(r.body, `"error":"an error was encountered`) {
		t.Fatalf("the error line must reach the client: %d %s", r.status, r.body)
	}
	st := keyTotals(t, "ollama_lines", key)
	if st.RequestsTotal != 2 || st.OutputTokensTotal != 40+64 || st.InputTokensTotal <= 0 {
		t.Fatalf("after the error line: %+v, want the reservation (64 out, the estimate in) kept", st)
	}
	if z := zoneOf(t, "ollama_lines"); z.inflight(hashKey(key)) != 0 {
		t.Fatal("the errored stream left its slot taken")
	}
}

// ollamaError is Ollama's error body.
func ollamaError(t *testing.T, r reply) string {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal([]byte(r.body), &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, r.body)
	}
	msg, ok := e["error"].(string)
	if !ok || len(e) != 1 || msg == "" {
		t.Fatalf(`error body is not {"error":"…"}: %s`, r.body)
	}
	return msg
}

func TestOllamaErrorsTakeItsShape(t *testing.T) {
	mustLoad(t, "zone ollama_errors\nrpm 1\ntpm 1000000\nmodel llama3.2 {\n\tcontext_window 100\n}")
	setUpstream(t, ollamaUpstream(5, 5))
	const key = "sk-ollama-errors"

	// Input and num_predict over the context window: 400, nothing debited.
	long := `{"model":"llama3.2","messages":[{"role":"user","content":"Hi"}],"stream":false,"options":{"num_predict":500}}`
	r := ollamaSend(t, "/api/chat", key, long)
	if msg := ollamaError(t, r); r.status != 400 || !strings.Contains(msg, "context") || r.header.Get("x-should-retry") != "false" {
		t.Fatalf("context window: %d %v %s", r.status, r.header, r.body)
	}

	if r = ollamaSend(t, "/api/chat", key, ollamaGoChatOnce); r.status != 200 {
		t.Fatalf("first request: %d %s", r.status, r.body)
	}
	// rpm 1: the next one is refused in Ollama's shape, with the advice.
	r = ollamaSend(t, "/api/generate", key, ollamaGoGenerate)
	if msg := ollamaError(t, r); r.status != 429 || !strings.Contains(msg, "(RPM)") {
		t.Fatalf("429: %d %s", r.status, r.body)
	}
	if r.header.Get("Retry-After") == "" || r.header.Get("retry-after-ms") == "" || r.header.Get("x-should-retry") != "true" ||
		r.header.Get("X-Ratelimit-Remaining-Requests") != "0" {
		t.Fatalf("429 headers: %v", r.header)
	}

	// No key: 401 in the same shape. Bad JSON: 400.
	if r = ollamaSend(t, "/api/chat", "", ollamaGoChat); r.status != 401 || ollamaError(t, r) == "" {
		t.Fatalf("no key: %d %s", r.status, r.body)
	}
	if r = ollamaSend(t, "/api/chat", key, `{"model":"llama3.2","messages":"hi"}`); r.status != 400 || !strings.Contains(ollamaError(t, r), "messages") {
		t.Fatalf("bad messages: %d %s", r.status, r.body)
	}
}

const ollamaBusy = `{"error":"server busy, please try again.  maximum pending requests exceeded"}`

func TestOllamaServerBusyIsRetriedLikeA429(t *testing.T) {
	mustLoad(t, "zone ollama_busy\nrpm 1000\ntpm 1000000\nretry {\n\tbase 1ms\n}")
	var calls atomic.Int32
	ok := ollamaUpstream(7, 9)
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, ollamaBusy)
			return
		}
		ok(w, r)
	})
	r := ollamaSend(t, "/api/chat", "sk-ollama-busy", ollamaGoChatOnce)
	if r.status != 200 || r.header.Get("x-llm-ratelimit-attempts") != "2" || calls.Load() != 2 {
		t.Fatalf("want 200 on the second attempt, got %d after %d calls: %v %s", r.status, calls.Load(), r.header, r.body)
	}
}

func TestOllamaServerBusyMovesAPoolToAnotherServer(t *testing.T) {
	mustLoad(t, `zone ollama_pool
rpm 1000
upstream gpu1 {
	rpm 100
	header_up Authorization "Bearer sk-gpu1"
	priority 0
}
upstream gpu2 {
	rpm 100
	header_up Authorization "Bearer sk-gpu2"
	priority 1
}`)
	ok := ollamaUpstream(7, 9)
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer sk-gpu1" {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, ollamaBusy)
			return
		}
		ok(w, r)
	})
	r := ollamaSend(t, "/api/chat", "sk-ollama-pool", ollamaGoChatOnce)
	if r.status != 200 || r.header.Get("x-llm-ratelimit-upstream") != "gpu2" {
		t.Fatalf("want 200 through gpu2, got %d %v %s", r.status, r.header, r.body)
	}
	st := zoneOf(t, "ollama_pool").stats(clk.Now().UnixNano()).Upstreams
	if st["gpu1"].CooldownUntil == nil || st["gpu2"].CooldownUntil != nil {
		t.Fatalf("a busy server must cool down like one that answered 429: gpu1 %+v, gpu2 %+v", st["gpu1"], st["gpu2"])
	}
}

func TestOllamaBodiesAsTheClientsWriteThem(t *testing.T) {
	for _, c := range []struct {
		name, path, body string
		want             requestInfo
	}{
		{"go chat, stream by default", "/api/chat", ollamaGoChat,
			requestInfo{Model: "llama3.2", Messages: 1, N: 1, Stream: true}},
		{"go chat once, num_predict", "/api/chat", ollamaGoChatOnce,
			requestInfo{Model: "llama3.2", Messages: 1, N: 1, MaxOutput: 64}},
		{"go generate", "/api/generate", ollamaGoGenerate,
			requestInfo{Model: "llama3.2", Messages: 1, N: 1, MaxOutput: 32}},
		{"go embed", "/api/embed", ollamaGoEmbed,
			requestInfo{Model: "all-minilm", Messages: 2, N: 1, NoOutput: true}},
		{"js chat with an image", "/api/chat", ollamaJSChat,
			requestInfo{Model: "llava", Messages: 1, Images: 1, N: 1, Stream: true}},
		{"num_predict -1 is the default", "/api/generate", `{"model":"m","prompt":"hi","context":[1,2,3],"options":{"num_predict":-1},"stream":null}`,
			requestInfo{Model: "m", Messages: 1, N: 1, Stream: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if d := dialectForPath(c.path); d != dOllama {
				t.Fatalf("format auto reads %s as %v", c.path, d)
			}
			var info requestInfo
			if err := parseRequest(dOllama, c.path, []byte(c.body), &info); err != nil {
				t.Fatal(err)
			}
			if info.TextTokens <= 0 && !strings.Contains(c.name, "image") {
				t.Errorf("no text counted: %+v", info)
			}
			info.TextTokens = 0
			if info != c.want {
				t.Fatalf("info %+v, want %+v", info, c.want)
			}
		})
	}
	// The context's token ids count one token each.
	var with, without requestInfo
	_ = parseRequest(dOllama, "/api/generate", []byte(`{"model":"m","prompt":"hi","context":[1,2,3,4,5,6,7,8,9,10]}`), &with)
	_ = parseRequest(dOllama, "/api/generate", []byte(`{"model":"m","prompt":"hi"}`), &without)
	if with.TextTokens-without.TextTokens != 10 {
		t.Fatalf("context of 10 ids: %d tokens more, want 10", with.TextTokens-without.TextTokens)
	}
	// clamp_max_tokens rewrites options.num_predict, adding it when absent.
	for body, want := range map[string]string{
		`{"model":"m","options":{"num_predict":900,"temperature":0}}`: `{"model":"m","options":{"num_predict":100,"temperature":0}}`,
		`{"model":"m","options":null}`:                                `{"model":"m","options":{"num_predict":100}}`,
		`{"model":"m"}`:                                               `{"options":{"num_predict":100},"model":"m"}`,
	} {
		if got := string(dOllama.clampOutput("/api/chat", []byte(body), 100)); got != want {
			t.Errorf("clamp %s = %s, want %s", body, got, want)
		}
	}
	// An answer's counts, from its tail.
	for body, want := range map[string]usage{
		ollamaLine("x", true, 26, 298):                                      {Input: 26, Output: 298, Read: 26},
		ollamaLine("x", true, -1, 5):                                        {Output: 5},
		`{"model":"all-minilm","embeddings":[[0.1]],"prompt_eval_count":8}`: {Input: 8, Read: 8},
	} {
		if u, ok := jsonUsage(dOllama, []byte(body)[10:]); !ok || u != want {
			t.Errorf("usage of %s = %+v %v, want %+v", body, u, ok, want)
		}
	}
	if _, ok := jsonUsage(dOllama, []byte(`{"model":"m","message":{"content":"\"eval_count\": 5"},"done":false}`)); ok {
		t.Error("a count inside the content was read")
	}
}

// FuzzOllamaStream: any NDJSON answer, written in any pieces, passes
// through unchanged, the writer's tail stays bounded, and the usage read
// is never negative; any body parses without a panic, and an accepted one
// reserves no negative output.
func FuzzOllamaStream(f *testing.F) {
	stream := ollamaLine("The sky ", false, 0, 0) + "\n" + ollamaLine("", true, 26, 298) + "\n"
	f.Add([]byte(stream), []byte{3, 40}, false, []byte(ollamaGoChat))
	f.Add([]byte(stream[:len(stream)-1]), []byte{0}, false, []byte(ollamaGoEmbed))
	f.Add([]byte(strings.ReplaceAll(stream, "\n", "\r\n")), []byte{7}, false, []byte(ollamaJSChat))
	f.Add([]byte(`{"error":"boom"}`+"\n"), []byte{1}, false, []byte(`{"options":{"num_predict":-2}}`))
	f.Add([]byte(ollamaLine("x", true, 8, 9)), []byte{2, 200}, true, []byte(ollamaGoGenerate))
	f.Fuzz(func(t *testing.T, answer, sizes []byte, whole bool, body []byte) {
		var info requestInfo
		if err := parseRequest(dOllama, "/api/chat", body, &info); err == nil && (info.MaxOutput < 0 || info.TextTokens < 0) {
			t.Fatalf("accepted %q with %+v", body, info)
		}
		ct := "application/x-ndjson"
		if whole {
			ct = "application/json"
		}
		rw := &recordingWriter{h: http.Header{"Content-Type": {ct}}}
		uw := usageWriter{ResponseWriter: rw, h: fuzzHandler, d: dOllama}
		uw.WriteHeader(200)
		for i, p := 0, answer; len(p) > 0; i++ {
			n := len(p)
			if len(sizes) > 0 {
				n = min(n, 1+int(sizes[i%len(sizes)]))
			}
			if w, err := uw.Write(p[:n]); w != n || err != nil {
				t.Fatalf("Write of %d bytes gave %d, %v", n, w, err)
			}
			p = p[n:]
			if len(uw.tail) > usageTailSize {
				t.Fatalf("tail of %d bytes", len(uw.tail))
			}
		}
		if u, ok := uw.usage(); u.Input < 0 || u.Output < 0 || (!ok && u != usage{}) {
			t.Fatalf("usage %+v, %v", u, ok)
		}
		if !bytes.Equal(rw.out.Bytes(), answer) {
			t.Fatalf("pass-through changed the answer:\n in %q\nout %q", answer, rw.out.Bytes())
		}
		uw.release()
	})
}

// The documented Caddyfiles that proxy to an Ollama server are sent a
// chat request as the Go client writes it (docs_recipes_test.go).
func init() {
	docProviders = append(docProviders, docProvider{name: "ollama", host: regexp.MustCompile(`http://[a-z0-9.-]+:11434`),
		path: "/api/chat", header: "Authorization", value: "Bearer " + docClient, body: ollamaGoChatOnce,
		answer: `"done":true`, reply: ollamaUpstream(12, 3)})
}
