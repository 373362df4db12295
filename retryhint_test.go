package llmratelimit

import (
	"net/http"
	"testing"
	"time"
)

func TestRetryHintReadsEveryFormat(t *testing.T) {
	at := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		header map[string]string
		body   string
		want   time.Duration
		ok     bool
	}{
		{"retry-after-ms", map[string]string{"retry-after-ms": "1500"}, "", 1500 * time.Millisecond, true},
		{"retry-after-ms fractional", map[string]string{"retry-after-ms": "12.5"}, "", 12500 * time.Microsecond, true},
		{"retry-after seconds", map[string]string{"Retry-After": "20"}, "", 20 * time.Second, true},
		{"retry-after HTTP-date", map[string]string{"Retry-After": at.Add(90 * time.Second).Format(http.TimeFormat)}, "", 90 * time.Second, true},
		{"retry-after date in the past is now", map[string]string{"Retry-After": at.Add(-time.Hour).Format(http.TimeFormat)}, "", 0, true},
		{"retry-after-ms wins over retry-after", map[string]string{"retry-after-ms": "10", "Retry-After": "20"}, "", 10 * time.Millisecond, true},
		{"openai reset requests, exhausted", map[string]string{"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-remaining-requests": "0"}, "", 6 * time.Minute, true},
		{"openai reset tokens", map[string]string{"x-ratelimit-reset-tokens": "18.642s"}, "", 18642 * time.Millisecond, true},
		{"openai longest exhausted reset", map[string]string{"x-ratelimit-reset-requests": "12ms", "x-ratelimit-reset-tokens": "2s"}, "", 2 * time.Second, true},
		{"openai reset of a limit not used up is no hint", map[string]string{"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-requests": "12ms", "x-ratelimit-remaining-requests": "0"}, "", 12 * time.Millisecond, true},
		{"anthropic RFC 3339 reset", map[string]string{"anthropic-ratelimit-input-tokens-reset": at.Add(30 * time.Second).Format(time.RFC3339)}, "", 30 * time.Second, true},
		{"anthropic requests reset, exhausted", map[string]string{"anthropic-ratelimit-requests-reset": at.Add(5 * time.Second).Format(time.RFC3339), "anthropic-ratelimit-requests-remaining": "0"}, "", 5 * time.Second, true},
		{"anthropic output reset", map[string]string{"anthropic-ratelimit-output-tokens-reset": at.Add(7 * time.Second).Format(time.RFC3339)}, "", 7 * time.Second, true},
		{"gemini retryDelay", nil, `{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"31s"}]}}`, 31 * time.Second, true},
		{"gemini fractional retryDelay", nil, `{"error":{"details":[{"retryDelay": "0.5s"}]}}`, 500 * time.Millisecond, true},
		{"negative retry-after-ms is ignored", map[string]string{"retry-after-ms": "-5"}, "", 0, false},
		{"huge retry-after is ignored", map[string]string{"Retry-After": "99999999999"}, "", 0, false},
		{"non-numeric retry-after is ignored", map[string]string{"Retry-After": "soon"}, "", 0, false},
		{"garbage falls through to the next hint", map[string]string{"retry-after-ms": "NaN", "Retry-After": "3"}, "", 3 * time.Second, true},
		{"negative reset is ignored", map[string]string{"x-ratelimit-reset-tokens": "-3s"}, "", 0, false},
		{"bad RFC 3339 is ignored", map[string]string{"anthropic-ratelimit-tokens-reset": "tomorrow"}, "", 0, false},
		{"bad retryDelay is ignored", nil, `{"retryDelay":"forever"}`, 0, false},
		{"no hint", nil, `{"error":"busy"}`, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.header {
				h.Set(k, v)
			}
			got, ok := retryHint(h, []byte(tc.body), at)
			if ok != tc.ok || got != tc.want {
				t.Errorf("retryHint = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzRetryHint(f *testing.F) {
	for _, s := range []string{"1500", "20", "6m0s", "18.642s", "2026-11-27T03:00:30Z", "Fri, 27 Nov 2026 03:01:30 GMT", "-1", "NaN", "1e400", ""} {
		f.Add(s, `{"retryDelay":"`+s+`"}`)
	}
	at := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v, body string) {
		for _, name := range []string{"retry-after-ms", "Retry-After", "x-ratelimit-reset-tokens", "anthropic-ratelimit-tokens-reset"} {
			h := http.Header{}
			h.Set(name, v)
			d, ok := retryHint(h, []byte(body), at)
			if ok && (d < 0 || d > maxHint) {
				t.Fatalf("%s: %q gave %v", name, v, d)
			}
			if !ok && d != 0 {
				t.Fatalf("no hint but a wait of %v", d)
			}
		}
	})
}

func TestBackoffDoublesUpToMaxWithinTheJitter(t *testing.T) {
	p := (&RetryConfig{}).policy() // 1s base, 60s max, 0.2 jitter
	old := randFloat
	defer func() { randFloat = old }()
	for _, tc := range []struct {
		rand     float64
		factor   float64
		wantName string
	}{
		{0.5, 1.0, "middle"},
		{0, 0.8, "lowest"},
		{0.999999, 1.2, "highest"},
	} {
		randFloat = func() float64 { return tc.rand }
		for n, base := range []time.Duration{1, 2, 4, 8, 16, 32, 60, 60} {
			want := time.Duration(float64(base*time.Second) * tc.factor)
			got := p.backoff(n)
			if diff := got - want; diff < -time.Millisecond || diff > time.Millisecond {
				t.Errorf("%s: backoff(%d) = %v, want %v", tc.wantName, n, got, want)
			}
		}
		// A hinted wait is only ever stretched.
		if got := p.stretch(10 * time.Second); got < 10*time.Second || got > 12*time.Second {
			t.Errorf("%s: stretch(10s) = %v, want within [10s, 12s]", tc.wantName, got)
		}
	}
}
