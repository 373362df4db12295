package llmratelimit

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// chatStream is an OpenAI chat stream of 5 content chunks. After each one
// it waits until the test says the client has read it, and records it if
// it had to stop waiting.
type chatStream struct {
	read    chan struct{}
	stalled atomic.Bool
	body    atomic.Value // the request body the upstream saw
}

func (cs *chatStream) serve(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	cs.body.Store(string(b))
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	for i := 0; i < 5; i++ {
		fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d\"}}],\"usage\":null}\n\n", i)
		_ = rc.Flush()
		select {
		case <-cs.read:
		case <-time.After(10 * time.Second): // only if the gateway held the event back
			cs.stalled.Store(true)
		}
	}
	if strings.Contains(string(b), `"include_usage":true`) {
		fmt.Fprint(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":5,\"total_tokens\":25}}\n\n")
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

func TestStreamsEachEventAsItArrivesAndSettlesFromTheFinalChunk(t *testing.T) {
	for _, tc := range []struct {
		name         string
		streamOpts   string
		clientSees   bool // the usage chunk
		wantInjected bool
	}{
		{"client did not ask for usage", ``, false, true},
		{"client asked for usage", `,"stream_options":{"include_usage":true}`, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustLoad(t, "zone sse_"+strconv.FormatBool(tc.clientSees)+"\ntpm 100000")
			cs := &chatStream{read: make(chan struct{})}
			setUpstream(t, cs.serve)
			body := `{"model":"gpt-4o","stream":true` + tc.streamOpts + `,"messages":[{"role":"user","content":"Count to five."}],"max_tokens":1000}`
			resp, err := client.Do(newReq(t, "/v1/chat/completions", "sk-sse", body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			var rest strings.Builder
			for i := 0; i < 5; {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("reading event %d: %v", i, err)
				}
				if strings.Contains(line, fmt.Sprintf(`"content":"tok%d"`, i)) {
					cs.read <- struct{}{} // the upstream may send the next one
					i++
				}
			}
			b, _ := io.ReadAll(br)
			rest.Write(b)
			if cs.stalled.Load() {
				t.Fatal("the gateway held an event back until the upstream sent more")
			}
			sent := cs.body.Load().(string)
			injected := sent != body && strings.Contains(sent, `"stream_options":{"include_usage":true}`)
			if injected != tc.wantInjected {
				t.Errorf("injected include_usage = %v, want %v: %s", injected, tc.wantInjected, cs.body.Load())
			}
			if got := strings.Contains(rest.String(), `"choices":[]`); got != tc.clientSees {
				t.Errorf("client saw the usage chunk = %v, want %v:\n%s", got, tc.clientSees, rest.String())
			}
			if !strings.HasSuffix(rest.String(), "data: [DONE]\n\n") {
				t.Errorf("stream does not end with [DONE]:\n%q", rest.String())
			}

			// Settled to 25 tokens before the handler returned: the next
			// request sees 100000 - 25 - its own reservation (~1010).
			setUpstream(t, noUsage)
			r := send(t, "/v1/chat/completions", "sk-sse", `{"messages":[{"role":"user","content":"Count to five."}],"max_tokens":1000}`)
			rem := intHeader(t, r, "x-ratelimit-remaining-tokens")
			if rem < 100000-25-1020 || rem > 100000-25-1000 {
				t.Errorf("remaining tokens %d, want ≈ %d", rem, 100000-25-1010)
			}
		})
	}
}

const anthropicStart = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":100,\"cache_creation_input_tokens\":50,\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}\n\n" +
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \\\"usage\\\":{\\\"output_tokens\\\":9999}\"}}\n\n"

const anthropicEnd = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":30}}\n\n" +
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":40}}\n\n" +
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"

func TestAnthropicStreamSettlesInputWithCacheWritesAndCumulativeOutput(t *testing.T) {
	body := `{"model":"claude-sonnet-4-5","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"Hi"}]}`
	for _, tc := range []struct {
		name, limit string
		stream      string
		// remaining on the next request, before its own reservation
		spent int
	}{
		// ITPM counts input_tokens + cache_creation_input_tokens, not reads.
		{"itpm", "itpm 10000", anthropicStart + anthropicEnd, 150},
		// OTPM counts the last message_delta's cumulative output_tokens.
		{"otpm", "otpm 10000", anthropicStart + anthropicEnd, 40},
		// A stream that ends without its message_delta keeps the whole
		// output reservation.
		{"cut", "otpm 10000", anthropicStart, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustLoad(t, "zone anth_sse_"+tc.name+"\n"+tc.limit)
			setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprint(w, tc.stream)
			})
			r := send(t, "/v1/messages", "sk-anth", body)
			if r.status != 200 || r.body != tc.stream {
				t.Fatalf("stream changed on its way: %d\n%q", r.status, r.body)
			}
			setUpstream(t, noUsage)
			r = send(t, "/v1/messages", "sk-anth", body)
			kind := map[string]string{"itpm": "input-tokens", "otpm": "output-tokens", "cut": "output-tokens"}[tc.name]
			rem := intHeader(t, r, "anthropic-ratelimit-"+kind+"-remaining") // Anthropic's own family
			own := 1000                                                      // the next request's output reservation
			if tc.name == "itpm" {
				own = 4 // its input: "Hi" + 3 for the message
			}
			if want := 10000 - tc.spent - own; rem < want-3 || rem > want+3 {
				t.Errorf("remaining %d, want ≈ %d", rem, want)
			}
		})
	}
}

// TestBurstAgainstARealRateLimitedUpstreamEndsWithoutA429 puts the gateway
// in front of a Caddy site that mholt/caddy-ratelimit limits to 3 requests a
// second, which answers genuine 429s with Retry-After. It runs on the real
// clock: the upstream's window is real time.
func TestBurstAgainstARealRateLimitedUpstreamEndsWithoutA429(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	const provider = "127.0.0.1:29478"
	cfg := siteConfig("zone burst\nrpm 1000\nretry {\n\tmax_total 60s\n}")
	cfg = strings.Replace(cfg, "reverse_proxy "+upstream.Listener.Addr().String(), "reverse_proxy "+provider, 1)
	cfg += `
http://` + provider + ` {
	rate_limit {
		zone provider {
			key static
			events 3
			window 1s
		}
	}
	header Content-Type application/json
	respond ` + "`" + `{"id":"chatcmpl-1","object":"chat.completion","usage":{"prompt_tokens":9,"completion_tokens":3}}` + "`" + ` 200
}
`
	if err := load(t, cfg); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	statuses := make(chan int, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses <- send(t, "/v1/chat/completions", "sk-burst", chatBody).status
		}()
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("a client got %d", s)
		}
	}
}
