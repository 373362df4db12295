package llmratelimit

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestRawKeysNeverLeaveTheHandler runs a full scenario — admitted,
// rejected, unknown and retried requests, a stream, the stats endpoint,
// metrics — and greps everything it produced for the raw keys: every log
// line, metric, admin response, response header and error body.
func TestRawKeysNeverLeaveTheHandler(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	keys := []string{"sk-leak-gold-3f9a7c", "sk-leak-free-81b2d4", "sk-leak-unknown-c0ffee"}
	cfg := siteConfigWith(fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}", logFile), `zone leaks
require_known_keys
api_key sk-leak-gold-3f9a7c gold
api_key sk-leak-free-81b2d4 free
tier gold {
	rpm 100
}
tier free {
	rpm 1
	tpm 10
}
max_wait 1s`)
	if err := load(t, cfg); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	setUpstream(t, after429(&calls, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "event-stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n")
			return
		}
		chatCompletion(w, r, 5, 5)
	}))
	var produced strings.Builder
	record := func(r reply) {
		fmt.Fprintf(&produced, "%d %v %s\n", r.status, r.header, r.body)
	}
	record(send(t, "/v1/chat/completions", keys[0], chatBody)) // retried, then 200
	record(send(t, "/v1/chat/completions", keys[1], chatBody)) // over the free tier's tpm: 429 never fits
	record(send(t, "/v1/chat/completions", keys[1], `{"messages":[],"max_tokens":1}`))
	record(send(t, "/v1/chat/completions", keys[1], `{"messages":[],"max_tokens":1}`)) // rpm 1: 429
	record(send(t, "/v1/chat/completions", keys[2], chatBody))                         // unknown: 401
	record(send(t, "/v1/messages", keys[2], messagesBody))                             // unknown, Anthropic shape
	record(send(t, "/v1/chat/completions", keys[0], `{"messages":`))                   // invalid: 400
	req := newReq(t, "/v1/chat/completions", "", strings.Replace(chatBody, `"max_tokens"`, `"stream":true,"max_tokens"`, 1))
	req.Header.Set("x-api-key", keys[0])
	req.Header.Set("Accept", "text/event-stream")
	record(sendReq(t, req))
	// Gemini: the key in x-goog-api-key, and unknown in the query string.
	gem := newReq(t, geminiModelPath+":generateContent", "", `{"contents":[{"parts":[{"text":"hi"}]}]}`)
	gem.Header.Set("x-goog-api-key", keys[0])
	record(sendReq(t, gem))
	record(sendReq(t, newReq(t, geminiModelPath+":generateContent?key="+keys[2], "", `{"contents":[]}`))) // unknown: 401
	for _, path := range []string{"/llm_ratelimit/stats", "/llm_ratelimit/stats/leaks/" + hashKey(keys[0]).id(), "/metrics", "/config/"} {
		resp, err := client.Get("http://" + testAdmin + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path != "/config/" {
			produced.Write(b)
		}
	}
	mustLoad(t, "zone leaks_after") // closes the log file
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	// Every line of the handler's own logger. (Caddy's reverse_proxy, at
	// DEBUG, logs the upstream request's headers, x-api-key included: see
	// docs/operating.md "Guarantees" for the log filter that removes it.)
	for _, line := range strings.Split(string(logs), "\n") {
		if strings.Contains(line, `"logger":"http.handlers.llm_ratelimit"`) {
			produced.WriteString(line + "\n")
		}
	}
	out := produced.String()
	for _, k := range keys {
		if strings.Contains(out, k) {
			i := strings.Index(out, k)
			t.Errorf("raw key %q leaked: …%s…", k, out[max(0, i-200):min(len(out), i+50)])
		}
	}
	for _, want := range []string{hashKey(keys[0]).id(), hashKey(keys[2]).id(), `"outcome":"rejected"`, "retrying upstream", `"status":"UNAUTHENTICATED"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the scenario did not produce %q: the test would prove nothing", want)
		}
	}
}
