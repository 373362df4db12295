package llmratelimit

import (
	"math"
	"net/http"
	"strconv"
	"time"
)

// This file holds what the handler tells clients about retrying. The
// upstream retry loop (jittered backoff on upstream 429s inside the proxy
// chain) builds on it.

// setRetryAdvice writes the retry headers of a 429: Retry-After in whole
// seconds rounded up, retry-after-ms, and x-should-retry. A request that
// can never fit gets x-should-retry: false and no Retry-After, so that SDKs
// do not retry it.
func setRetryAdvice(hdr http.Header, wait time.Duration, never bool) {
	if never {
		hdr.Del("Retry-After")
		hdr.Del("retry-after-ms")
		hdr.Set("x-should-retry", "false")
		return
	}
	ms := max(int64(math.Ceil(float64(wait)/float64(time.Millisecond))), 1)
	hdr.Set("Retry-After", strconv.FormatInt((ms+999)/1000, 10))
	hdr.Set("retry-after-ms", strconv.FormatInt(ms, 10))
	hdr.Set("x-should-retry", "true")
}
