package llmratelimit

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// reply writes one of the handler's own error answers in the shape of
// dialect d (the fallback's when d is nil) and counts its outcome ("" for
// none). A 429 or 503 carries its retry advice; every other error says
// x-should-retry: false.
func (h *Handler) reply(w http.ResponseWriter, d dialect, e *apiError, outcome string) error {
	if d == nil {
		d = dialectNamed(fallbackDialect)
	}
	if outcome != "" {
		h.zone.m.outcomes[outcome].Inc()
	}
	switch e.status() {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		setRetryAdvice(w.Header(), e.wait, e.never)
	default:
		w.Header().Set("x-should-retry", "false")
	}
	return writeJSON(w, e.status(), appendError(d, nil, e))
}

func writeJSON(w http.ResponseWriter, status int, body []byte) error {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// Names of the limits in messages.
var dimensionNames = [...]string{
	dimRequests:    "requests per min (RPM)",
	dimTokens:      "tokens per min (TPM)",
	dimInput:       "input tokens per min (ITPM)",
	dimOutput:      "output tokens per min (OTPM)",
	dimConcurrency: "concurrent requests",
	dimKeys:        "active API keys",
	dimCooldown:    "provider accounts",
}

// rejectMessage names the limit, the figure, what was used and requested,
// and the wait.
func rejectMessage(dec decision, m *Model) string {
	v := dec.verdict
	u := v.blocking
	name := dimensionNames[u.dim]
	switch {
	case u.scope == scopeModel && m != nil:
		name += " for model " + m.Name
	case u.scope == scopeUpstream:
		name = "the shared upstream quota's " + name
	}
	if dec.queueFull {
		return fmt.Sprintf("Rate limit reached on %s, and the wait queue is full. Please try again in %s.", name, humanWait(v.wait))
	}
	requested := int64(math.Ceil(u.need))
	if v.never {
		return fmt.Sprintf("request too large for %s: Limit %d, Requested %d. The request can never fit within this limit; reduce its input or max_tokens.",
			name, u.limit, requested)
	}
	if u.dim == dimCooldown {
		return fmt.Sprintf("Every provider account that serves this request is cooling down after the provider answered 429. Please try again in %s.", humanWait(v.wait))
	}
	if u.dim == dimKeys {
		return fmt.Sprintf("Too many active API keys in this gateway (limit %d): new keys are served again once idle ones are released. Please try again in %s.",
			u.limit, humanWait(v.wait))
	}
	if u.dim == dimConcurrency {
		return fmt.Sprintf("Rate limit reached on %s: Limit %d, In flight %d, Requested 1. Please try again in %s.",
			name, u.limit, u.limit, humanWait(v.wait))
	}
	return fmt.Sprintf("Rate limit reached on %s: Limit %d, Used %d, Requested %d. Please try again in %s.",
		name, u.limit, u.limit-v.available, requested, humanWait(v.wait))
}

// humanWait formats a wait as providers' rate-limit messages do: "0.9s",
// "20ms", "1m3s".
func humanWait(d time.Duration) string {
	if d < 100*time.Millisecond {
		return strconv.FormatInt(int64(math.Ceil(float64(d)/float64(time.Millisecond))), 10) + "ms"
	}
	if d < time.Minute {
		return strconv.FormatFloat(math.Ceil(d.Seconds()*10)/10, 'f', -1, 64) + "s"
	}
	return d.Round(time.Second).String()
}

// The x-ratelimit-* header names, in canonical form so that they are set
// without canonicalising (and allocating) on every response.
var quotaHeaderNames = [2][3]string{
	{"X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests"},
	{"X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"},
}

// setXQuotaHeaders writes the x-ratelimit-* headers, replacing any of the
// same name. A kind with no bucket gets none.
func setXQuotaHeaders(hdr http.Header, req, tok quota) {
	var hb headerBatch
	b := hb.arr[:0]
	for i, q := range [2]quota{req, tok} {
		if !q.set {
			continue
		}
		b = strconv.AppendInt(b, q.limit, 10)
		hb.end(quotaHeaderNames[i][0], b)
		b = strconv.AppendInt(b, q.remaining(), 10)
		hb.end(quotaHeaderNames[i][1], b)
		b = appendReset(b, q.reset())
		hb.end(quotaHeaderNames[i][2], b)
	}
	hb.set(hdr, b)
}

// headerBatch sets the values of up to maxBatch headers, appended one
// after the other to one buffer (its arr while it fits), with one string
// and one slice: two allocations in all. Names must be in canonical form:
// they are set as they are, replacing any value of the same name.
type headerBatch struct {
	arr   [512]byte
	names [maxBatch]string
	ends  [maxBatch]int
	n     int
}

const maxBatch = 12

// end closes the value that the buffer b now ends with, under name.
func (hb *headerBatch) end(name string, b []byte) {
	hb.names[hb.n], hb.ends[hb.n] = name, len(b)
	hb.n++
}

// set sets the values, from the buffer b.
func (hb *headerBatch) set(hdr http.Header, b []byte) {
	if hb.n == 0 {
		return
	}
	all := string(b)
	vals := make([]string, hb.n)
	from := 0
	for i := range hb.n {
		vals[i] = all[from:hb.ends[i]]
		hdr[hb.names[i]] = vals[i : i+1 : i+1]
		from = hb.ends[i]
	}
}

// setQuotaHeaders writes the rate-limit headers in the family of dialect
// d (nil: the fallback's).
func setQuotaHeaders(hdr http.Header, d dialect, qs quotaSet) {
	setQuotaHeadersAt(hdr, d, qs, now())
}

// setQuotaHeadersAt is setQuotaHeaders as of at.
func setQuotaHeadersAt(hdr http.Header, d dialect, qs quotaSet, at time.Time) {
	if d == nil {
		d = dialectNamed(fallbackDialect)
	}
	if w, ok := d.(quotaHeaderWriter); ok {
		w.setQuotaHeaders(hdr, qs, at)
		return
	}
	setXQuotaHeaders(hdr, qs.req, qs.tok) // the family most formats share
}

// resetString is a Go duration rounded up to the millisecond, as the
// x-ratelimit-reset-* headers carry it ("1.2s", "6m0s", "12ms").
func resetString(d time.Duration) string { return string(appendReset(nil, d)) }

// appendReset appends resetString(d) without allocating below a minute.
func appendReset(b []byte, d time.Duration) []byte {
	if d <= 0 {
		return append(b, "0s"...)
	}
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	switch {
	case ms < 1000:
		return append(strconv.AppendInt(b, ms, 10), "ms"...)
	case ms < 60000:
		b = strconv.AppendInt(b, ms/1000, 10)
		if frac := ms % 1000; frac != 0 {
			b = append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
			for b[len(b)-1] == '0' {
				b = b[:len(b)-1]
			}
		}
		return append(b, 's')
	}
	return append(b, (time.Duration(ms) * time.Millisecond).String()...)
}
