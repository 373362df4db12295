package llmratelimit

import (
	"math"
	"sort"
	"time"
)

// keyStats is what the admin API shows of a key beyond its buckets. It is
// a few counters, no per-request history: the last minute is estimated
// from this minute's and the previous minute's counts.
type keyStats struct {
	tier                          string
	rpm, tpm                      int64    // the limits of its last request
	requests, inTokens, outTokens int64    // since the key's state was created
	minute                        int32    // the unix minute cur counts
	calib                         keyCalib // the key's calibration factor
	curReq, prevReq               int32
	curTok, prevTok               int64
	today                         dayUsage // usage_today of key_info (keyinfo.go)
}

// roll moves the minute window to now's minute.
func (s *keyStats) roll(nowNs int64) {
	m := int32(nowNs / int64(time.Minute))
	switch {
	case m == s.minute:
	case m == s.minute+1:
		s.prevReq, s.prevTok = s.curReq, s.curTok
		s.curReq, s.curTok, s.minute = 0, 0, m
	default:
		s.prevReq, s.prevTok, s.curReq, s.curTok, s.minute = 0, 0, 0, 0, m
	}
}

// admitted counts an admitted request. It is at the inliner's budget:
// its day's count is the caller's (dayUsage.admitted).
func (s *keyStats) admitted(nowNs int64, tier string, lim *Limits) {
	s.roll(nowNs)
	s.tier, s.rpm, s.tpm = tier, lim.RPM, lim.TPM
	s.requests++
	s.curReq++
}

// finished counts a request's tokens (countedTokens: in and out).
func (s *keyStats) finished(nowNs int64, in, out int64) {
	s.roll(nowNs)
	s.inTokens += in
	s.outTokens += out
	s.curTok += in + out
}

// counted are the tokens a finished request counts in its key's stats and
// usage: the actual usage when known, none when refunded, else its
// reservation. in is what counts against ITPM, read all the input read
// (cached input included) and cached its cached part. Each is at most
// maxSettledTokens (a usage is clamped when read, a reservation here), so
// that sums over 2^31 requests cannot overflow.
type counted struct{ in, read, cached, out int64 }

// countedTokens are a finished request's counted tokens. u, when given,
// is clamped (usageWriter.usage).
func countedTokens(d *demand, u *usage, refund bool) (c counted) {
	switch {
	case refund:
	case u != nil:
		c = counted{in: u.Input, read: max(u.Read, u.Input), cached: u.Cached, out: u.Output}
	default: // a reservation comes from the client's body: bound it
		c.in = int64(min(d.in, maxSettledTokens))
		c.read, c.out = c.in, int64(min(d.out, maxSettledTokens))
	}
	return c
}

// lastMinute estimates the count over the sliding last minute.
func (s *keyStats) lastMinute(nowNs int64, cur, prev int64) int64 {
	m := int32(nowNs / int64(time.Minute))
	switch {
	case m == s.minute:
		frac := float64(nowNs%int64(time.Minute)) / float64(time.Minute)
		return cur + int64(math.Round(float64(prev)*(1-frac)))
	case m == s.minute+1:
		frac := float64(nowNs%int64(time.Minute)) / float64(time.Minute)
		return int64(math.Round(float64(cur) * (1 - frac)))
	}
	return 0
}

