package llmratelimit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// ServeHTTP follows SPEC's request flow: key → body → estimate → context
// check → admit → forward → settle → release.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	f := h.format
	if f == formatNone {
		f = formatForPath(r.URL.Path)
	}
	rf := replyFormat(f)
	if r.Method != http.MethodPost {
		f = formatNone // e.g. GET /v1/chat/completions lists stored completions: no body
	}

	// 1. Key.
	key := h.keyOf(r)
	m := h.zone.m
	if key == "" {
		drainBody(r)
		m.outcomes[outcomeUnauthorized].Inc()
		return h.replyError(w, rf, errUnauthorized, "Missing API key: send it as 'Authorization: Bearer <key>' or in the x-api-key header.")
	}
	kh := hashKey(key)
	tier, known := h.keys[kh]
	if !known && h.RequireKnownKeys {
		h.logger.Info("unknown api key", zap.String("key_id", kh.id()))
		drainBody(r)
		m.outcomes[outcomeUnauthorized].Inc()
		return h.replyError(w, rf, errUnauthorized, "Incorrect API key provided (key_id "+kh.id()+").")
	}

	// 2. Body, 3. estimate.
	info := requestInfo{N: 1}
	var body []byte
	strip := false // include_usage was injected: strip the extra chunk
	canRetry := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	if f != formatNone {
		if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
			drainBody(r)
			m.outcomes[outcomeInvalid].Inc()
			return h.replyError(w, rf, errInvalid, "Compressed request bodies (Content-Encoding: "+ce+") are not supported: send the JSON body uncompressed.")
		}
		var err error
		body, err = readBody(r, h.MaxBody)
		if err != nil {
			m.outcomes[outcomeInvalid].Inc()
			if errors.Is(err, errBodyTooLarge) {
				drainBody(r)
				return h.replyError(w, rf, errTooLarge, fmt.Sprintf("Request body exceeds the limit of %d bytes.", h.MaxBody))
			}
			return h.replyError(w, rf, errInvalid, "Could not read the request body: "+err.Error())
		}
		if err := parseRequest(f, body, &info); err != nil {
			m.outcomes[outcomeInvalid].Inc()
			return h.replyError(w, rf, errInvalid, "Invalid request body: "+err.Error())
		}
		if f == formatOpenAI && needsIncludeUsage(r.URL.Path, &info) {
			body, strip = injectIncludeUsage(body), true
		}
		restoreBody(r, body)
		canRetry = true
		// The usage in the response must be readable; an encode directive
		// in front of this handler re-compresses for the client.
		r.Header.Del("Accept-Encoding")
	}
	mb := h.modelFor(info.Model)
	d := h.demandFor(&info, mb, f, r.URL.Path)

	// 4. Context window.
	if mb != nil && mb.ContextWindow > 0 && d.in+d.out > float64(mb.ContextWindow) {
		m.outcomes[outcomeInvalid].Inc()
		return h.replyError(w, rf, errContextLength, fmt.Sprintf(
			"This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion). Please reduce the length of the messages or completion.",
			mb.ContextWindow, int64(d.in+d.out), int64(d.in), int64(d.out)))
	}

	// 5. Admission.
	q := ask{kh: kh, known: known, maxKeys: max(h.MaxKeys, 0), tier: tier, lim: h.limitsFor(tier), up: h.up, d: d}
	var t ticket
	var dec decision
	var waited time.Duration
	var err error
	if h.rs != nil {
		t, dec, waited, err = h.admitShared(r.Context(), q)
	} else {
		t, dec, waited, err = h.zone.admitOrWait(r.Context(), q, time.Duration(h.MaxWait), h.MaxQueue, h.DryRun)
	}
	if errors.Is(err, errStoreDown) {
		return h.replyStoreDown(w, rf)
	}
	if err != nil {
		return nil // the client went away while waiting; it took nothing
	}
	if !dec.ok {
		msg := rejectMessage(dec, d.model)
		fields := h.decisionFields(kh, tier, &info, d,
			zap.Duration("wait", dec.wait), zap.Bool("never_fits", dec.never), zap.String("reason", msg))
		if !h.DryRun {
			m.outcomes[outcomeRejected].Inc()
			h.logger.Info("rejected", append(fields, zap.String("outcome", outcomeRejected))...)
			return h.reply429(w, rf, dec, msg)
		}
		m.outcomes[outcomeDryRunRejected].Inc()
		h.logger.Info("would reject (dry_run)", append(fields, zap.String("outcome", outcomeDryRunRejected))...)
	} else {
		outcome := outcomeAllowed
		if waited > 0 {
			outcome = outcomeQueued
			m.queueWait.Observe(waited.Seconds())
		}
		m.outcomes[outcome].Inc()
		if ce := h.logger.Check(zap.DebugLevel, "allowed"); ce != nil {
			ce.Write(h.decisionFields(kh, tier, &info, d, zap.String("outcome", outcome), zap.Duration("queued", waited))...)
		}
	}
	m.estIn.Add(d.in)
	m.resOut.Add(d.out)

	// 6. Forward. 8. Settle. 9. Release, on every path: a panic such as
	// http.ErrAbortHandler keeps the reservation but frees the slot.
	uw := &usageWriter{ResponseWriter: w, h: h, f: f, req: dec.req, tok: dec.tok, strip: strip}
	settled := false
	settle := func() {
		if settled {
			return
		}
		settled = true
		switch u, ok := uw.usage(); {
		case uw.status < 200 || uw.status > 299:
			t.finish(now().UnixNano(), nil, true)
		case ok:
			m.settled(d.in, u)
			t.finish(now().UnixNano(), &u, false)
		default:
			t.finish(now().UnixNano(), nil, false)
		}
	}
	// A successful answer is settled as soon as its end is seen, before
	// its last bytes go out: a client that sends its next request the
	// moment it has read this one sees the settled buckets.
	uw.onEnd = settle
	defer func() {
		if !settled {
			settled = true
			t.finish(now().UnixNano(), nil, false)
		}
	}()
	err = h.forward(uw, r, next, body, canRetry, rf, func() { t.chargeRetry(now().UnixNano()) })
	if ferr := uw.flushHeld(); err == nil {
		err = ferr
	}
	settle()
	uw.release()
	return err
}

