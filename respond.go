package llmratelimit

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// errKind is a response the handler makes itself (SPEC "Responses the
// handler makes itself").
type errKind uint8

const (
	errUnauthorized errKind = iota
	errInvalid
	errTooLarge
	errContextLength
)

var errKinds = [...]struct {
	status        int
	openaiType    string
	openaiCode    string
	anthropicType string
}{
	errUnauthorized:  {http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "authentication_error"},
	errInvalid:       {http.StatusBadRequest, "invalid_request_error", "invalid_json", "invalid_request_error"},
	errTooLarge:      {http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", "request_too_large"},
	errContextLength: {http.StatusBadRequest, "invalid_request_error", "context_length_exceeded", "invalid_request_error"},
}

// replyFormat is the shape of the handler's own error bodies: the request's
// format, OpenAI's for paths the handler does not parse.
func replyFormat(f format) format {
	if f == formatNone {
		return formatOpenAI
	}
	return f
}

// replyError writes one of the handler's own 4xx responses.
func (h *Handler) replyError(w http.ResponseWriter, f format, k errKind, msg string) error {
	e := errKinds[k]
	var body []byte
	if f == formatAnthropic {
		body = appendAnthropicError(nil, e.anthropicType, msg)
	} else {
		body = appendOpenAIError(nil, e.openaiType, e.openaiCode, msg)
	}
	w.Header().Set("x-should-retry", "false")
	return writeJSON(w, e.status, body)
}

func writeJSON(w http.ResponseWriter, status int, body []byte) error {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// Names of the limits in messages and in the OpenAI error type.
var dimensionNames = [...]struct{ long, openaiType string }{
	dimRequests:    {"requests per min (RPM)", "requests"},
	dimTokens:      {"tokens per min (TPM)", "tokens"},
	dimInput:       {"input tokens per min (ITPM)", "input_tokens"},
	dimOutput:      {"output tokens per min (OTPM)", "output_tokens"},
	dimConcurrency: {"concurrent requests", "concurrency"},
	dimKeys:        {"active API keys", "requests"},
}

// rejectMessage names the limit, the figure, what was used and requested,
// and the wait.
func rejectMessage(dec decision, m *Model) string {
	v := dec.verdict
	u := v.blocking
	name := dimensionNames[u.dim].long
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

// humanWait formats a wait as OpenAI's messages do: "0.9s", "20ms", "1m3s".
func humanWait(d time.Duration) string {
	if d < 100*time.Millisecond {
		return strconv.FormatInt(int64(math.Ceil(float64(d)/float64(time.Millisecond))), 10) + "ms"
	}
	if d < time.Minute {
		return strconv.FormatFloat(math.Ceil(d.Seconds()*10)/10, 'f', -1, 64) + "s"
	}
	return d.Round(time.Second).String()
}

// reply429 writes the handler's own 429: the error body, Retry-After (whole
// seconds, rounded up) and retry-after-ms, x-should-retry and the
// x-ratelimit-* headers. A request that can never fit gets
// x-should-retry: false and no Retry-After.
func (h *Handler) reply429(w http.ResponseWriter, f format, dec decision, msg string) error {
	hdr := w.Header()
	if h.headersOn {
		setQuotaHeaders(hdr, dec.req, dec.tok)
	}
	setRetryAdvice(hdr, dec.wait, dec.never)
	var body []byte
	if f == formatAnthropic {
		body = appendAnthropicError(nil, "rate_limit_error", msg)
	} else {
		body = appendOpenAIError(nil, dimensionNames[dec.blocking.dim].openaiType, "rate_limit_exceeded", msg)
	}
	return writeJSON(w, http.StatusTooManyRequests, body)
}

// The x-ratelimit-* header names, in canonical form so that they are set
// without canonicalising (and allocating) on every response.
var quotaHeaderNames = [2][3]string{
	{"X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests"},
	{"X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"},
}

// setQuotaHeaders writes the x-ratelimit-* headers, replacing any of the
// same name. A kind with no bucket gets none. All six values share one
// string and one slice: two allocations per response.
func setQuotaHeaders(hdr http.Header, req, tok quota) {
	if !req.set && !tok.set {
		return
	}
	var buf [192]byte
	var ends [6]int
	b := buf[:0]
	for i, q := range [2]quota{req, tok} {
		if !q.set {
			ends[3*i], ends[3*i+1], ends[3*i+2] = len(b), len(b), len(b)
			continue
		}
		b = strconv.AppendInt(b, q.limit, 10)
		ends[3*i] = len(b)
		b = strconv.AppendInt(b, q.remaining, 10)
		ends[3*i+1] = len(b)
		b = appendReset(b, q.reset)
		ends[3*i+2] = len(b)
	}
	all := string(b)
	vals := make([]string, 6)
	start := 0
	for i, q := range [2]quota{req, tok} {
		for j := 0; j < 3; j++ {
			end := ends[3*i+j]
			if q.set {
				vals[3*i+j] = all[start:end]
				hdr[quotaHeaderNames[i][j]] = vals[3*i+j : 3*i+j+1 : 3*i+j+1]
			}
			start = end
		}
	}
}

// resetString is a Go duration rounded up to the millisecond, as OpenAI
// sends it ("1.2s", "6m0s", "12ms").
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