// KeyStats is one key in the admin API's stats.
type KeyStats struct {
	KeyID              string `json:"key_id"`
	Tier               string `json:"tier"`
	RPMAvailable       *int64 `json:"rpm_available"` // null: no rpm limit
	TPMAvailable       *int64 `json:"tpm_available"` // null: no tpm limit
	InFlight           int64  `json:"in_flight"`
	RequestsLastMinute int64  `json:"requests_last_minute"`
	TokensLastMinute   int64  `json:"tokens_last_minute"`
	RequestsTotal      int64  `json:"requests_total"`
	InputTokensTotal   int64  `json:"input_tokens_total"`
	OutputTokensTotal  int64  `json:"output_tokens_total"`
	// Learned is what the key's provider said of its quota, when the key
	// itself went upstream (a zone without accounts).
	Learned *LearnedStats `json:"learned,omitempty"`
	// CalibrationFactor is the key's estimate correction, relative to its
	// model's (1: none).
	CalibrationFactor float64 `json:"calibration_factor"`
	// SpendUSD is what the key spent in its budget's current period,
	// BudgetUSD and BudgetPeriod the budget, BudgetResetsAt when the
	// period ends (RFC 3339). Absent when no budget applies to the key.
	SpendUSD       *float64 `json:"spend_usd,omitempty"`
	BudgetUSD      *float64 `json:"budget_usd,omitempty"`
	BudgetPeriod   string   `json:"budget_period,omitempty"`
	BudgetResetsAt string   `json:"budget_resets_at,omitempty"`
}

// UpstreamStats is a zone's shared upstream quota in the stats.
type UpstreamStats struct {
	RPMAvailable  *int64 `json:"rpm_available"`
	TPMAvailable  *int64 `json:"tpm_available"`
	ITPMAvailable *int64 `json:"itpm_available"`
	OTPMAvailable *int64 `json:"otpm_available"`
	InFlight      int64  `json:"in_flight"`
}

// AccountStats is one provider account of a zone in the stats.
type AccountStats struct {
	UpstreamStats
	// CooldownUntil is when a 429 from the provider stops cooling the
	// account down (RFC 3339); null when it is not cooling.
	CooldownUntil *string `json:"cooldown_until"`
	// CallsTotal counts the attempts sent to the account.
	CallsTotal int64 `json:"calls_total"`
	// RateLimitedTotal counts the attempts it answered 429 or 529.
	RateLimitedTotal int64 `json:"rate_limited_total"`
	// Learned is what the provider's rate-limit headers said; null before
	// any did (or with learn_limits off).
	Learned *LearnedStats `json:"learned"`
}

// ZoneStats is one zone in the stats.
type ZoneStats struct {
	Keys []KeyStats `json:"keys"`
	// Upstream is the unnamed upstream block's account.
	Upstream UpstreamStats `json:"upstream"`
	// Upstreams is every account of the zone by name ("default" for the
	// unnamed block).
	Upstreams   map[string]AccountStats `json:"upstreams"`
	QueueLength int                     `json:"queue_length"`
	// Calibration is the estimate's factor per model block name ("*" for
	// requests no block matches) and how many answers taught it.
	Calibration map[string]CalibrationStats `json:"calibration"`
	// CostUSDTotal is what the zone's settled requests cost at the
	// configured prices, since the process started.
	CostUSDTotal float64 `json:"cost_usd_total"`
}

// available is a bucket's level now, rounded down, without changing it;
// nil when there is no limit.
func available(b bucket, limit, nowNs int64) *int64 {
	if limit <= 0 {
		return nil
	}
	v := floorNonNeg(b.advance(nowNs, limit))
	return &v
}

