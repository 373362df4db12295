package llmratelimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
)

// key_info: a key's owner asks the gateway for its own quota (SPEC "The
// key's owner sees its own quota"). A GET to the key_info path is answered
// by the handler itself, never forwarded, and costs nothing: it reads the
// key's buckets, slots, budget and today's usage, and changes none of them.
// The key is found as for any other request, and the answer only ever
// describes that key.
//
// What the figures mean for buckets that refill continuously:
//   - remaining is a bucket's level now, rounded down (a bucket in debt
//     shows 0), as the x-ratelimit-remaining-* headers say it;
//   - resets_at is when the bucket is full again if nothing more is
//     taken, rounded up to the second (RFC 3339, UTC), as the reset
//     headers that carry a time say it: now for a full bucket;
//   - remaining.concurrent is the limit less the requests in flight; it
//     has no reset;
//   - budget.remaining_usd is what admission still lets the key reserve:
//     the budget less what was spent in the period and what requests in
//     flight hold (their worst case);
//   - usage_today counts since 00:00 UTC: a request on the day it was
//     admitted, its tokens and cost on the day it was settled.

// defaultKeyInfoPath is key_info's path when the Caddyfile names none.
const defaultKeyInfoPath = "/v1/llm_ratelimit/key"

// isKeyInfo tells whether a request asks for key_info: one string compare,
// and only when key_info is on.
func (h *Handler) isKeyInfo(r *http.Request) bool {
	return h.KeyInfo != "" && r.URL.Path == h.KeyInfo
}

// serveKeyInfo answers key_info for the key kh of tier (found and
// checked as for any request): GET (or HEAD) with the key's figures as
// JSON, any other method 405. Nothing is counted.
func (h *Handler) serveKeyInfo(w http.ResponseWriter, r *http.Request, d dialect, kh keyHash, tier string) error {
	drainBody(r)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		w.Header().Set("x-should-retry", "false")
		e := &apiError{kind: errInvalid, msg: "This path (key_info) answers GET only: it shows the caller's own quota."}
		return writeJSON(w, http.StatusMethodNotAllowed, appendError(d, nil, e))
	}
	at := now()
	b := h.spend.budgets[tier]
	v := h.zone.keyView(kh, h.limitsFor(tier), h.learn && len(h.accounts) == 0 && h.rs == nil, b, at.UnixNano())
	if h.rs != nil {
		if err := h.sharedKeyView(kh, b, at, &v); err != nil {
			h.rs.warn("reading key_info from redis failed", err)
			return h.reply(w, d, &apiError{kind: errUnavailable, wait: time.Second,
				msg: "The rate limiter's shared store is unreachable; please try again shortly."}, "")
		}
	}
	body, err := json.Marshal(v.answer(kh.id(), tier, b, at))
	if err != nil {
		return err
	}
	if ce := h.logger.Check(zap.DebugLevel, "key_info"); ce != nil {
		ce.Write(zap.String("zone", h.Zone), zap.String("key_id", kh.id()), zap.String("tier", tier))
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, body)
}

// checkKeyInfo rejects a key_info path that is not a path, or that a
// dialect parses (it would hide that API).
func checkKeyInfo(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("key_info: the path must start with /, got %q", p)
	}
	if dialectForPath(p) != nil {
		return fmt.Errorf("key_info: %q is an LLM API path; choose another path", p)
	}
	return nil
}

// keyView is what key_info shows of one key, as the store holds it now.
type keyView struct {
	lim      Limits     // in force: the tier's, learned ones applied
	levels   [4]float64 // requests, tokens, input, output: each bucket's level now
	inflight int64
	today    dayUsage
	// spent and reserved are nano-dollars in the budget's current period.
	spent, reserved int64
}

// perDim is the per-minute limits in the order of keyView.levels.
func (l *Limits) perDim() [4]int64 { return [4]int64{l.RPM, l.TPM, l.ITPM, l.OTPM} }

