package llmratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genai"
)

// Google's official Go SDK (google.golang.org/genai), pointed at the
// in-process gateway, in front of a real upstream that speaks Gemini's
// JSON, its alt=sse event stream and its streamed JSON array.

const geminiModelPath = "/v1beta/models/gemini-2.5-flash"

// geminiChunk is one GenerateContentResponse with cumulative usage.
func geminiChunk(text string, prompt, candidates, thoughts int64, finish bool) string {
	fin := ""
	if finish {
		fin = `,"finishReason":"STOP"`
	}
	return fmt.Sprintf(`{"candidates":[{"content":{"role":"model","parts":[{"text":%q}]}%s,"index":0}],`+
		`"usageMetadata":{"promptTokenCount":%d,"candidatesTokenCount":%d,"thoughtsTokenCount":%d,"totalTokenCount":%d},"modelVersion":"gemini-2.5-flash"}`,
		text, fin, prompt, candidates, thoughts, prompt+candidates+thoughts)
}

// geminiUpstream answers like the Gemini API: generateContent with one JSON
// answer; streamGenerateContent with alt=sse as events (CRLF, as Google
// sends them), without it as one streamed JSON array. The stream's usage is
// cumulative; its last figures are prompt, 2 candidates and thoughts.
func geminiUpstream(prompt, candidates, thoughts int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch {
		case strings.HasSuffix(r.URL.Path, ":generateContent"):
			w.Header().Set("Content-Type", "application/json; charset=UTF-8")
			fmt.Fprint(w, geminiChunk("Hello from Gemini's shape.", prompt, candidates, thoughts, true))
		case strings.HasSuffix(r.URL.Path, ":streamGenerateContent") && r.URL.Query().Get("alt") == "sse":
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: "+geminiChunk("Hello ", prompt, 1, 0, false)+"\r\n\r\n")
			http.NewResponseController(w).Flush()
			fmt.Fprint(w, "data: "+geminiChunk("from the stream.", prompt, candidates, thoughts, true)+"\r\n\r\n")
		case strings.HasSuffix(r.URL.Path, ":streamGenerateContent"):
			w.Header().Set("Content-Type", "application/json; charset=UTF-8")
			fmt.Fprint(w, "[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hello \"}]}}], \"usageMetadata\": {\"promptTokenCount\": "+
				strconv.FormatInt(prompt, 10)+", \"candidatesTokenCount\": 1}}\r\n")
			http.NewResponseController(w).Flush()
			fmt.Fprint(w, ",\r\n"+geminiChunk("from the array.", prompt, candidates, thoughts, true)+"]")
		default:
			http.NotFound(w, r)
		}
	}
}

func geminiClient(t *testing.T, key string) *genai.Client {
	t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{
		APIKey:      key,
		Backend:     genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: "http://" + gateway + "/", APIVersion: "v1beta"},
		HTTPClient:  client,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// geminiConfig turns off the SDK's automatic continuation, so that every
// call is exactly one request.
var geminiConfig = &genai.GenerateContentConfig{AutomaticContinuation: genai.Ptr(false), MaxOutputTokens: 64}

// keyTotals is what the zone's stats say a key has used so far.
func keyTotals(t *testing.T, zoneName, key string) KeyStats {
	t.Helper()
	st, ok := zoneOf(t, zoneName).keyStats(hashKey(key).id(), clk.Now().UnixNano())
	if !ok {
		t.Fatalf("zone %s has no state for the key", zoneName)
	}
	return st
}

func TestGeminiSDKCallsAndStreamsSettleTheirUsage(t *testing.T) {
	mustLoad(t, "zone gemini_sdk\nrpm 1000\ntpm 100000")
	setUpstream(t, geminiUpstream(11, 7, 5))
	ctx := context.Background()
	const key = "AIza-gemini-sdk"
	gc := geminiClient(t, key)

	resp, err := gc.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("Hello"), geminiConfig)
	if err != nil || resp.Text() != "Hello from Gemini's shape." {
		t.Fatalf("generateContent: %v %+v", err, resp)
	}
	if st := keyTotals(t, "gemini_sdk", key); st.RequestsTotal != 1 || st.InputTokensTotal != 11 || st.OutputTokensTotal != 12 {
		t.Fatalf("after the call: %+v, want 1 request, 11 in, 7+5 out", st)
	}

	var text strings.Builder
	for chunk, err := range gc.Models.GenerateContentStream(ctx, "gemini-2.5-flash", genai.Text("Hello"), geminiConfig) {
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		text.WriteString(chunk.Text())
	}
	if text.String() != "Hello from the stream." {
		t.Fatalf("stream text %q", text.String())
	}
	// The last event's cumulative usage counts: 11 in, 7 + 5 out.
	if st := keyTotals(t, "gemini_sdk", key); st.RequestsTotal != 2 || st.InputTokensTotal != 22 || st.OutputTokensTotal != 24 {
		t.Fatalf("after the SSE stream: %+v, want 2 requests, 22 in, 24 out", st)
	}

	// The streamed JSON array (no alt=sse), with the key in ?key=.
	req, err := http.NewRequest(http.MethodPost, "http://"+gateway+geminiModelPath+":streamGenerateContent?key="+key,
		strings.NewReader(`{"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "generationConfig": {"maxOutputTokens": 64}}`))
	if err != nil {
		t.Fatal(err)
	}
	r := sendReq(t, req)
	if r.status != 200 || !strings.HasSuffix(r.body, "]") || !strings.Contains(r.body, "from the array.") {
		t.Fatalf("array stream: %d %q", r.status, r.body)
	}
	if st := keyTotals(t, "gemini_sdk", key); st.RequestsTotal != 3 || st.InputTokensTotal != 33 || st.OutputTokensTotal != 36 {
		t.Fatalf("after the array stream: %+v, want 3 requests, 33 in, 36 out", st)
	}
	if r.header.Get("x-ratelimit-limit-requests") != "1000" {
		t.Errorf("x-ratelimit-* headers missing on a Gemini answer: %v", r.header)
	}
}