// decisionFields describe a decision for the log: key_id, never the key.
func (h *Handler) decisionFields(kh keyHash, tier string, info *requestInfo, d demand, extra ...zap.Field) []zap.Field {
	return append([]zap.Field{
		zap.String("zone", h.Zone), zap.String("key_id", kh.id()), zap.String("tier", tier),
		zap.String("model", info.Model), zap.Float64("input_estimate", d.in), zap.Float64("output_reserved", d.out),
	}, extra...)
}

// keyOf is the caller's key: the key template's value, or by default the
// bearer token, else x-api-key.
func (h *Handler) keyOf(r *http.Request) string {
	if h.Key == "" {
		return defaultKey(r)
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return ""
	}
	return strings.TrimSpace(repl.ReplaceAll(h.Key, ""))
}

// Image costs by formula, never by the size of their data.
const (
	openAIImageLowTokens = 85
	openAIImageTokens    = 765
	anthropicImageTokens = 1600
)

// demandFor turns what the estimator read into the tokens a request asks
// for: input (text, 3 per message, images, times token_ratio) and the output
// reservation.
func (h *Handler) demandFor(info *requestInfo, m *Model, f format, urlPath string) demand {
	imageCost := int64(openAIImageTokens)
	if f == formatAnthropic {
		imageCost = anthropicImageTokens
	}
	ratio := 1.0
	if m != nil {
		if m.ImageTokens > 0 {
			imageCost = m.ImageTokens
		}
		ratio = m.TokenRatio
	}
	raw := float64(info.TextTokens) + 3*float64(info.Messages) +
		openAIImageLowTokens*float64(info.ImagesLow) + float64(imageCost)*float64(info.Images)
	d := demand{in: math.Ceil(raw * ratio), model: m}
	if m != nil && !m.Limits.any() {
		d.model = nil // a model block without limits has no buckets
	}
	switch {
	case f == formatNone || strings.HasSuffix(strings.TrimSuffix(urlPath, "/"), "/v1/embeddings"):
		// Nothing is generated.
	case info.MaxOutput > 0:
		d.out = float64(info.MaxOutput) * float64(info.N)
	default:
		per := h.DefaultMaxOutput
		if m != nil && m.MaxOutput > 0 {
			per = m.MaxOutput
		}
		// Without an explicit max the model stops at its window: do not
		// reserve (or reject for) more than the window leaves.
		if m != nil && m.ContextWindow > 0 {
			per = min(per, max(m.ContextWindow-int64(d.in), 0))
		}
		d.out = float64(per) * float64(info.N)
	}
	return d
}

func (l Limits) any() bool { return l.RPM > 0 || l.TPM > 0 || l.ITPM > 0 || l.OTPM > 0 }

var errBodyTooLarge = errors.New("request body too large")

// readBody reads at most max bytes of the body: in one allocation when the
// length is known.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, errBodyTooLarge
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if cl := r.ContentLength; cl > 0 {
		buf := make([]byte, cl+1) // one more byte tells a body longer than declared
		n, err := io.ReadFull(r.Body, buf)
		switch {
		case err == io.ErrUnexpectedEOF || err == io.EOF:
			return buf[:n], nil // the whole body, as declared or shorter
		case err != nil:
			return nil, err
		}
		return nil, errors.New("request body longer than its Content-Length")
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, errBodyTooLarge
	}
	return buf.Bytes(), nil
}

// maxDrain bounds how much of a body the handler reads and throws away
// when it answers without using it (401, 413), so that the client, still
// sending, reads the answer instead of a reset connection. Past it the
// connection is closed.
const maxDrain = 64 << 20

func drainBody(r *http.Request) {
	if r.Body != nil {
		_, _ = io.CopyN(io.Discard, r.Body, maxDrain)
	}
}

// restoreBody gives the buffered body back for the next handler and for
// every re-send: Body, ContentLength and GetBody. Expect and chunked
// transfer encoding no longer apply.
func restoreBody(r *http.Request, body []byte) {
	rb := &replayBody{body: body}
	rb.Reset(body)
	r.Body = rb
	r.ContentLength = int64(len(body))
	r.GetBody = rb.fresh
	r.TransferEncoding = nil
	r.Header.Del("Expect")
	r.Header.Del("Transfer-Encoding")
}

// replayBody is a buffered request body that can hand out fresh copies.
type replayBody struct {
	bytes.Reader
	body []byte
}

func (*replayBody) Close() error { return nil }

func (rb *replayBody) fresh() (io.ReadCloser, error) {
	n := &replayBody{body: rb.body}
	n.Reset(rb.body)
	return n, nil
}
