package llmratelimit

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// This file is the learned limits: what the providers' own rate-limit
// headers say about the account (or, in a zone without accounts, the key)
// that served an attempt. A learned limit applies where the config sets
// none and the smaller wins where both exist; after each answer a bucket
// is never above what the provider can have left (remainingNow: its
// reported remaining, read as taken at the call's arrival or at its
// answer, whichever leaves more); and the refill rate adapts as
// TCP's congestion window does, so that gateways sharing one account
// without a shared store converge on shares that add up to its quota.

// Learned dimensions: requests, tokens, input tokens, output tokens (the
// order of dimension's first four).
const numLearned = 4

// maxLearnedLimit bounds a believable per-minute figure; a larger one is
// garbage and ignored.
const maxLearnedLimit = 1_000_000_000_000

// The rate adaptation, per SPEC "Learned limits": a provider 429 on a
// request the learned bucket admitted cuts the rate to 70 %, at most once
// per round trip; each second without one adds back 1 % of the learned
// limit, up to all of it.
//
// A lone 429 (none in the minute before it) does not cut: with the quota
// configured right, it is a request that reached the provider a moment
// before its quota refilled, and a cut for it cost a single gateway 1.5 %
// of its quota at 10 s latency.
//
// As CUBIC does for TCP, the climb slows near the rate at which the
// provider last said no (the peak): back to 97 % of it at the full step,
// then on at a tenth of it. Gateways that share an account then spend
// longer just under their joint quota and overshoot it less often: in a
// simulation of two gateways on one 120 RPM account, the upstream 429s
// fall from 4–5 % to 2.3–3.4 % of the calls (600 RPM: 0.9–1.1 % to
// 0.5–0.7 %), with the quota still fully used.
const (
	learnDecrease  = 0.7
	learnIncrease  = 0.01 // of the learned limit per second
	learnKnee      = 0.97 // of the peak: where the climb slows
	learnProbe     = 0.1  // of learnIncrease, past the knee
	learnMinFactor = 0.05
	// learnQuiet: a 429 cuts only when another came within this time.
	learnQuiet = time.Minute
)

// rateReport is what one answer's rate-limit headers said, by dimension.
type rateReport struct {
	limit, remaining [numLearned]int64 // -1: not said (or garbage)
	reset            [numLearned]time.Duration
	any              bool
}

func newRateReport() rateReport {
	var r rateReport
	for d := range numLearned {
		r.limit[d], r.remaining[d], r.reset[d] = -1, -1, -1
	}
	return r
}

// rateHeader names one dimension's limit, remaining and reset headers, in
// canonical form (read without canonicalising, so without allocating).
type rateHeader struct {
	dim                     dimension
	limit, remaining, reset string
}

// readRateHeaders reads a header family into r. Garbage (negative, -1,
// huge, not a number, a reset that does not parse) is ignored value by
// value: it never turns a limit to 0.
func readRateHeaders(h http.Header, family []rateHeader, at time.Time, r *rateReport) {
	for _, f := range family {
		if v, ok := headerCount(h, f.limit); ok && v > 0 {
			r.limit[f.dim], r.any = v, true
		}
		if v, ok := headerCount(h, f.remaining); ok {
			r.remaining[f.dim], r.any = v, true
		}
		if v := headerValue(h, f.reset); v != "" {
			if d, ok := parseReset(v, at); ok {
				r.reset[f.dim] = d
			}
		}
	}
}

// headerCount reads a non-negative integer header within believable bounds.
func headerCount(h http.Header, name string) (int64, bool) {
	v := strings.TrimSpace(headerValue(h, name))
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > maxLearnedLimit {
		return 0, false
	}
	return n, true
}