// stats is a snapshot of the zone: its keys sorted by key_id.
func (z *zone) stats(nowNs int64) ZoneStats {
	out := ZoneStats{Keys: []KeyStats{}, QueueLength: z.queue.length()}
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kh, ks := range s.keys {
			k := ks.snapshot(kh, nowNs)
			z.spendStats(&k, s.spend[kh], ks.stats.tier, nowNs)
			out.Keys = append(out.Keys, k)
		}
		for kh, sp := range s.spend { // keys idle long enough to lose their buckets
			if s.keys[kh] == nil {
				k := KeyStats{KeyID: kh.id(), CalibrationFactor: 1}
				z.spendStats(&k, sp, "", nowNs)
				out.Keys = append(out.Keys, k)
			}
		}
		s.mu.Unlock()
	}
	out.CostUSDTotal = usd(z.costs.total.Load())
	sort.Slice(out.Keys, func(i, j int) bool { return out.Keys[i].KeyID < out.Keys[j].KeyID })
	out.Calibration = z.calibrationStats()
	out.Upstreams = map[string]AccountStats{}
	z.upMu.Lock()
	for name, st := range z.accounts {
		as := AccountStats{UpstreamStats: st.snapshot(nowNs), Learned: st.learned.stats(nowNs), CallsTotal: st.calls, RateLimitedTotal: st.rateLimited}
		if st.cooldownUntil > nowNs {
			t := time.Unix(0, st.cooldownUntil).UTC().Format(time.RFC3339Nano)
			as.CooldownUntil = &t
		}
		out.Upstreams[name] = as
		if name == defaultAccount {
			out.Upstream = as.UpstreamStats
		}
	}
	z.upMu.Unlock()
	if sh := z.shared.Load(); sh != nil {
		z.sharedStats(sh.rs, sh.up, &out)
		if len(sh.pool) > 0 {
			z.sharedPoolStats(sh.rs, sh.pool, &out)
		}
	}
	return out
}

// snapshot is the account's buckets now, without changing them.
func (st *account) snapshot(nowNs int64) UpstreamStats {
	st.learned.rise(nowNs)
	lim := st.limits(st.cfg)
	return UpstreamStats{
		RPMAvailable:  available(st.rpm, lim.RPM, nowNs),
		TPMAvailable:  available(st.tpm, lim.TPM, nowNs),
		ITPMAvailable: available(st.itpm, lim.ITPM, nowNs),
		OTPMAvailable: available(st.otpm, lim.OTPM, nowNs),
		InFlight:      st.inflight,
	}
}

// keyStats returns one key's stats; false when the zone holds no state
// for it. A shared zone adds what Redis holds of a key this instance has
// seen.
func (z *zone) keyStats(keyID string, nowNs int64) (KeyStats, bool) {
	st, ok := z.localKeyStats(keyID, nowNs)
	if sh := z.shared.Load(); sh != nil && z.sharedKeyStats(sh.rs, keyID, &st, ok) {
		ok = true
	}
	return st, ok
}

// localKeyStats is one key's stats as this process holds them.
func (z *zone) localKeyStats(keyID string, nowNs int64) (KeyStats, bool) {
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kh, ks := range s.keys {
			if kh.id() == keyID {
				st := ks.snapshot(kh, nowNs)
				z.spendStats(&st, s.spend[kh], ks.stats.tier, nowNs)
				s.mu.Unlock()
				return st, true
			}
		}
		for kh, sp := range s.spend {
			if kh.id() == keyID {
				st := KeyStats{KeyID: keyID, CalibrationFactor: 1}
				z.spendStats(&st, sp, "", nowNs)
				s.mu.Unlock()
				return st, true
			}
		}
		s.mu.Unlock()
	}
	return KeyStats{}, false
}

// snapshot is called under the key's shard lock.
func (ks *keyState) snapshot(kh keyPrefix, nowNs int64) KeyStats {
	st := &ks.stats
	return KeyStats{
		KeyID:              kh.id(),
		Tier:               st.tier,
		RPMAvailable:       available(ks.rpm, st.rpm, nowNs),
		TPMAvailable:       available(ks.tpm, st.tpm, nowNs),
		InFlight:           ks.inflight,
		RequestsLastMinute: st.lastMinute(nowNs, int64(st.curReq), int64(st.prevReq)),
		TokensLastMinute:   st.lastMinute(nowNs, st.curTok, st.prevTok),
		RequestsTotal:      st.requests,
		InputTokensTotal:   st.inTokens,
		OutputTokensTotal:  st.outTokens,
		Learned:            ks.learned.stats(nowNs),
		CalibrationFactor:  math.Round(st.calib.factor()*1000) / 1000,
	}
}