func TestGeminiSDKSeesRateLimitAsResourceExhaustedWithRetryInfo(t *testing.T) {
	mustLoad(t, "zone gemini_rpm\nrpm 2")
	setUpstream(t, geminiUpstream(3, 2, 0))
	ctx := context.Background()
	gc := geminiClient(t, "AIza-gemini-rpm")
	for i := 0; i < 2; i++ {
		if _, err := gc.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("Hi"), geminiConfig); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	_, err := gc.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("Hi"), geminiConfig)
	var ae genai.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("third call: want a genai.APIError, got %T %v", err, err)
	}
	if ae.Code != 429 || ae.Status != "RESOURCE_EXHAUSTED" || !strings.Contains(ae.Message, "requests per min (RPM)") {
		t.Fatalf("APIError = %+v", ae)
	}
	if len(ae.Details) != 1 || ae.Details[0]["@type"] != "type.googleapis.com/google.rpc.RetryInfo" {
		t.Fatalf("details = %v, want one RetryInfo", ae.Details)
	}
	delay, err := time.ParseDuration(fmt.Sprint(ae.Details[0]["retryDelay"]))
	if err != nil || delay < 29*time.Second || delay > 30*time.Second {
		t.Fatalf("retryDelay = %v (%v), want the 30s one request of rpm 2 takes to refill", ae.Details[0]["retryDelay"], err)
	}

	// The stream form is refused the same way, before any event.
	for _, err := range gc.Models.GenerateContentStream(ctx, "gemini-2.5-flash", genai.Text("Hi"), geminiConfig) {
		if !errors.As(err, &ae) || ae.Code != 429 || ae.Status != "RESOURCE_EXHAUSTED" {
			t.Fatalf("stream: want a 429 APIError first, got %v", err)
		}
		break
	}
}

func TestGeminiUpstreamRetryInfoIsHonoured(t *testing.T) {
	mustLoad(t, "zone gemini_retry\nrpm 100")
	var calls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
  "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}}`)
			return
		}
		geminiUpstream(4, 2, 0)(w, r)
	})
	clk.takeSleeps()
	resp, err := geminiClient(t, "AIza-gemini-retry").Models.GenerateContent(context.Background(), "gemini-2.5-flash", genai.Text("Hi"), geminiConfig)
	if err != nil || resp.Text() != "Hello from Gemini's shape." {
		t.Fatalf("call: %v", err)
	}
	if calls.Load() != 2 {
		t.Fatalf("upstream calls = %d, want 2", calls.Load())
	}
	var waited time.Duration
	for _, d := range clk.takeSleeps() {
		waited += d
	}
	// The hint, stretched upwards by at most the default jitter (0.2).
	if waited < 7*time.Second || waited > 8400*time.Millisecond {
		t.Fatalf("the gateway waited %v before the retry, want RetryInfo's 7s (+ up to 20%%)", waited)
	}
}

func TestGeminiContextWindowIsInvalidArgument(t *testing.T) {
	mustLoad(t, "zone gemini_ctx\nrpm 100\nmodel gemini-2.5-flash {\n\tcontext_window 1000\n}")
	setUpstream(t, geminiUpstream(3, 2, 0))
	cfg := &genai.GenerateContentConfig{AutomaticContinuation: genai.Ptr(false), MaxOutputTokens: 2000}
	_, err := geminiClient(t, "AIza-gemini-ctx").Models.GenerateContent(context.Background(), "gemini-2.5-flash", genai.Text("Hi"), cfg)
	var ae genai.APIError
	if !errors.As(err, &ae) || ae.Code != 400 || ae.Status != "INVALID_ARGUMENT" || !strings.Contains(ae.Message, "maximum context length is 1000 tokens") {
		t.Fatalf("want a 400 INVALID_ARGUMENT naming the window, got %v", err)
	}
	if len(ae.Details) != 0 {
		t.Errorf("a 400 carries no RetryInfo: %v", ae.Details)
	}
}

func TestGeminiKeyFromHeaderOrQueryAndErrorsInGoogleShape(t *testing.T) {
	mustLoad(t, "zone gemini_keys\nrpm 100\nrequire_known_keys\napi_key AIza-known gold\ntier gold {\n\trpm 100\n}")
	setUpstream(t, geminiUpstream(3, 2, 0))
	body := `{"contents":[{"parts":[{"text":"Hi"}]}]}`
	for _, c := range []struct {
		name       string
		path       string
		header     string
		status     int
		googleCode string
	}{
		{"x-goog-api-key", ":generateContent", "AIza-known", 200, ""},
		{"key in the query", ":generateContent?key=AIza-known", "", 200, ""},
		{"no key", ":generateContent", "", 401, "UNAUTHENTICATED"},
		{"unknown key", ":generateContent", "AIza-stranger", 401, "UNAUTHENTICATED"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, "http://"+gateway+geminiModelPath+c.path, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if c.header != "" {
				req.Header.Set("x-goog-api-key", c.header)
			}
			r := sendReq(t, req)
			if r.status != c.status {
				t.Fatalf("status %d %s, want %d", r.status, r.body, c.status)
			}
			if c.googleCode != "" {
				want := fmt.Sprintf(`"code":%d`, c.status)
				if !strings.Contains(r.body, want) || !strings.Contains(r.body, `"status":"`+c.googleCode+`"`) {
					t.Fatalf("body %s, want Google's shape with %s and %s", r.body, want, c.googleCode)
				}
			}
		})
	}
}
