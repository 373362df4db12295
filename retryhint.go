package llmratelimit

import (
	"bytes"
	"net/http"
	"strconv"
	"time"
)

// maxHint is the longest upstream hint believed; a larger value is garbage
// and the loop falls back to its own backoff.
const maxHint = 24 * time.Hour

// retryHint reads the upstream's hint of how long to wait, in this order:
// retry-after-ms; retry-after (seconds or an HTTP-date); else the longest
// of the hints that the dialects read (their rate-limit reset headers of
// exhausted limits, a delay in the error body). Every dialect is asked: the
// upstream of a request the handler did not parse may speak any of them.
// Garbage (negative, huge, unparsable) is ignored.
func retryHint(h http.Header, body []byte, at time.Time) (time.Duration, bool) {
	if v := h.Get("retry-after-ms"); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil {
			if d, ok := saneSeconds(ms / 1000); ok {
				return d, true
			}
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		if d, ok := parseRetryAfter(v, at); ok {
			return d, true
		}
	}
	var best time.Duration
	found := false
	for _, d := range dialects {
		if w, ok := dialectRetryHint(d, h, body, at); ok && (!found || w > best) {
			best, found = w, true
		}
	}
	return best, found
}

// longestReset is the longest wait among the reset headers of limits that
// are used up (remaining 0, or not sent).
func longestReset(h http.Header, hints []rateHeader, at time.Time) (time.Duration, bool) {
	var best time.Duration
	found := false
	for _, rh := range hints {
		v := h.Get(rh.reset)
		if v == "" {
			continue
		}
		if rem := h.Get(rh.remaining); rem != "" && rem != "0" {
			continue
		}
		d, ok := parseReset(v, at)
		if ok && (!found || d > best) {
			best, found = d, true
		}
	}
	return best, found
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
func parseRetryAfter(v string, at time.Time) (time.Duration, bool) {
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		return saneSeconds(secs)
	}
	if t, err := http.ParseTime(v); err == nil {
		return sane(max(t.Sub(at), 0))
	}
	return 0, false
}

// parseReset reads a reset header: a Go duration ("6m0s", "18.642s",
// "12ms") or an RFC 3339 time.
func parseReset(v string, at time.Time) (time.Duration, bool) {
	if d, err := time.ParseDuration(v); err == nil {
		return sane(d)
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return sane(max(t.Sub(at), 0))
	}
	return 0, false
}

// retryableBody is false for the 429s that no wait will cure: a quota or
// spend limit that a dialect recognises, and any "Request too large".
func retryableBody(body []byte) bool {
	for _, d := range dialects {
		if isFatal429(d, body) {
			return false
		}
	}
	return !bytes.Contains(bytes.ToLower(body), []byte("request too large"))
}
