package llmratelimit

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxHint is the longest upstream hint believed; a larger value is garbage
// and the loop falls back to its own backoff.
const maxHint = 24 * time.Hour

// resetHints pairs each provider reset header with the remaining header of
// the same limit: a reset counts only for a limit that is used up (or whose
// remaining figure the upstream did not send).
var resetHints = [...]struct{ reset, remaining string }{
	{"x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"},
	{"x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"},
	{"anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-remaining"},
	{"anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-remaining"},
	{"anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-input-tokens-remaining"},
	{"anthropic-ratelimit-output-tokens-reset", "anthropic-ratelimit-output-tokens-remaining"},
}

// retryHint reads the upstream's hint of how long to wait, in this order:
// retry-after-ms; retry-after (seconds or an HTTP-date); the longest of the
// x-ratelimit-reset-* (Go durations, as OpenAI sends them) and
// anthropic-ratelimit-*-reset (RFC 3339) headers of exhausted limits; a
// Gemini-style body's error.details[].retryDelay. Garbage (negative, huge,
// unparsable) is ignored.
func retryHint(h http.Header, body []byte, now time.Time) (time.Duration, bool) {
	if v := h.Get("retry-after-ms"); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil {
			if d, ok := saneSeconds(ms / 1000); ok {
				return d, true
			}
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		if d, ok := parseRetryAfter(v, now); ok {
			return d, true
		}
	}
	var best time.Duration
	found := false
	for _, rh := range resetHints {
		v := h.Get(rh.reset)
		if v == "" {
			continue
		}
		if rem := h.Get(rh.remaining); rem != "" && rem != "0" {
			continue
		}
		d, ok := parseReset(v, now)
		if ok && (!found || d > best) {
			best, found = d, true
		}
	}
	if found {
		return best, true
	}
	return retryDelayInBody(body)
}

// sane keeps a hint within 0..maxHint.
func sane(d time.Duration) (time.Duration, bool) {
	if d < 0 || d > maxHint {
		return 0, false
	}
	return d, true
}

// saneSeconds converts a number of seconds to a hint, range-checked before
// the conversion (NaN and out-of-range floats do not convert portably).
func saneSeconds(secs float64) (time.Duration, bool) {
	if !(secs >= 0 && secs <= maxHint.Seconds()) {
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

// parseRetryAfter reads Retry-After: delay-seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		return saneSeconds(secs)
	}
	if t, err := http.ParseTime(v); err == nil {
		return sane(max(t.Sub(now), 0))
	}
	return 0, false
}

// parseReset reads a reset header: a Go duration ("6m0s", "18.642s",
// "12ms") or an RFC 3339 time.
func parseReset(v string, now time.Time) (time.Duration, bool) {
	if d, err := time.ParseDuration(v); err == nil {
		return sane(d)
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return sane(max(t.Sub(now), 0))
	}
	return 0, false
}

// retryDelayInBody finds a Gemini-style "retryDelay": "30s" in an error
// body.
func retryDelayInBody(body []byte) (time.Duration, bool) {
	i := bytes.Index(body, []byte(`"retryDelay"`))
	if i < 0 {
		return 0, false
	}
	rest := body[i+len(`"retryDelay"`):]
	j := skipSpace(rest, 0)
	if j >= len(rest) || rest[j] != ':' {
		return 0, false
	}
	j = skipSpace(rest, j+1)
	if j >= len(rest) || rest[j] != '"' {
		return 0, false
	}
	end := bytes.IndexByte(rest[j+1:], '"')
	if end < 0 || end > 32 {
		return 0, false
	}
	d, err := time.ParseDuration(string(rest[j+1 : j+1+end]))
	if err != nil {
		return 0, false
	}
	return sane(d)
}

// retryableBody is false for the 429s that no wait will cure: OpenAI's
// insufficient_quota, Anthropic's enforced_spend_limit_reached, and any
// "Request too large".
func retryableBody(body []byte) bool {
	if bytes.Contains(body, []byte("insufficient_quota")) || bytes.Contains(body, []byte("enforced_spend_limit_reached")) {
		return false
	}
	return !strings.Contains(strings.ToLower(string(body)), "request too large")
}
