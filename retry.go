package llmratelimit

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// This file is the upstream retry loop: when the next handler (normally
// reverse_proxy) answers a retryable status before any byte reached the
// client, the response is thrown away and the request sent again after a
// jittered wait that honours the upstream's hints. Caddy's own
// lb_retry_match retries at a fixed interval with no jitter and no
// Retry-After, and hands the client a bare 429 when it gives up; this loop
// exists to close that gap.

// RetryConfig configures the upstream retry loop.
type RetryConfig struct {
	// Off disables retries (and the zone's cooldown gate).
	Off bool `json:"off,omitempty"`
	// Attempts is the number of retries after the first try. Default 4.
	Attempts *int `json:"attempts,omitempty"`
	// Base is the first backoff wait when the upstream gives no hint; it
	// doubles with each retry. Default 1s.
	Base caddy.Duration `json:"base,omitempty"`
	// Max caps one backoff wait. Default 60s.
	Max caddy.Duration `json:"max,omitempty"`
	// Jitter is the spread of each wait, 0..1: a hinted wait is stretched
	// by up to this fraction, a backoff wait moved by ± it. Default 0.2.
	Jitter *float64 `json:"jitter,omitempty"`
	// Statuses are the upstream statuses that are retried. Default 429 500
	// 502 503 504 529.
	Statuses []int `json:"statuses,omitempty"`
	// MaxTotal bounds the time spent waiting and retrying one request;
	// past it the last upstream response is handed to the client. Default
	// 2m.
	MaxTotal caddy.Duration `json:"max_total,omitempty"`
}

var defaultRetryStatuses = []int{429, 500, 502, 503, 504, 529}

// retryPolicy is a RetryConfig with its defaults applied.
type retryPolicy struct {
	attempts  int
	base, max time.Duration
	jitter    float64
	statuses  []int
	maxTotal  time.Duration
}

func (rc *RetryConfig) policy() *retryPolicy {
	if rc != nil && rc.Off {
		return nil
	}
	p := &retryPolicy{attempts: 4, base: time.Second, max: time.Minute, jitter: 0.2,
		statuses: defaultRetryStatuses, maxTotal: 2 * time.Minute}
	if rc == nil {
		return p
	}
	if rc.Attempts != nil {
		p.attempts = *rc.Attempts
	}
	if rc.Base > 0 {
		p.base = time.Duration(rc.Base)
	}
	if rc.Max > 0 {
		p.max = time.Duration(rc.Max)
	}
	if rc.Jitter != nil {
		p.jitter = *rc.Jitter
	}
	if len(rc.Statuses) > 0 {
		p.statuses = rc.Statuses
	}
	if rc.MaxTotal > 0 {
		p.maxTotal = time.Duration(rc.MaxTotal)
	}
	return p
}

// validate applies the value checks (module.go) to what is set.
func (rc *RetryConfig) validate() error {
	if rc == nil || rc.Off {
		return nil
	}
	if rc.Attempts != nil {
		if err := checkRetryAttempts(*rc.Attempts); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		d    caddy.Duration
	}{{"base", rc.Base}, {"max", rc.Max}, {"max_total", rc.MaxTotal}} {
		if f.d != 0 {
			if err := checkPositiveDuration("retry "+f.name, time.Duration(f.d)); err != nil {
				return err
			}
		}
	}
	if rc.Jitter != nil {
		if err := checkJitter(*rc.Jitter); err != nil {
			return err
		}
	}
	for _, s := range rc.Statuses {
		if err := checkRetryStatus(s); err != nil {
			return err
		}
	}
	return nil
}

func (p *retryPolicy) retryable(status int) bool {
	for _, s := range p.statuses {
		if s == status {
			return true
		}
	}
	return false
}

// randFloat is the retry loop's random source, in [0, 1). Tests replace it.
var randFloat = rand.Float64

// backoff is the wait before retry n (0-based) without a hint:
// base·2^n capped at max, moved by ± jitter.
func (p *retryPolicy) backoff(n int) time.Duration {
	d := float64(p.base) * math.Pow(2, float64(n))
	d = math.Min(d, float64(p.max))
	d *= 1 + p.jitter*(2*randFloat()-1)
	return time.Duration(d)
}

// stretch jitters a hinted wait upwards only: hint × (1 + U(0, jitter)).
func (p *retryPolicy) stretch(hint time.Duration) time.Duration {
	return time.Duration(float64(hint) * (1 + p.jitter*randFloat()))
}

var recordBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// forward calls the next handler, retrying per the policy. Each retry is
// a new upstream call, charged on t; d shapes the handler's own answer.
// A client that goes away during a wait ends it at once (status 499).
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d dialect, x *exchange, t *ticket) error {
	req, saved := &x.req, &x.saved
	switch {
	case t.acfg != nil && h.pool:
		saveHeaders(r, h.acctFields, saved)
		h.attemptOn(w, r, x, t.acfg)
	case !h.pool && len(h.accounts) == 1 && len(h.accounts[0].headers) > 0:
		// The unnamed block serves every attempt: its headers once.
		applyAccount(r, x, h.accounts[0])
	}
	p := h.retry
	if p == nil || !req.canRetry {
		err := next.ServeHTTP(w, r)
		h.finalAttempt(t, req.parsed, statusOf(w, err), w.Header(), p)
		return err
	}
	start := now()
	deadline := start.Add(p.maxTotal)
	if d, ok := r.Context().Deadline(); ok && d.Before(deadline) {
		deadline = d
	}

	// A closed cooldown gate holds every request of the zone, first tries
	// included: one upstream hint, not a herd of 429s. A pool cools down
	// each account on its own instead.
	if !h.pool && h.zone.gate.openAt.Load() > start.UnixNano() {
		if err := h.zone.gate.wait(r.Context(), p, deadline); err != nil {
			if errors.Is(err, errGateTooLong) {
				wait := h.zone.gate.remaining()
				return h.reply(w, d, &apiError{kind: errCooldown, wait: wait,
					msg: "The upstream asked to slow down; please try again in " + humanWait(wait) + "."}, "")
			}
			return clientGone(err)
		}
	}

	before := snapshotHeader(w.Header())
	buf := recordBufs.Get().(*bytes.Buffer)
	defer recordBufs.Put(buf)
	moved := false // the attempt goes to another account, charged there
	for attempt := 1; ; attempt++ {
		buf.Reset()
		last := attempt > p.attempts
		rec := &x.rec
		rec.reset(w, buf, p, last)
		if attempt > 1 {
			w.Header().Set("x-llm-ratelimit-attempts", strconv.Itoa(attempt))
			r = freshVars(r)
			x.replay(r, req.body)
			if !moved {
				t.chargeRetry(now().UnixNano())
			}
			if t.acfg != nil && h.pool {
				saved.restore(r)
				h.attemptOn(w, r, x, t.acfg)
			}
		}
		err := next.ServeHTTP(rec, r)
		status := rec.Status()
		switch {
		case rec.buffered:
			// A retryable status, nothing sent to the client yet.
		case err != nil && status == 0 && !last && p.retryable(handlerErrorStatus(err)):
			// The proxy failed before answering (e.g. 502 dial error).
			status = handlerErrorStatus(err)
		default:
			h.finalAttempt(t, req.parsed, statusOf(rec, err), rec.Header(), p)
			return err // streamed through, or not retryable
		}
		h.countCall(t, status)

		hint, hinted := retryHint(rec.Header(), buf.Bytes(), now())
		if status == http.StatusTooManyRequests && !retryableBody(buf.Bytes()) {
			w.Header().Set("x-should-retry", "false")
			return h.handThrough(rec, err, attempt)
		}
		t.learn(now().UnixNano(), status, rec.Header())
		backoff := p.backoff(attempt - 1)
		// A pool account that answers 429, 529 or its format's busy status
		// cools down for the hint (or the backoff), and the retry goes at
		// once to another account that can take the request.
		moved = false
		if h.pool && overloaded(req.parsed, status) {
			cool := backoff
			if hinted {
				cool = hint
			}
			from := t.acfg.name
			if moved = t.failover(now().UnixNano(), cool); moved && !last {
				h.logger.Debug("failing over to another account", zap.Int("status", status), zap.Int("attempt", attempt),
					zap.String("from", from), zap.String("to", t.acfg.name), zap.Duration("cooldown", cool))
				h.zone.m.retry(h.Zone, status)
				before.restore(w.Header())
				continue
			}
		}
		var wait time.Duration
		if hinted {
			wait = p.stretch(hint)
			if !h.pool {
				h.zone.gate.close(now().Add(hint))
			}
		} else {
			wait = backoff
		}
		if last || now().Add(wait).After(deadline) {
			h.logger.Info("giving up on upstream retries",
				zap.Int("status", status), zap.Int("attempts", attempt), zap.Duration("next_wait", wait))
			return h.handThrough(rec, err, attempt)
		}
		h.logger.Debug("retrying upstream", zap.Int("status", status), zap.Int("attempt", attempt),
			zap.Duration("wait", wait), zap.Bool("hinted", hinted))
		h.zone.m.retry(h.Zone, status)
		before.restore(w.Header())
		if err := sleep(r.Context(), wait); err != nil {
			return clientGone(err)
		}
	}
}

// freshVars gives an attempt after the first its own copy of the request's
// variables. reverse_proxy writes them on every attempt (the upstream it
// picked), while the transport of an earlier attempt may still be dialing
// in the background and reading them (the dial address): one map shared
// by both is a data race.
func freshVars(r *http.Request) *http.Request {
	old, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	vars := make(map[string]any, len(old)+1)
	maps.Copy(vars, old)
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
}

