package llmratelimit

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Budgets in the zone: the check and reservation at admission, the cost at
// settling. Both run under the key's shard lock, so concurrent requests of
// a key can never overshoot its budget together.

// fitBudget reserves a request's worst-case cost on its key's budget, or
// tells why it cannot: ok is false with dec filled for the 429. With
// clamp_max_tokens a request that does not fit at its full output
// reservation gets a smaller one, if its input and at least clampMin
// output tokens per choice fit (q.d.out and dec.clamped change).
func (z *zone) fitBudget(s *shard, q *ask, dec *decision, nowNs int64) (sp *keySpend, worst int64, ok bool) {
	sa := q.spend
	if s.spend == nil {
		s.spend = make(map[keyPrefix]*keySpend)
	}
	kp := q.kh.prefix()
	if sp = s.spend[kp]; sp == nil {
		sp = new(keySpend)
		s.spend[kp] = sp
		sp.roll(sa.b.period, nowNs)
		z.ledgerDirty.Store(true)
	} else if sp.roll(sa.b.period, nowNs) {
		z.ledgerDirty.Store(true)
	}
	p := sa.at(q.d.in) // the input decides the tier; clamping changes only the output
	worst = p.worst(q.d.in, q.d.out)
	full := worst // before clamp_max_tokens tries a smaller reservation
	left := sa.b.nano - sp.spent - sp.reserved
	if worst <= left {
		return sp, worst, true
	}
	if q.clampMin > 0 && p.out > 0 {
		n := max(q.choices, 1)
		room := float64(left - nanoDollars(q.d.in*p.worstIn()))
		if perChoice := int64(room / p.out / float64(n)); perChoice >= q.clampMin && float64(perChoice*n) < q.d.out {
			q.d.out = float64(perChoice * n)
			if worst = p.worst(q.d.in, q.d.out); worst <= left {
				dec.clamped = perChoice
				return sp, worst, true
			}
		}
	}
	dec.overBudget, dec.never = true, true
	dec.spent, dec.reserved, dec.worst, dec.resetsAt = sp.spent, sp.reserved, full, sp.resetsAt(sa.b.period).Unix()
	return nil, 0, false
}

// settleCost replaces a finished request's worst-case reservation with
// what it cost: its usage at its price; nothing for an answer that was not
// a success; the worst case when no usage came (a stream cut short). It
// returns that cost. The caller holds the key's shard lock.
func (z *zone) settleCost(t *ticket, nowNs int64, u *usage, refund bool) int64 {
	sa := t.a.spend
	var c int64
	switch {
	case refund:
	case u != nil:
		c = sa.cost(*u)
	case t.sp != nil:
		c = t.worst
	default:
		c = sa.worst(t.a.d.in, t.a.d.out)
	}
	if t.sp != nil {
		t.sp.reserved -= t.worst
		t.sp.roll(sa.b.period, nowNs)
		before := t.sp.spent
		t.sp.spent = satAdd(before, c)
		z.ledgerDirty.Store(true)
		if b := sa.b; len(b.alerts) > 0 && b.crossed(before, t.sp.spent) {
			z.alertBudget(budgetCrossing{kh: t.a.kh, tier: t.a.tier, b: b, before: before, after: t.sp.spent, resetsAt: t.sp.resetsAt(b.period)})
		}
	}
	z.addCost(sa.label, c)
	return c
}

// costTotals are a zone's costs settled, in nano-dollars, per model label.
type costTotals struct {
	total atomic.Int64
}

// addCost counts a settled cost in the zone's total and in the metric.
func (z *zone) addCost(label string, nano int64) {
	if nano <= 0 {
		return
	}
	z.costs.total.Add(nano)
	metricCost.WithLabelValues(z.name, label).Add(usd(nano))
}

// spendOf is a key's spend (a copy), for the stats; ok is false when no
// budget has applied to it.
func (z *zone) spendOf(kh keyHash) (ks keySpend, ok bool) {
	s := z.shard(kh)
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp := s.spend[kh.prefix()]; sp != nil {
		return *sp, true
	}
	return keySpend{}, false
}

// spendAsk is what admission needs of spend for a request of a key of
// tier, filled into into: nil when no price and no budget apply.
func (h *Handler) spendAsk(tier string, req *llmRequest, into *spendAsk) *spendAsk {
	sc := &h.spend
	b := sc.budgets[tier]
	if !sc.priced && b == nil {
		return nil
	}
	m := h.modelFor(req.info.Model) // demand.model is nil for a block without limits
	label := calibStar
	if m != nil {
		label = m.Name
	}
	p, tiers, ok := sc.priceFor(m, req.info.Model, providerOf(req.parsed), req.info.NoOutput)
	// A request whose body was not read (1 request, 0 tokens) or that
	// names no model costs nothing whatever the price.
	unpriced := !ok && req.parsed != nil && req.info.Model != ""
	*into = spendAsk{p: p, tiers: tiers, b: b, label: label, unpriced: unpriced}
	return into
}

