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
	c.level = math.Min(rpm, c.level+now.Sub(c.at).Seconds()*perSec)
	c.at = now
	if c.level >= 1 {
		c.level--
		ok = true
	} else {
		wait = time.Duration((1 - c.level) / perSec * float64(time.Second))
	}
	full = time.Duration((rpm - c.level) / perSec * float64(time.Second))
	return ok, c.level, full, wait
}

// provider is an OpenAI-like chat-completions endpoint that knows a few
// accounts by their bearer tokens and enforces each one's RPM. It says
// each account's state in OpenAI's x-ratelimit-* headers on every answer.
type provider struct {
	rpm      float64
	creds    map[string]*credential // by bearer token; fixed before serving
	latency  [2]time.Duration       // a 200 takes between these
	from, to atomic.Int64           // the measured window, unix ns
	unknown  atomic.Int64           // requests with a token it does not know
}

func newProvider(rpm int, accounts map[string]string) *provider {
	p := &provider{rpm: float64(rpm), creds: map[string]*credential{},
		latency: [2]time.Duration{20 * time.Millisecond, 40 * time.Millisecond}}
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
	h.Set("x-ratelimit-remaining-requests", strconv.Itoa(int(math.Floor(remaining))))
	h.Set("x-ratelimit-reset-requests", full.Round(time.Millisecond).String())
	if !ok {
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
	_, _ = io.WriteString(w, answer)
}
