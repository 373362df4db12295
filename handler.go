package llmratelimit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// ServeHTTP follows SPEC's request flow: key → body → estimate → context
// check → admit → forward → settle → release.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// parse reads the body; d shapes the handler's own answers and headers.
	parse := h.dialect
	if parse == nil {
		parse = dialectForPath(r.URL.Path)
	}
	d := parse
	if d == nil {
		d = shapeForPath(r.URL.Path)
	}

	// 1. Key.
	key := h.keyOf(r)
	if key == "" {
		drainBody(r)
		return h.reply(w, d, &apiError{kind: errUnauthorized, msg: missingKeyMessage}, outcomeUnauthorized)
	}
	kh := hashKey(key)
	tier, known := (*h.keys.Load())[kh]
	if !known && h.RequireKnownKeys {
		h.logger.Info("unknown api key", zap.String("key_id", kh.id()))
		drainBody(r)
		return h.reply(w, d, &apiError{kind: errUnauthorized, msg: "Incorrect API key provided (key_id " + kh.id() + ")."}, outcomeUnauthorized)
	}
	if h.isKeyInfo(r) { // the key's own quota: answered here, costs nothing
		return h.serveKeyInfo(w, r, d, kh, tier)
	}

	// 2. Body, 3. estimate, 4. context window.
	x := new(exchange)
	defer x.done()
	req := &x.req
	if err := h.readAndEstimate(r, parse, x); err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return h.reply(w, d, ae, outcomeInvalid)
		}
		return clientGone(err)
	}

	// 5. Admission, over the accounts that serve the model.
	accts := h.accountsFor(req.info.Model)
	if len(h.accounts) > 0 && len(accts) == 0 {
		return h.reply(w, d, &apiError{kind: errModelNotFound,
			msg: "The model `" + req.info.Model + "` does not exist or no provider account of this gateway serves it."}, outcomeInvalid)
	}
	sa := h.spendAsk(tier, req, &x.spend)
	if sa != nil && sa.unpriced && sa.b != nil {
		if !h.DryRun {
			return h.replyUnpriced(w, d, kh, tier, req)
		}
		h.logger.Info("would reject (dry_run)", h.decisionFields(kh, tier, &req.info, req.demand,
			zap.String("outcome", outcomeDryRunRejected), zap.String("reason", "model not priced"))...)
	}
	// The ask and the decision live in the exchange: the admitter is an
	// interface, and a pointer to a local would move it to the heap.
	q := &x.q
	*q = ask{kh: kh, known: known, maxKeys: max(h.MaxKeys, 0), tier: tier, lim: h.limitsFor(tier), accts: accts, d: req.demand,
		learn: h.learn, learnKey: h.learn && len(accts) == 0, lane: h.lanes[tier], spend: sa}
	if req.parsed != nil { // only a body the gateway read can be rewritten
		q.clampMin, q.choices = h.ClampMaxTokens, req.info.N
	}
	// The ticket goes straight where the usage writer keeps it.
	t := &x.uw.t
	dec := &x.dec
	waited, err := h.admitter.admit(r.Context(), q, t, dec)
	if errors.Is(err, errStoreDown) {
		return h.reply(w, d, &apiError{kind: errUnavailable, wait: time.Second,
			msg: "The rate limiter's shared store is unreachable; please try again shortly."}, "")
	}
	if err != nil {
		return clientGone(err) // it went away while waiting, and took nothing
	}
	m := h.zone.m
	if !dec.ok && dec.overBudget && !h.DryRun {
		return h.replyBudget(w, d, q.spend.b, *dec, kh, tier, req)
	}
	if dec.ok && dec.clamped > 0 {
		req.body = req.parsed.clampOutput(r.URL.Path, req.body, dec.clamped)
		_ = x.body.Close() // not forwarded: the clamped body replaces it
		x.replay(r, req.body)
		w.Header().Set("x-llm-ratelimit-max-tokens-clamped", strconv.FormatInt(dec.clamped, 10))
	}
	if !dec.ok {
		msg := rejectMessage(*dec, req.demand.model)
		fields := h.decisionFields(kh, tier, &req.info, req.demand,
			zap.Duration("wait", dec.wait), zap.Bool("never_fits", dec.never), zap.String("reason", msg))
		if !h.DryRun {
			h.logger.Info("rejected", append(fields, zap.String("outcome", outcomeRejected))...)
			if h.headersOn {
				setQuotaHeaders(w.Header(), d, dec.qs)
			}
			limit := rejectionLimits[dec.blocking.dim]
			if dec.queueFull {
				limit = "queue_full"
			}
			m.rejected(limit)
			return h.reply(w, d, &apiError{kind: errRateLimited, msg: msg, dim: dec.blocking.dim, wait: dec.wait, never: dec.never}, outcomeRejected)
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
			ce.Write(h.decisionFields(kh, tier, &req.info, req.demand, zap.String("outcome", outcome), zap.Duration("queued", waited))...)
		}
	}
	if sa != nil && sa.unpriced {
		m.unpriced.Inc() // it goes up at cost 0
	}
	return h.serveAdmitted(w, r, next, d, x, dec)
}