// handlerErrorStatus is the status of a caddyhttp.HandlerError, else 0.
func handlerErrorStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return 0
}

// attemptOn prepares an attempt served by account ac, and names it in the
// response (headers on).
func (h *Handler) attemptOn(w http.ResponseWriter, r *http.Request, x *exchange, ac *accountCfg) {
	applyAccount(r, x, ac)
	if h.headersOn {
		w.Header()["X-Llm-Ratelimit-Upstream"] = x.one(ac.name)
	}
}

// overloaded tells an answer that says the upstream is too busy now,
// which the retry loop treats as a 429: a 429, a 529 (overloaded), or a
// status that the request's format names busy (dialectSpec.busy).
func overloaded(d dialect, status int) bool {
	return status == http.StatusTooManyRequests || status == 529 || d != nil && slices.Contains(d.spec().busy, status)
}

// finalAttempt counts the attempt whose answer goes to the client, and
// cools its pool account down when that answer is overloaded (d is the
// request's format, nil for none).
func (h *Handler) finalAttempt(t *ticket, d dialect, status int, hdr http.Header, p *retryPolicy) {
	h.countCall(t, status)
	if !h.pool || !overloaded(d, status) {
		return
	}
	cool, ok := retryHint(hdr, nil, now())
	if !ok {
		cool = time.Second
		if p != nil {
			cool = p.base
		}
	}
	t.coolDown(now().UnixNano(), cool)
}

// countCall counts an attempt sent to the request's account ("default"
// for the unnamed block, or when no account applies).
func (h *Handler) countCall(t *ticket, status int) {
	if t.acfg != nil && t.acfg.calls != nil {
		t.acfg.calls.inc(status)
		return
	}
	h.defaultCalls.inc(status)
}

// statusOf is the status an attempt ended with: what was written, else
// the handler error's, else 502.
func statusOf(w http.ResponseWriter, err error) int {
	type statuser interface{ Status() int }
	if s, ok := w.(statuser); ok && s.Status() != 0 {
		return s.Status()
	}
	if uw, ok := w.(*usageWriter); ok && uw.status != 0 {
		return uw.status
	}
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		return he.StatusCode
	}
	if err == nil {
		return http.StatusOK
	}
	return http.StatusBadGateway
}

// handThrough gives the client the last upstream answer: the buffered
// response unchanged (but for the attempts count), or the proxy's error.
func (h *Handler) handThrough(rec *attemptWriter, err error, attempt int) error {
	if attempt > 1 {
		rec.Header().Set("x-llm-ratelimit-attempts", strconv.Itoa(attempt))
	}
	if !rec.buffered {
		return err
	}
	return rec.writeKept()
}

// headerSnapshot remembers a response header map's entries before an
// attempt, without copying them (up to 8 entries; more are cloned), so that
// restore can put the map back and nothing of a thrown-away response
// (Content-Length, Content-Type, Via, …) leaks into the next.
type headerSnapshot struct {
	n  int
	kv [8]struct {
		k string
		v []string
	}
	clone http.Header
}

func snapshotHeader(h http.Header) (s headerSnapshot) {
	if len(h) > len(s.kv) {
		s.clone = h.Clone()
		return s
	}
	for k, v := range h {
		s.kv[s.n].k, s.kv[s.n].v = k, v[:len(v):len(v)]
		s.n++
	}
	return s
}

func (s *headerSnapshot) restore(h http.Header) {
	clear(h)
	if s.clone != nil {
		for k, v := range s.clone {
			h[k] = v
		}
		return
	}
	for i := 0; i < s.n; i++ {
		h[s.kv[i].k] = s.kv[i].v
	}
}

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

// gate is a zone's cooldown gate: an upstream hint closes it until the
// hinted time, and every request of the zone waits for it to open.
type gate struct {
	openAt atomic.Int64 // unix ns
}

var errGateTooLong = errors.New("cooldown gate stays closed past the request's deadline")

// close keeps the gate closed until t at least.
func (g *gate) close(t time.Time) {
	n := t.UnixNano()
	for {
		cur := g.openAt.Load()
		if n <= cur || g.openAt.CompareAndSwap(cur, n) {
			return
		}
	}
}

func (g *gate) remaining() time.Duration {
	return time.Duration(g.openAt.Load() - now().UnixNano())
}

// wait holds the caller while the gate is closed: until it opens, stretched
// by the jitter so that the waiters do not all leave at once.
func (g *gate) wait(ctx context.Context, p *retryPolicy, deadline time.Time) error {
	for {
		left := g.remaining()
		if left <= 0 {
			return nil
		}
		wait := p.stretch(left)
		if now().Add(wait).After(deadline) {
			return errGateTooLong
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}
