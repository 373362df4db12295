package llmratelimit

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A client that goes away while its request waits (in the queue, or for an
// upstream retry) is logged as status 499, as reverse_proxy logs it, and
// its request holds nothing afterwards.
func TestClientThatWentAwayIsStatus499OnEveryWait(t *testing.T) {
	h := provisioned(t, &Handler{Zone: "client-gone", Limits: Limits{RPM: 1}, MaxWait: caddy.Duration(time.Hour)})
	upstream429 := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("retry-after-ms", "5000")
		w.WriteHeader(http.StatusTooManyRequests)
		_, err := io.WriteString(w, `{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}`)
		return err
	})
	serve := func(key string, ctx context.Context) (int, error) {
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(chatBody)).WithContext(ctx)
		r.Header.Set("Authorization", "Bearer "+key)
		w := httptest.NewRecorder()
		err := h.ServeHTTP(w, r, upstream429)
		return w.Code, err
	}
	is499 := func(t *testing.T, err error) {
		t.Helper()
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) || he.StatusCode != statusClientClosed || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want a HandlerError with status 499 wrapping context.Canceled", err)
		}
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()

	// Waiting for an upstream retry: the first answer is a 429 with a hint.
	_, err := serve("sk-gone-retry", gone)
	is499(t, err)

	// Waiting in the queue: the key's one request a minute is used.
	clk.Advance(time.Minute)
	if code, err := serve("sk-gone-queue", context.Background()); code != 429 || err != nil {
		// The upstream's 429 is handed through after the retries.
		t.Fatalf("first request: %d %v", code, err)
	}
	_, err = serve("sk-gone-queue", gone)
	is499(t, err)
	if n := h.zone.inflight(hashKey("sk-gone-queue")); n != 0 {
		t.Fatalf("%d requests still in flight after the client left", n)
	}
	if n := h.zone.queue.length(); n != 0 {
		t.Fatalf("%d waiters left in the queue", n)
	}
}