// llmRequest is what the handler read from a request before admission.
type llmRequest struct {
	info requestInfo
	// parsed is the dialect that read the body; nil when the body was not
	// read (another path, another method): 1 request, 0 tokens.
	parsed dialect
	// body is the buffered body, given to every attempt.
	body []byte
	// strip: the dialect rewrote the body to ask for the usage; the added
	// usage event is taken out of the stream again.
	strip bool
	// canRetry: the request can be sent again (no body, or a buffered one).
	canRetry bool
	demand   demand
}

// readAndEstimate reads the body of a request of dialect d (steps 2 to 4
// of the request flow): it buffers and parses the body, gives it back for
// the next handler, estimates the demand and checks the context window.
// An *apiError is the client's mistake, to be answered; any other error
// means the client went away.
func (h *Handler) readAndEstimate(r *http.Request, d dialect, x *exchange) error {
	req := &x.req
	req.info = requestInfo{N: 1}
	req.canRetry = r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	if d != nil && r.Method == http.MethodPost { // e.g. GET /v1/chat/completions lists stored completions: no body
		if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
			drainBody(r)
			return &apiError{kind: errInvalid, msg: "Compressed request bodies (Content-Encoding: " + ce + ") are not supported: send the JSON body uncompressed."}
		}
		body, err := readBody(r, h.MaxBody, &x.bb)
		switch {
		case errors.Is(err, errBodyTooLarge):
			drainBody(r)
			return &apiError{kind: errTooLarge, msg: fmt.Sprintf("Request body exceeds the limit of %d bytes.", h.MaxBody)}
		case err != nil && (errors.Is(err, io.ErrUnexpectedEOF) || r.Context().Err() != nil):
			return err // the client went away mid-body
		case err != nil:
			return &apiError{kind: errInvalid, msg: "Could not read the request body: " + err.Error()}
		}
		if err := parseRequest(d, r.URL.Path, body, &req.info); err != nil {
			return &apiError{kind: errInvalid, msg: "Invalid request body: " + err.Error()}
		}
		req.parsed = d
		req.body, req.strip = prepareBody(d, r.URL.Path, r.URL.RawQuery, body, &req.info)
		x.replay(r, req.body)
		req.canRetry = true
		// The usage in the response must be readable; an encode directive
		// in front of this handler re-compresses for the client.
		r.Header.Del("Accept-Encoding")
	}
	mb := h.modelFor(req.info.Model)
	req.demand = h.demandFor(&req.info, mb, req.parsed)
	if window, _ := h.modelLimits(mb, req.info.Model, req.parsed); window > 0 && req.demand.in+req.demand.out > float64(window) {
		dm := req.demand
		return &apiError{kind: errContextLength, msg: fmt.Sprintf(
			"This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion). Please reduce the length of the messages or completion.",
			window, int64(dm.in+dm.out), int64(dm.in), int64(dm.out))}
	}
	return nil
}