// headerValue is the first value of a header given in canonical form.
func headerValue(h http.Header, canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// rateLimitsOf reads every dialect's rate-limit headers from an answer:
// the upstream of a request may speak any of them.
func rateLimitsOf(h http.Header, at time.Time) (rateReport, bool) {
	r := newRateReport()
	for _, d := range dialects {
		readRateHeaders(h, d.spec().rateHeaders, at, &r)
	}
	return r, r.any
}

// learnedState is what was learned about one account or key, guarded by
// the lock of its owner (z.upMu for an account, the shard's for a key).
type learnedState struct {
	limit  [numLearned]int64 // per minute; 0: not learned
	seenAt [numLearned]int64 // unix ns
	// factor scales the learned limits (the adaptive refill rate).
	factor   float64
	lastCut  int64 // unix ns of the last decrease
	last429  int64 // unix ns of the last 429 seen
	lastRise int64 // unix ns the factor was last raised
	// peak is the factor at the last decrease: where the provider said
	// no. The rate climbs back to it at the full step and probes past it
	// slowly (see rise).
	peak float64
	// admitted counts what was admitted through this state, by dimension,
	// to subtract from a reported remaining what was sent since.
	admitted [numLearned]float64
}

func newLearnedState(nowNs int64) *learnedState {
	return &learnedState{factor: 1, lastRise: nowNs}
}

// rise adds back the rate, 1 % of the limit per second since it last did.
func (ls *learnedState) rise(nowNs int64) {
	if ls == nil || nowNs <= ls.lastRise {
		return
	}
	dt := float64(nowNs-ls.lastRise) / 1e9
	ls.lastRise = nowNs
	// Back to just below the peak at the full step, then on at the probe's.
	if knee := ls.peak * learnKnee; ls.factor < knee {
		climb := min(dt, (knee-ls.factor)/learnIncrease)
		ls.factor += learnIncrease * climb
		dt -= climb
	}
	ls.factor = math.Min(1, ls.factor+learnIncrease*learnProbe*dt)
}

// limits is cfg with the learned limits applied: a learned limit (scaled
// by the rate factor) where cfg sets none, the smaller where both do.
func (ls *learnedState) limits(cfg Limits) Limits {
	if ls == nil {
		return cfg // small enough to inline: nothing learned costs nothing
	}
	return ls.apply(cfg)
}

// apply is limits for a state that learned something.
func (ls *learnedState) apply(cfg Limits) Limits {
	one := func(c *int64, d dimension) {
		l := ls.limit[d]
		if l <= 0 {
			return
		}
		eff := max(int64(math.Floor(float64(l)*ls.factor)), 1)
		if *c == 0 || eff < *c {
			*c = eff
		}
	}
	one(&cfg.RPM, dimRequests)
	one(&cfg.TPM, dimTokens)
	one(&cfg.ITPM, dimInput)
	one(&cfg.OTPM, dimOutput)
	return cfg
}

// count records a demand admitted through this state.
func (ls *learnedState) count(req float64, d demand) {
	if ls == nil {
		return
	}
	ls.admitted[dimRequests] += req
	ls.admitted[dimTokens] += d.in + d.out
	ls.admitted[dimInput] += d.in
	ls.admitted[dimOutput] += d.out
}

// sent is a snapshot taken when an attempt is sent.
type sent struct {
	at       int64
	admitted [numLearned]float64
	learned  bool // a learned limit was in force for it
}

func (ls *learnedState) snapshot(nowNs int64) sent {
	if ls == nil {
		return sent{at: nowNs}
	}
	s := sent{at: nowNs, admitted: ls.admitted}
	for _, l := range ls.limit {
		s.learned = s.learned || l > 0
	}
	return s
}

// observe takes one answer's report into the state and the buckets lb
// (whose configured limits are cfg): the learned limits, the cap of each
// bucket at what the provider can have left (remainingNow), and the rate
// cut of a 429 that the learned limits had let through.
func (ls *learnedState) observe(r *rateReport, status int, s sent, lb *limitBuckets, cfg Limits, nowNs int64) {
	ls.rise(nowNs)
	for d := range numLearned {
		if r.limit[d] > 0 {
			ls.limit[d], ls.seenAt[d] = r.limit[d], nowNs
		}
	}
	if status == http.StatusTooManyRequests {
		// A lone 429 after a quiet spell is a timing slip (a request that
		// reached the provider a moment before its quota refilled), which
		// the remaining cap corrects; only a 429 that follows another is
		// congestion, and cuts, once per round trip.
		if s.learned && s.at > ls.lastCut && ls.last429 != 0 && nowNs-ls.last429 <= int64(learnQuiet) {
			ls.peak = ls.factor
			ls.factor = math.Max(learnMinFactor, ls.factor*learnDecrease)
			ls.lastCut, ls.lastRise = nowNs, nowNs
		}
		ls.last429 = nowNs
	}
	eff := ls.limits(cfg)
	for d, p := range [...]struct {
		b     *bucket
		limit int64
	}{{&lb.rpm, eff.RPM}, {&lb.tpm, eff.TPM}, {&lb.itpm, eff.ITPM}, {&lb.otpm, eff.OTPM}} {
		rem := r.remaining[d]
		if rem < 0 || p.limit <= 0 {
			continue
		}
		level := p.b.advance(nowNs, p.limit)
		if capLevel := ls.remainingNow(d, rem, s, p.limit, nowNs); level > capLevel {
			p.b.level = capLevel
		}
	}
}

// remainingNow is the most the provider can have left now in dimension d,
// given that an answer to a call sent at s.at reported rem remaining. The
// provider took that figure at some time between the call's arrival and
// its answer, and either way the bound holds:
//   - taken at arrival (most providers), the quota has since refilled for
//     the call's latency at the provider's rate, and has taken what this
//     gateway sent since: rem + refill − admitted since;
//   - taken at the answer, it already counts every call that arrived in
//     between: rem.
//
// The larger of the two never holds back quota the provider would grant;
// a cap below it would keep about limit × latency / 60 unused for good.
func (ls *learnedState) remainingNow(d int, rem int64, s sent, limit int64, nowNs int64) float64 {
	r := float64(rem)
	rate := limit // the provider's own rate: the learned limit, else the bucket's
	if l := ls.limit[d]; l > 0 {
		rate = l
	}
	arrival := r + tokensFromDuration(rate, time.Duration(nowNs-s.at)) - (ls.admitted[d] - s.admitted[d])
	return math.Max(r, arrival)
}

// LearnedStats is what the stats show of a learned state.
type LearnedStats struct {
	// Limits by dimension: requests, tokens, input_tokens, output_tokens.
	Limits map[string]LearnedLimit `json:"limits"`
	// RateFactor is the adaptive share of the learned limits in force.
	RateFactor float64 `json:"rate_factor"`
}

// LearnedLimit is one learned figure and when it was last seen.
type LearnedLimit struct {
	Limit  int64  `json:"limit"`
	SeenAt string `json:"seen_at"`
}

var learnedNames = [numLearned]string{"requests", "tokens", "input_tokens", "output_tokens"}

func (ls *learnedState) stats(nowNs int64) *LearnedStats {
	if ls == nil || ls.limit == [numLearned]int64{} {
		return nil
	}
	ls.rise(nowNs)
	out := &LearnedStats{Limits: map[string]LearnedLimit{}, RateFactor: math.Round(ls.factor*1000) / 1000}
	for d, l := range ls.limit {
		if l > 0 {
			out.Limits[learnedNames[d]] = LearnedLimit{Limit: l, SeenAt: time.Unix(0, ls.seenAt[d]).UTC().Format(time.RFC3339)}
		}
	}
	return out
}