// keyView reads the key's figures in this process, under its shard's lock,
// without changing them: a key the zone holds no state for has full
// buckets. learnKey applies what the key's provider taught (a zone without
// accounts); b is the key's budget (nil: none).
func (z *zone) keyView(kh keyHash, lim Limits, learnKey bool, b *budget, nowNs int64) keyView {
	s := z.shard(kh)
	kp := kh.prefix()
	v := keyView{lim: lim}
	var lb limitBuckets // copies: reading refills the copy only
	s.mu.Lock()
	if ks := s.keys[kp]; ks != nil {
		if learnKey {
			ks.learned.rise(nowNs)
			v.lim = ks.learned.limits(lim)
		}
		lb, v.inflight, v.today = ks.limitBuckets, ks.inflight, ks.stats.today
	} else if d, ok := s.days[kp]; ok {
		v.today = d
	}
	if sp := s.spend[kp]; sp != nil && b != nil {
		cur := *sp
		cur.roll(b.period, nowNs)
		v.spent, v.reserved = cur.spent, cur.reserved
	}
	s.mu.Unlock()
	v.today.roll(dayOf(nowNs))
	buckets := [4]*bucket{&lb.rpm, &lb.tpm, &lb.itpm, &lb.otpm}
	for i, limit := range v.lim.perDim() {
		if limit > 0 {
			v.levels[i] = buckets[i].advance(nowNs, limit)
		}
	}
	return v
}

// keyInfoJSON is key_info's answer. A limit that is not set is null, and
// so are its remaining and resets_at.
type keyInfoJSON struct {
	KeyID      string           `json:"key_id"`
	Tier       string           `json:"tier"`
	Limits     keyInfoLimits    `json:"limits"`
	Remaining  keyInfoRemaining `json:"remaining"`
	ResetsAt   keyInfoResets    `json:"resets_at"`
	Budget     *keyInfoBudget   `json:"budget"`
	UsageToday keyInfoUsage     `json:"usage_today"`
}

type keyInfoLimits struct {
	RPM        *int64 `json:"rpm"`
	TPM        *int64 `json:"tpm"`
	ITPM       *int64 `json:"itpm"`
	OTPM       *int64 `json:"otpm"`
	Concurrent *int64 `json:"concurrent"`
}

type keyInfoRemaining struct {
	Requests     *int64 `json:"requests"`
	Tokens       *int64 `json:"tokens"`
	InputTokens  *int64 `json:"input_tokens"`
	OutputTokens *int64 `json:"output_tokens"`
	Concurrent   *int64 `json:"concurrent"`
}

type keyInfoResets struct {
	Requests     *string `json:"requests"`
	Tokens       *string `json:"tokens"`
	InputTokens  *string `json:"input_tokens"`
	OutputTokens *string `json:"output_tokens"`
}

type keyInfoBudget struct {
	USD          float64 `json:"usd"`
	Period       string  `json:"period"`
	SpentUSD     float64 `json:"spent_usd"`
	RemainingUSD float64 `json:"remaining_usd"`
	ResetsAt     string  `json:"resets_at"`
}