// serveAdmitted forwards an admitted request (6, 7), settles it (8) and
// releases it (9) on every path: a panic such as http.ErrAbortHandler
// keeps the reservation but frees the slot.
func (h *Handler) serveAdmitted(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d dialect, x *exchange, dec *decision) error {
	req := &x.req
	h.zone.m.estIn.Add(req.demand.in)
	h.zone.m.resOut.Add(req.demand.out)
	x.forwarded = true
	uw := &x.uw // its ticket is the admission's
	uw.ResponseWriter, uw.h, uw.d, uw.hd, uw.qs, uw.strip = w, h, req.parsed, d, dec.qs, req.strip
	defer uw.release()
	defer uw.abandon()
	err := h.forward(uw, r, next, d, x, &uw.t)
	if ferr := uw.flushHeld(true); err == nil {
		err = ferr
	}
	uw.settle()
	return err
}

// statusClientClosed is what the log shows for a client that went away
// before its answer, as reverse_proxy logs it.
const statusClientClosed = 499

func clientGone(err error) error { return caddyhttp.Error(statusClientClosed, err) }

// decisionFields describe a decision for the log: key_id, never the key.
func (h *Handler) decisionFields(kh keyHash, tier string, info *requestInfo, d demand, extra ...zap.Field) []zap.Field {
	return append([]zap.Field{
		zap.String("zone", h.Zone), zap.String("key_id", kh.id()), zap.String("tier", tier),
		zap.String("model", info.Model), zap.Float64("input_estimate", d.in), zap.Float64("output_reserved", d.out),
	}, extra...)
}

// keyOf is the caller's key: the key template's value, or by default the
// first credential place that holds one (credentials.go).
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

// demandFor turns what the estimator read into the tokens a request asks
// for: input (text, 3 per message, images, times token_ratio) and the output
// reservation. d is the dialect that read the body, nil for none.
func (h *Handler) demandFor(info *requestInfo, m *Model, d dialect) demand {
	var imageCost, lowCost int64
	if d != nil {
		imageCost, lowCost = d.spec().image.full, d.spec().image.low
	}
	ratio := 1.0
	if m != nil {
		if m.ImageTokens > 0 {
			imageCost = m.ImageTokens
		}
		ratio = m.TokenRatio
	}
	raw := float64(info.TextTokens) + 3*float64(info.Messages) +
		float64(lowCost)*float64(info.ImagesLow) + float64(imageCost)*float64(info.Images)
	dm := demand{raw: raw, modelFactor: ratio, model: m}
	if h.calibrate && d != nil {
		dm.calib = h.starCalib
		if m != nil {
			dm.calib = m.calib
		}
		if dm.calib != nil {
			dm.modelFactor = dm.calib.factor()
		}
	}
	dm.in = math.Ceil(raw * dm.modelFactor)
	if m != nil && !m.Limits.any() {
		dm.model = nil // a model block without limits has no buckets
	}
	switch {
	case d == nil || info.NoOutput:
		// Nothing is generated.
	case info.MaxOutput > 0:
		dm.out = float64(info.MaxOutput) * float64(info.N)
	default:
		per := h.DefaultMaxOutput
		window, maxOut := h.modelLimits(m, info.Model, d)
		if maxOut > 0 {
			per = maxOut
		}
		// Without an explicit max the model stops at its window: do not
		// reserve (or reject for) more than the window leaves.
		if window > 0 {
			per = min(per, max(window-int64(dm.in), 0))
		}
		dm.out = float64(per) * float64(info.N)
	}
	return dm
}

func (l Limits) any() bool { return l.RPM > 0 || l.TPM > 0 || l.ITPM > 0 || l.OTPM > 0 }

var errBodyTooLarge = errors.New("request body too large")

// readBody reads at most max bytes of the body: into a pooled buffer
// held by bb when the length is known.
func readBody(r *http.Request, max int64, bb *bodyBuf) ([]byte, error) {
	if r.ContentLength > max {
		return nil, errBodyTooLarge
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if cl := r.ContentLength; cl > 0 {
		buf := bb.take(int(cl) + 1) // one more byte tells a body longer than declared
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