// replyUnpriced refuses a request whose model nothing prices, for a key
// with a budget: 400, model_not_priced (OpenAI). Its cost cannot be
// known, and a budget must not be dodged by naming an unpriced model.
func (h *Handler) replyUnpriced(w http.ResponseWriter, d dialect, kh keyHash, tier string, req *llmRequest) error {
	msg := "The model `" + req.info.Model + "` has no price at this gateway, and this key has a budget: a request it cannot cost is refused. " +
		"A model block's price, default_price or prices_file can price it."
	h.logger.Info("rejected", h.decisionFields(kh, tier, &req.info, req.demand,
		zap.String("outcome", outcomeInvalid), zap.String("reason", msg))...)
	return h.reply(w, d, &apiError{kind: errModelNotPriced, msg: msg}, outcomeInvalid)
}

// replyBudget answers a request that its key's budget cannot cover: 429,
// insufficient_quota (OpenAI), not to be retried before the period resets.
func (h *Handler) replyBudget(w http.ResponseWriter, d dialect, b *budget, dec decision, kh keyHash, tier string, req *llmRequest) error {
	reset := time.Unix(dec.resetsAt, 0).UTC().Format(time.RFC3339)
	msg := budgetMessage(b, dec, reset)
	h.logger.Info("rejected", h.decisionFields(kh, tier, &req.info, req.demand,
		zap.String("outcome", outcomeBudget), zap.String("reason", msg))...)
	w.Header().Set("x-llm-ratelimit-budget-reset", reset)
	h.zone.m.rejected("budget")
	return h.reply(w, d, &apiError{kind: errBudget, msg: msg, never: true}, outcomeBudget)
}

// validateSpend checks the prices, the budgets and clamp_max_tokens.
func (h *Handler) validateSpend() error {
	if err := h.DefaultPrice.check(); err != nil {
		return fmt.Errorf("default_price: %v", err)
	}
	priced := h.DefaultPrice != nil || h.PricesFile != ""
	for i := range h.Models {
		if err := h.Models[i].Price.check(); err != nil {
			return fmt.Errorf("model %s: price: %v", h.Models[i].Name, err)
		}
		priced = priced || h.Models[i].Price != nil
	}
	budgeted := h.Budget != nil
	if err := h.Budget.check(); err != nil {
		return fmt.Errorf("budget: %v", err)
	}
	for name, t := range h.Tiers {
		if err := t.Budget.check(); err != nil {
			return fmt.Errorf("tier %s: budget: %v", name, err)
		}
		budgeted = budgeted || t.Budget != nil
	}
	if err := checkBudgetAlert(h.BudgetAlert); err != nil {
		return fmt.Errorf("budget_alert: %v", err)
	}
	if len(h.BudgetAlert) > 0 && !budgeted {
		return fmt.Errorf("budget_alert needs a budget, at the top level or in a tier")
	}
	if h.ClampMaxTokens < 0 {
		return fmt.Errorf("clamp_max_tokens must be >= 1 (or absent), not %d", h.ClampMaxTokens)
	}
	if budgeted && !priced {
		return fmt.Errorf("a budget needs prices: a model block's price, default_price or prices_file")
	}
	return nil
}

// spendStats fills a key's spend fields from sp (nil: none), under the
// budget of its tier. The caller holds the key's shard lock.
func (z *zone) spendStats(k *KeyStats, sp *keySpend, tier string, nowNs int64) {
	budgets := z.budgets.Load()
	if sp == nil || budgets == nil {
		return
	}
	b := (*budgets)[tier]
	if b == nil {
		return
	}
	cur := *sp
	cur.roll(b.period, nowNs)
	spent, limit := usd(cur.spent), b.cfg.USD
	k.SpendUSD, k.BudgetUSD = &spent, &limit
	k.BudgetPeriod = b.cfg.Period
	k.BudgetResetsAt = cur.resetsAt(b.period).Format(time.RFC3339)
}

// resetSpend zeroes the spend of the key with that key_id; false when the
// zone holds no spend for it.
func (z *zone) resetSpend(keyID string) bool {
	found := false
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kp, sp := range s.spend {
			if kp.id() == keyID {
				sp.spent = 0
				found = true
			}
		}
		s.mu.Unlock()
	}
	if found {
		z.ledgerDirty.Store(true)
		if l := z.ledgerOf(); l != nil {
			l.save(z, false)
		}
	}
	return found
}

// budgetMessage is the budget 429's message: the budget, what was spent
// and is held by requests in flight, what is left, this request's worst
// case and when the period resets, each amount with the digits it needs.
func budgetMessage(b *budget, dec decision, reset string) string {
	left := max(b.nano-dec.spent-dec.reserved, 0)
	held := ""
	if dec.reserved > 0 {
		held = ", " + fmtUSD(dec.reserved) + " held by requests in flight"
	}
	return fmt.Sprintf("You exceeded your current quota: this key's %s budget of %s has %s left (%s spent%s), and this request could cost up to %s. The budget resets at %s.",
		b.cfg.Period, fmtUSD(b.nano), fmtUSD(left), fmtUSD(dec.spent), held, fmtUSD(dec.worst), reset)
}

// fmtUSD writes nano-dollars as dollars with the digits the amount needs:
// cents from a dollar up ($10.00), at least two significant digits below
// ($0.0030, $0.00012), down to the nano-dollar.
func fmtUSD(nano int64) string {
	v := usd(nano)
	decimals := 2
	if v > 0 && v < 1 {
		decimals = min(max(4, 1-int(math.Floor(math.Log10(v)))), 9)
	}
	return "$" + strconv.FormatFloat(v, 'f', decimals, 64)
}
