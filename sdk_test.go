package llmratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/anthropics/anthropic-sdk-go"
	aoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/anthropics/anthropic-sdk-go/shared"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The official OpenAI and Anthropic Go SDKs, pointed at the in-process
// gateway, in front of a real upstream speaking each provider's format.

// gatewayRequests counts the requests the gateway decided in a zone.
func gatewayRequests(t *testing.T, zone string) float64 {
	t.Helper()
	z := zoneOf(t, zone)
	n := 0.0
	for _, c := range z.m.outcomes {
		n += testutil.ToFloat64(c)
	}
	return n
}

func openaiClient(key string) openai.Client {
	return openai.NewClient(option.WithBaseURL("http://"+gateway+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(2))
}

func anthropicClient(key string) anthropic.Client {
	return anthropic.NewClient(aoption.WithBaseURL("http://"+gateway+"/"), aoption.WithAPIKey(key), aoption.WithMaxRetries(2))
}

// providerUpstream answers like both providers, streamed or not.
func providerUpstream(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	stream := strings.Contains(string(body), `"stream":true`)
	switch {
	case strings.HasSuffix(r.URL.Path, "/messages") && stream:
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n"+
			"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"+
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \"}}\n\n"+
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"from the stream.\"}}\n\n"+
			"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"+
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":6}}\n\n"+
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	case strings.HasSuffix(r.URL.Path, "/messages"):
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello from Anthropic's shape."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":6}}`)
	case stream:
		w.Header().Set("Content-Type", "text/event-stream")
		for _, part := range []string{"Hello ", "from ", "the stream."} {
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":null}]}\n\n", part)
		}
		if strings.Contains(string(body), `"include_usage":true`) {
			fmt.Fprint(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n")
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	default:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from OpenAI's shape."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}`)
	}
}

func TestOfficialSDKsWorkThroughTheGateway(t *testing.T) {
	mustLoad(t, "zone sdk_ok\nrpm 1000")
	setUpstream(t, providerUpstream)
	ctx := context.Background()

	oc := openaiClient("sk-sdk-ok")
	params := openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")}, MaxCompletionTokens: openai.Int(50)}
	cc, err := oc.Chat.Completions.New(ctx, params)
	if err != nil || cc.Choices[0].Message.Content != "Hello from OpenAI's shape." {
		t.Fatalf("openai chat: %v %+v", err, cc)
	}
	stream := oc.Chat.Completions.NewStreaming(ctx, params)
	var text strings.Builder
	for stream.Next() {
		if c := stream.Current(); len(c.Choices) > 0 {
			text.WriteString(c.Choices[0].Delta.Content)
		}
	}
	if stream.Err() != nil || text.String() != "Hello from the stream." {
		t.Fatalf("openai stream: %v %q", stream.Err(), text.String())
	}

	ac := anthropicClient("sk-sdk-ok")
	mp := anthropic.MessageNewParams{Model: "claude-sonnet-4-5", MaxTokens: 50, Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello"))}}
	msg, err := ac.Messages.New(ctx, mp)
	if err != nil || msg.Content[0].Text != "Hello from Anthropic's shape." {
		t.Fatalf("anthropic message: %v %+v", err, msg)
	}
	as := ac.Messages.NewStreaming(ctx, mp)
	text.Reset()
	for as.Next() {
		if ev := as.Current(); ev.Type == "content_block_delta" {
			text.WriteString(ev.Delta.Text)
		}
	}
	if as.Err() != nil || text.String() != "Hello from the stream." {
		t.Fatalf("anthropic stream: %v %q", as.Err(), text.String())
	}
}

func TestSDKsSeeTypedErrorsAndRetryAsTheGatewaySays(t *testing.T) {
	setUpstream(t, providerUpstream)
	ctx := context.Background()
	chat := openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")}, MaxCompletionTokens: openai.Int(50)}
	msgs := anthropic.MessageNewParams{Model: "claude-sonnet-4-5", MaxTokens: 50, Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello"))}}

	t.Run("429 with x-should-retry true: the SDK retries twice, then a typed error", func(t *testing.T) {
		// One request holds the key's only concurrency slot, so the SDK's
		// calls get the concurrency 429: retry-after-ms 1000, should retry.
		mustLoad(t, "zone sdk_429\nconcurrent 1")
		held, release := make(chan struct{}), make(chan struct{})
		setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Hold") != "" {
				close(held)
				<-release
			}
			providerUpstream(w, r)
		})
		done := make(chan struct{})
		go func() {
			defer close(done)
			req := newReq(t, "/v1/chat/completions", "sk-sdk-429", chatBody)
			req.Header.Set("X-Hold", "1")
			sendReq(t, req)
		}()
		<-held
		defer func() { close(release); <-done }()
		oc := openaiClient("sk-sdk-429")
		before := gatewayRequests(t, "sdk_429")
		_, err := oc.Chat.Completions.New(ctx, chat)
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.StatusCode != 429 || oe.Code != "rate_limit_exceeded" {
			t.Fatalf("openai error %T %v", err, err)
		}
		if got := gatewayRequests(t, "sdk_429") - before; got != 3 {
			t.Errorf("the gateway saw %v attempts, want 3 (1 + the SDK's 2 retries)", got)
		}
		ac := anthropicClient("sk-sdk-429")
		before = gatewayRequests(t, "sdk_429")
		_, err = ac.Messages.New(ctx, msgs)
		var ae *anthropic.Error
		if !errors.As(err, &ae) || ae.StatusCode != 429 || ae.Type() != shared.ErrorTypeRateLimitError {
			t.Fatalf("anthropic error %T %v", err, err)
		}
		if got := gatewayRequests(t, "sdk_429") - before; got != 3 {
			t.Errorf("the gateway saw %v attempts, want 3", got)
		}
	})

	t.Run("x-should-retry false: exactly one request", func(t *testing.T) {
		mustLoad(t, "zone sdk_never\ntpm 10")
		oc := openaiClient("sk-sdk-never")
		before := gatewayRequests(t, "sdk_never")
		_, err := oc.Chat.Completions.New(ctx, chat)
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.StatusCode != 429 {
			t.Fatalf("openai error %T %v", err, err)
		}
		if got := gatewayRequests(t, "sdk_never") - before; got != 1 {
			t.Errorf("the gateway saw %v requests, want 1", got)
		}
		ac := anthropicClient("sk-sdk-never")
		before = gatewayRequests(t, "sdk_never")
		if _, err := ac.Messages.New(ctx, msgs); err == nil {
			t.Fatal("anthropic: no error")
		}
		if got := gatewayRequests(t, "sdk_never") - before; got != 1 {
			t.Errorf("anthropic: the gateway saw %v requests, want 1", got)
		}
	})

	t.Run("401 is the SDKs' authentication error", func(t *testing.T) {
		mustLoad(t, "zone sdk_401\nrequire_known_keys\napi_key sk-sdk-known t\ntier t {\n\trpm 5\n}")
		stranger := openaiClient("sk-sdk-stranger")
		_, err := stranger.Chat.Completions.New(ctx, chat)
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.StatusCode != 401 || oe.Code != "invalid_api_key" {
			t.Fatalf("openai error %T %v", err, err)
		}
		astranger := anthropicClient("sk-sdk-stranger")
		_, err = astranger.Messages.New(ctx, msgs)
		var ae *anthropic.Error
		if !errors.As(err, &ae) || ae.StatusCode != 401 || ae.Type() != shared.ErrorTypeAuthenticationError {
			t.Fatalf("anthropic error %T %v", err, err)
		}
	})

	t.Run("an upstream 429 absorbed by the gateway: one request, one success", func(t *testing.T) {
		mustLoad(t, "zone sdk_absorb\nrpm 100")
		var calls atomic.Int32
		setUpstream(t, after429(&calls, providerUpstream))
		before := gatewayRequests(t, "sdk_absorb")
		oc := openaiClient("sk-sdk-absorb")
		if _, err := oc.Chat.Completions.New(ctx, chat); err != nil {
			t.Fatal(err)
		}
		if got := gatewayRequests(t, "sdk_absorb") - before; got != 1 || calls.Load() != 2 {
			t.Errorf("gateway requests %v (want 1), upstream calls %d (want 2)", got, calls.Load())
		}
	})
}