type keyInfoUsage struct {
	Requests     int64   `json:"requests"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	CostUSD      float64 `json:"cost_usd"`
}

// answer is the view as key_info's JSON, at the time at.
func (v *keyView) answer(keyID, tier string, b *budget, at time.Time) keyInfoJSON {
	out := keyInfoJSON{KeyID: keyID, Tier: tier, UsageToday: keyInfoUsage{
		Requests: int64(v.today.requests), InputTokens: v.today.inTokens, OutputTokens: v.today.outTokens, CostUSD: usd(v.today.costNano)}}
	limits := [4]**int64{&out.Limits.RPM, &out.Limits.TPM, &out.Limits.ITPM, &out.Limits.OTPM}
	remaining := [4]**int64{&out.Remaining.Requests, &out.Remaining.Tokens, &out.Remaining.InputTokens, &out.Remaining.OutputTokens}
	resets := [4]**string{&out.ResetsAt.Requests, &out.ResetsAt.Tokens, &out.ResetsAt.InputTokens, &out.ResetsAt.OutputTokens}
	for i, limit := range v.lim.perDim() {
		if limit <= 0 {
			continue
		}
		level := min(v.levels[i], float64(limit))
		*limits[i] = ptr(limit)
		*remaining[i] = ptr(floorNonNeg(level))
		reset := at.Add(durationFromTokens(limit, float64(limit)-level) + time.Second - 1).UTC().Truncate(time.Second) // rounded up
		*resets[i] = ptr(reset.Format(time.RFC3339))
	}
	if c := v.lim.Concurrent; c > 0 {
		out.Limits.Concurrent = ptr(c)
		out.Remaining.Concurrent = ptr(max(c-v.inflight, 0))
	}
	if b != nil {
		start := b.period.start(at)
		out.Budget = &keyInfoBudget{USD: b.cfg.USD, Period: b.cfg.Period, SpentUSD: usd(v.spent),
			RemainingUSD: usd(max(b.nano-v.spent-v.reserved, 0)), ResetsAt: b.period.next(start).Format(time.RFC3339)}
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// utcDay is the day (since 1970-01-01 UTC) that holds nowNs.
func utcDay(nowNs int64) int64 { return nowNs / nsPerDay }

// dayUsage is a key's usage in one UTC day: key_info's usage_today. It
// lives in the key's stats, so counting it costs the request path a
// division and a few adds under the lock it already holds. When the
// sweeper drops an idle key, its shard parks the day's counts until the
// key comes back or the day ends.
type dayUsage struct {
	day                           int32 // utcDay of the counts
	requests                      uint32
	inTokens, outTokens, costNano int64
}

// roll starts a new day when day (dayOf) is past the counted one.
func (d *dayUsage) roll(day int32) {
	if day != d.day {
		*d = dayUsage{day: day}
	}
}

// admitted counts a request admitted on day.
func (d *dayUsage) admitted(day int32) {
	d.roll(day)
	d.requests++
}

// settled counts a settled request's tokens and cost (nano-dollars).
func (d *dayUsage) settled(day int32, in, out, costNano int64) {
	d.roll(day)
	d.inTokens += in
	d.outTokens += out
	d.costNano = satAdd(d.costNano, costNano)
}

func (d *dayUsage) empty() bool {
	return d.requests == 0 && d.inTokens == 0 && d.outTokens == 0 && d.costNano == 0
}

// maxParkedDays bounds the parked day counts of a shard (about 64 bytes
// each): a flood of short-lived keys cannot grow them without end. Past
// it, a key dropped by the sweeper starts its day's counts again when it
// comes back.
const maxParkedDays = 4096

// parkDay keeps today's usage of a key that the sweeper drops. The caller
// holds s.mu.
func (s *shard) parkDay(kp keyPrefix, d dayUsage, nowNs int64) {
	if d.roll(dayOf(nowNs)); d.empty() {
		return
	}
	if s.days == nil {
		s.days = make(map[keyPrefix]dayUsage)
	}
	if len(s.days) < maxParkedDays {
		s.days[kp] = d
	}
}

// unparkDay gives a key whose state is made again its parked day counts.
// The caller holds s.mu.
func (s *shard) unparkDay(kp keyPrefix, ks *keyState) {
	if d, ok := s.days[kp]; ok {
		ks.stats.today = d
		delete(s.days, kp)
	}
}

// dropOldDays forgets parked counts of days before nowNs's. The caller
// holds s.mu.
func (s *shard) dropOldDays(nowNs int64) {
	today := dayOf(nowNs)
	for kp, d := range s.days {
		if d.day != today {
			delete(s.days, kp)
		}
	}
}
