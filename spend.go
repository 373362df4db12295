package llmratelimit

import (
	"cmp"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Spend: what requests cost in money, and the budgets that cap it per key
// and calendar period (SPEC "Spend: prices, budgets, cost"). Admission
// reserves the worst case a request can cost; settling replaces it with
// what its usage cost. Amounts are kept in nano-dollars so that sums are
// exact.

// Price is what a model costs, in USD per million tokens.
type Price struct {
	// Input is the price of an input token that is neither read from nor
	// written to the prompt cache.
	Input float64 `json:"input"`
	// Output is the price of an output token (reasoning included).
	Output float64 `json:"output"`
	// CachedInput is the price of an input token read from the prompt
	// cache. Default: Input.
	CachedInput *float64 `json:"cached_input,omitempty"`
	// CacheWrite is the price of an input token written to the prompt
	// cache, where a provider charges those apart. Default: Input.
	CacheWrite *float64 `json:"cache_write,omitempty"`
}

// price is a Price in nano-dollars per token (USD per million × 1000).
type price struct {
	in, out, cached, write float64
}

func (p *Price) resolve() price {
	r := price{in: p.Input * 1000, out: p.Output * 1000, cached: p.Input * 1000, write: p.Input * 1000}
	if p.CachedInput != nil {
		r.cached = *p.CachedInput * 1000
	}
	if p.CacheWrite != nil {
		r.write = *p.CacheWrite * 1000
	}
	return r
}

// worstIn is the most an input token can cost: the request's tokens may be
// read from or written to the cache.
func (p price) worstIn() float64 { return max(p.in, p.cached, p.write) }

// worst is the most a request can cost, in nano-dollars: every input token
// at its dearest, the whole output reservation.
func (p price) worst(in, out float64) int64 {
	return nanoDollars(in*p.worstIn() + out*p.out)
}

// cost is what a usage costs, in nano-dollars: uncached input, cached
// input, cache writes and output, each at its price.
func (p price) cost(u usage) int64 {
	u = u.clamped()
	uncached := max(u.Read-u.Cached-u.CacheWrite, 0)
	return nanoDollars(float64(uncached)*p.in + float64(u.Cached)*p.cached +
		float64(u.CacheWrite)*p.write + float64(u.Output)*p.out)
}

// nanoDollars rounds up, and saturates instead of overflowing.
func nanoDollars(v float64) int64 {
	switch {
	case !(v > 0): // NaN too
		return 0
	case v >= math.MaxInt64/2:
		return math.MaxInt64 / 2
	}
	return int64(math.Ceil(v))
}

func usd(nano int64) float64 { return float64(nano) / 1e9 }

// Budget caps what a key may spend per calendar period.
type Budget struct {
	// USD is the most a key may spend in one period.
	USD float64 `json:"usd"`
	// Period is "daily", "weekly" (from Monday) or "monthly"; every period
	// starts at 00:00 UTC.
	Period string `json:"period"`
}

// budget is a Budget resolved.
type budget struct {
	nano   int64
	period period
	cfg    Budget
	alerts []alertAt // budget_alert's thresholds, ascending (budget_alert.go)
}

type period uint8

const (
	periodDaily period = iota
	periodWeekly
	periodMonthly
)

func parsePeriod(s string) (period, error) {
	switch s {
	case "daily":
		return periodDaily, nil
	case "weekly":
		return periodWeekly, nil
	case "monthly":
		return periodMonthly, nil
	}
	return 0, fmt.Errorf("budget period must be daily, weekly or monthly, not %q", s)
}

// start is the start of the period that holds t: 00:00 UTC of the day, of
// the Monday, of the first of the month.
func (p period) start(t time.Time) time.Time {
	t = t.UTC()
	y, m, d := t.Date()
	switch p {
	case periodWeekly:
		back := (int(t.Weekday()) + 6) % 7 // days since Monday
		return time.Date(y, m, d-back, 0, 0, 0, 0, time.UTC)
	case periodMonthly:
		return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// next is the start of the period after the one that starts at start.
func (p period) next(start time.Time) time.Time {
	switch p {
	case periodWeekly:
		return start.AddDate(0, 0, 7)
	case periodMonthly:
		return start.AddDate(0, 1, 0)
	}
	return start.AddDate(0, 0, 1)
}

// keySpend is one key's spend under a budget. It lives apart from the
// key's buckets (the sweeper drops those when idle; spend must last the
// period) and only for keys that a budget applies to.
type keySpend struct {
	start    int64 // unix seconds: the start of the period spent holds
	spent    int64 // nano-dollars settled in the period
	reserved int64 // nano-dollars of worst cases in flight
}

// roll starts a new period when nowNs is past the current one.
func (k *keySpend) roll(p period, nowNs int64) bool {
	s := p.start(time.Unix(0, nowNs)).Unix()
	if s == k.start {
		return false
	}
	if s > k.start {
		k.start, k.spent = s, 0
	}
	return true
}

// resetsAt is when the key's current period ends.
func (k *keySpend) resetsAt(p period) time.Time { return p.next(time.Unix(k.start, 0).UTC()) }

// spendConfig is a handler's prices and budgets, resolved.
type spendConfig struct {
	priced  bool                        // some price is configured: requests are costed
	prices  *atomic.Pointer[priceTable] // prices_file (its reloads swap it); nil: none
	def     *price                      // default_price
	blocks  map[*Model]price            // model blocks with a price
	budgets map[string]*budget          // by tier; "" for keys without a tier
}

// table is the prices_file table in force; nil: none.
func (sc *spendConfig) table() *priceTable {
	if sc.prices == nil {
		return nil
	}
	return sc.prices.Load()
}

// logSkipped warns once of a prices file's rows that were left out, each
// model and field named (the first 100).
func (h *Handler) logSkipped(skipped []skippedRow) {
	if len(skipped) == 0 {
		return
	}
	rows := make([]string, 0, min(len(skipped), 101))
	for i, r := range skipped {
		if i == 100 {
			rows = append(rows, fmt.Sprintf("… and %d more", len(skipped)-i))
			break
		}
		rows = append(rows, r.String())
	}
	h.logger.Warn("prices_file: rows skipped, their models are not priced by the file",
		zap.String("file", h.PricesFile), zap.Int("skipped", len(skipped)), zap.Strings("rows", rows))
}

// checkPrice reports a price that is not a finite number >= 0.
func checkPrice(v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return fmt.Errorf("price must be a number >= 0, not %v", v)
	}
	return nil
}

func (p *Price) check() error {
	if p == nil {
		return nil
	}
	for _, v := range []*float64{&p.Input, &p.Output, p.CachedInput, p.CacheWrite} {
		if v != nil {
			if err := checkPrice(*v); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *Budget) check() error {
	if b == nil {
		return nil
	}
	if math.IsNaN(b.USD) || math.IsInf(b.USD, 0) || b.USD <= 0 || b.USD > 1e9 {
		return fmt.Errorf("budget must be more than 0 and at most 1e9 USD, not %v", b.USD)
	}
	_, err := parsePeriod(b.Period)
	return err
}

func (b *Budget) resolve() *budget {
	if b == nil {
		return nil
	}
	p, _ := parsePeriod(b.Period)
	return &budget{nano: nanoDollars(b.USD * 1e9), period: p, cfg: *b}
}

// provisionSpend resolves prices_file, the prices and the budgets.
func (h *Handler) provisionSpend() error {
	sc := spendConfig{blocks: map[*Model]price{}, budgets: map[string]*budget{}}
	if h.PricesFile != "" {
		t, skipped, err := loadPricesFile(h.PricesFile)
		if err != nil {
			return fmt.Errorf("prices_file: %v", err)
		}
		h.logSkipped(skipped)
		sc.prices = new(atomic.Pointer[priceTable])
		sc.prices.Store(t)
		sc.priced = true
	}
	for i := range h.Models {
		if m := &h.Models[i]; m.Price != nil {
			sc.blocks[m] = m.Price.resolve()
			sc.priced = true
		}
	}
	if h.DefaultPrice != nil {
		p := h.DefaultPrice.resolve()
		sc.def = &p
		sc.priced = true
	}
	if b := h.Budget.resolve(); b != nil {
		sc.budgets[""] = b
	}
	for name, t := range h.Tiers {
		if b := t.Budget.resolve(); b != nil {
			sc.budgets[name] = b
		} else if b := sc.budgets[""]; b != nil {
			sc.budgets[name] = b
		}
	}
	sc.resolveAlerts(h.BudgetAlert)
	h.spend = sc
	return nil
}

// priceFor is the price of a request for model (the body's or the path's
// model name) that block matched (nil: none), sent in the format of
// provider: the block's own price, else the prices_file entry the name
// resolves to (with its long-context tiers), else default_price. ok is
// false when nothing prices it. A file entry prices a request when it sets
// the input price and, unless the request generates nothing, the output
// price.
func (sc *spendConfig) priceFor(block *Model, model, provider string, noOutput bool) (p price, tiers []priceTier, ok bool) {
	if p, ok := sc.blocks[block]; ok {
		return p, nil, true
	}
	if fp, found := sc.table().lookup(model, provider); found && fp.hasIn && (fp.hasOut || noOutput) {
		return fp.p, fp.tiers, true
	}
	if sc.def != nil {
		return *sc.def, nil, true
	}
	return price{}, nil, false
}

// spendAsk is what a request's admission needs to know of spend.
type spendAsk struct {
	p     price       // below every tier
	tiers []priceTier // long-context prices of a prices_file entry
	b     *budget     // nil: no budget applies
	label string      // the cost metric's model label: a block name or "*"
	// unpriced: nothing prices the model. It costs 0; a key with a budget
	// is refused it (model_not_priced).
	unpriced bool
}

// at is the price of the request when it reads in input tokens: a
// long-context tier's when in is above its threshold, for the whole
// request, as providers bill it. Admission asks it at the input estimate,
// settling at the input the upstream reports.
func (sa *spendAsk) at(in float64) price { return priceAt(sa.p, sa.tiers, in) }

// worst is the most the request can cost with in input and out output
// tokens reserved.
func (sa *spendAsk) worst(in, out float64) int64 { return sa.at(in).worst(in, out) }

// cost is what a usage costs: at the tier of all the input it read.
func (sa *spendAsk) cost(u usage) int64 { return sa.at(float64(u.clamped().Read)).cost(u) }

// modelLimits is the context window and the output reservation of a model
// (0: none) in the format of dialect d: its block's, else, for what the
// block does not set, the max_input_tokens and max_output_tokens of the
// prices_file entry its name resolves to.
func (h *Handler) modelLimits(m *Model, model string, d dialect) (window, maxOut int64) {
	if m != nil {
		window, maxOut = m.ContextWindow, m.MaxOutput
	}
	if window == 0 || maxOut == 0 {
		if fp, ok := h.spend.table().lookup(model, providerOf(d)); ok {
			window = cmp.Or(window, fp.maxInput)
			maxOut = cmp.Or(maxOut, fp.maxOutput)
		}
	}
	return window, maxOut
}

// providerOf is the prices file's provider of dialect d ("" for none):
// the prefix under which LiteLLM's prices file keys that provider's
// entries (<provider> for <provider>/<model>).
func providerOf(d dialect) string {
	if d == nil {
		return ""
	}
	return d.spec().pricesProvider
}
