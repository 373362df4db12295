package main

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// providerMark is the response header the mock provider sets on every
// answer, with the account's name: a 429 that carries it reached the
// client from the provider (the gateway gave up), one without it is the
// gateway's own.
const providerMark = "X-Mock-Provider"

const answer = `{"id":"chatcmpl-pool","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"A pool spreads the load."},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":6,"total_tokens":46}}`

// credential is one provider account: its request bucket (capacity rpm,
// refilled continuously at rpm/60 per second, full when first used) and
// its counters, for the whole run and for the measured window (by the
// time the request arrived).
type credential struct {
	name  string
	mu    sync.Mutex
	level float64
	at    time.Time

	ok, limited     atomic.Int64
	okIn, limitedIn atomic.Int64
}

// take debits one request if the bucket holds one. It returns the
// headers' figures: the level after the decision and the time until the
// bucket is full again, and on a refusal the time until one request fits.
func (c *credential) take(now time.Time, rpm float64) (ok bool, remaining float64, full, wait time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	perSec := rpm / 60
	if c.at.IsZero() {
		c.level, c.at = rpm, now
	}
	c.refill(now, rpm)
	if c.level >= 1 {
		c.level--
		ok = true
	} else {
		wait = time.Duration((1 - c.level) / perSec * float64(time.Second))
	}
	full = time.Duration((rpm - c.level) / perSec * float64(time.Second))
	return ok, c.level, full, wait
}

// refill brings the bucket up to now. c.mu is held.
func (c *credential) refill(now time.Time, rpm float64) {
	c.level = math.Min(rpm, c.level+now.Sub(c.at).Seconds()*rpm/60)
	c.at = now
}

// levelAt is the bucket's level at now, for an answer-time remaining.
func (c *credential) levelAt(now time.Time, rpm float64) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refill(now, rpm)
	return c.level
}

// provider is an OpenAI-like chat-completions endpoint that knows a few
// accounts by their bearer tokens and enforces each one's RPM. It says
// each account's state in OpenAI's x-ratelimit-* headers on every answer.
type provider struct {
	rpm     float64
	creds   map[string]*credential // by bearer token; fixed before serving
	latency [2]time.Duration       // a 200 takes between these
	// answerTime: x-ratelimit-remaining-requests is the level when the
	// answer is written, as some providers report it; otherwise the level
	// after the call was counted at its arrival, as most do.
	answerTime bool
	from, to   atomic.Int64 // the measured window, unix ns
	unknown    atomic.Int64 // requests with a token it does not know
}

// newProvider answers a 200 after latency plus 20–40 ms (a 429 at once).
func newProvider(rpm int, accounts map[string]string, latency time.Duration, answerTime bool) *provider {
	p := &provider{rpm: float64(rpm), creds: map[string]*credential{}, answerTime: answerTime,
		latency: [2]time.Duration{latency + 20*time.Millisecond, latency + 40*time.Millisecond}}
	for token, name := range accounts {
		p.creds[token] = &credential{name: name}
	}
	p.from.Store(math.MaxInt64)
	p.to.Store(math.MaxInt64)
	return p
}

func (p *provider) window(from, to time.Time) {
	p.from.Store(from.UnixNano())
	p.to.Store(to.UnixNano())
}

func (p *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	now := time.Now()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	c := p.creds[token]
	if c == nil {
		p.unknown.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`)
		return
	}
	h.Set(providerMark, c.name)
	ok, remaining, full, wait := c.take(now, p.rpm)
	in := now.UnixNano() >= p.from.Load() && now.UnixNano() < p.to.Load()
	h.Set("x-ratelimit-limit-requests", strconv.Itoa(int(p.rpm)))
	if !ok {
		h.Set("x-ratelimit-remaining-requests", strconv.Itoa(int(math.Floor(remaining))))
		h.Set("x-ratelimit-reset-requests", full.Round(time.Millisecond).String())
		c.limited.Add(1)
		if in {
			c.limitedIn.Add(1)
		}
		ms := int64(math.Ceil(float64(wait) / float64(time.Millisecond)))
		h.Set("retry-after-ms", strconv.FormatInt(ms, 10))
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprintf(w, `{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-%s on requests per min (RPM): Limit %d, Used %d, Requested 1. Please try again in %dms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`,
			c.name, int(p.rpm), int(p.rpm), ms)
		return
	}
	c.ok.Add(1)
	if in {
		c.okIn.Add(1)
	}
	lo, hi := p.latency[0], p.latency[1]
	d := lo + time.Duration(rand.Int64N(int64(hi-lo)+1))
	select {
	case <-time.After(d):
	case <-r.Context().Done():
		return
	}
	if p.answerTime {
		remaining = c.levelAt(time.Now(), p.rpm)
		full = time.Duration((p.rpm - remaining) / (p.rpm / 60) * float64(time.Second))
	}
	h.Set("x-ratelimit-remaining-requests", strconv.Itoa(int(math.Floor(remaining))))
	h.Set("x-ratelimit-reset-requests", full.Round(time.Millisecond).String())
	_, _ = io.WriteString(w, answer)
}
