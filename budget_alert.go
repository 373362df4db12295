package llmratelimit

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"
)

// Budget alerts (SPEC "Budget alerts as Caddy events"): budget_alert names
// percents of a key's budget; when the key's spend first reaches one of
// them in a period, the event llm_ratelimit.budget_threshold goes out
// through Caddy's events app, for any events handler to act on.
//
// A threshold fires on the settle that carries the spend across it: the
// spend before that settle is below the threshold, the spend after it is
// at or above. Nothing else is remembered, and nothing else is needed:
//   - a new period starts at zero spend, so every threshold fires again;
//   - a restart finds the spend of the period in the ledger (or in Redis),
//     above the thresholds already crossed, so those do not fire again. A
//     crash loses up to ledgerFlush of spend, and a threshold crossed in
//     that window fires again when the spend reaches it again;
//   - the admin API's spend reset starts the period's spend over, and the
//     thresholds with it;
//   - under store redis the settle script adds the cost with HINCRBY, which
//     Redis applies one at a time across every instance: the spans (before,
//     after] of all the settles are disjoint, so exactly one settle, on one
//     instance, carries the spend across each threshold.
//
// The check is a comparison under the lock the settle already holds, and
// only for budgets with thresholds. The event goes out from a goroutine of
// its own, after the settle: event handlers run synchronously inside
// Emit, and a slow or failing one never holds a lock or a request.

// budgetThresholdEvent is the name of the event.
const budgetThresholdEvent = "llm_ratelimit.budget_threshold"

// maxAlertPercent bounds a threshold: spend can pass its budget only by
// what estimates missed.
const maxAlertPercent = 1000

// alertAt is one threshold of a budget: its percent, and the spend in
// nano-dollars that reaches it.
type alertAt struct {
	percent float64
	nano    int64
}

// checkBudgetAlert reports a threshold that is not a number above 0 and at
// most maxAlertPercent, or one given twice.
func checkBudgetAlert(percents []float64) error {
	for i, p := range percents {
		if math.IsNaN(p) || p <= 0 || p > maxAlertPercent {
			return fmt.Errorf("a threshold must be a percent above 0 and at most %d, not %v", maxAlertPercent, p)
		}
		if slices.Contains(percents[:i], p) {
			return fmt.Errorf("threshold %v given twice", p)
		}
	}
	return nil
}

// resolveAlerts gives every budget of sc its thresholds, ascending.
func (sc *spendConfig) resolveAlerts(percents []float64) {
	if len(percents) == 0 {
		return
	}
	sorted := slices.Sorted(slices.Values(percents))
	for _, b := range sc.budgets { // tiers without a budget of their own share the top-level one
		b.alerts = make([]alertAt, len(sorted))
		for i, p := range sorted {
			b.alerts[i] = alertAt{percent: p, nano: alertNano(b.nano, p)}
		}
	}
}

// alertNano is the spend that reaches percent of a budget of nano
// nano-dollars: 100 % is the budget exactly.
func alertNano(nano int64, percent float64) int64 {
	if percent == 100 {
		return nano
	}
	return nanoDollars(float64(nano) * percent / 100)
}

// crossed tells whether spend going from before to after reaches one of
// b's thresholds.
func (b *budget) crossed(before, after int64) bool {
	for _, a := range b.alerts {
		if a.nano > after {
			return false
		}
		if a.nano > before {
			return true
		}
	}
	return false
}

// budgetCrossing is a settle that carried a key's spend across thresholds
// of its budget.
type budgetCrossing struct {
	kh            keyHash
	tier          string
	b             *budget
	before, after int64     // nano-dollars spent in the period, before and after the settle
	resetsAt      time.Time // the end of the period the spend counts in
	shared        bool      // settled in the shared store, not in this process
}

// alertBudget emits, from a goroutine of its own, the events of the
// thresholds that c crossed (b.crossed said it crossed some). The caller
// may hold the key's shard lock.
func (z *zone) alertBudget(c budgetCrossing) { go z.emitBudget(c) }

// emitBudget sends one event per threshold crossed, lowest first, through
// the events app of the latest config that takes the zone with
// budget_alert, and logs each. Spend settled in this process in a zone
// whose spend lives in Redis (fail open, while Redis cannot be reached) is
// this instance's alone: it alerts nothing.
func (z *zone) emitBudget(c budgetCrossing) {
	s := z.alerts.current()
	if s == nil || (s.shared && !c.shared) {
		return
	}
	keyID := c.kh.id()
	for _, a := range c.b.alerts {
		if a.nano > c.after {
			break
		}
		if a.nano <= c.before {
			continue
		}
		s.logger.Info("budget threshold reached", zap.String("zone", z.name), zap.String("key_id", keyID),
			zap.String("tier", c.tier), zap.Float64("percent", a.percent), zap.Float64("spent_usd", usd(c.after)),
			zap.Float64("budget_usd", c.b.cfg.USD), zap.String("period", c.b.cfg.Period))
		if s.app == nil || !s.app.ShouldEmit(budgetThresholdEvent) {
			continue
		}
		s.app.Emit(s.ctx, budgetThresholdEvent, map[string]any{
			"zone":       z.name,
			"key_id":     keyID,
			"tier":       c.tier,
			"percent":    a.percent,
			"spent_usd":  usd(c.after),
			"budget_usd": c.b.cfg.USD,
			"period":     c.b.cfg.Period,
			"resets_at":  c.resetsAt.UTC().Format(time.RFC3339),
		})
	}
}

// alertSink is where a handler with budget_alert sends the zone's budget
// events: its config's events app and context (the event's origin is the
// handler).
type alertSink struct {
	app    *caddyevents.App // nil: no events app; the alerts are only logged
	ctx    caddy.Context
	logger *zap.Logger
	shared bool // the handler keeps spend in Redis
}

// alertSinks are the sinks of the configs that take a zone with
// budget_alert, oldest first. The zone outlives configs: the latest
// config's sink is the one in force, also for requests that an older
// config admitted and that settle after a reload. A config that is let go
// (replaced, or one that failed to load) takes its sink away.
type alertSinks struct {
	mu   sync.Mutex
	list []*alertSink
}

func (a *alertSinks) add(s *alertSink) {
	a.mu.Lock()
	a.list = append(a.list, s)
	a.mu.Unlock()
}

func (a *alertSinks) remove(s *alertSink) {
	a.mu.Lock()
	if i := slices.Index(a.list, s); i >= 0 {
		a.list = slices.Delete(a.list, i, i+1)
	}
	a.mu.Unlock()
}

func (a *alertSinks) current() *alertSink {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.list) == 0 {
		return nil
	}
	return a.list[len(a.list)-1]
}

// provisionAlerts gives the zone this handler's sink, when it has
// budget_alert. A config without the events app (only a bare Context, as
// in an embedding) alerts in its log only.
func (h *Handler) provisionAlerts(ctx caddy.Context) {
	if len(h.BudgetAlert) == 0 {
		return
	}
	s := &alertSink{ctx: ctx, logger: h.logger, shared: h.rs != nil}
	app, err := ctx.AppIfConfigured("events")
	switch {
	case err == nil:
		s.app, _ = app.(*caddyevents.App)
	case !errors.Is(err, caddy.ErrNotConfigured):
		h.logger.Warn("budget_alert: the events app cannot be had; budget alerts are only logged", zap.Error(err))
	}
	h.alertSink = s
	h.zone.alerts.add(s)
}

// releaseAlerts takes this handler's sink away from the zone.
func (h *Handler) releaseAlerts() {
	if h.alertSink != nil {
		h.zone.alerts.remove(h.alertSink)
	}
}
