package llmratelimit

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The Caddyfile's spend subdirectives (SPEC "Spend: prices, budgets,
// cost"):
//
//	model <name|glob> {
//		price input <usd> output <usd> [cached_input <usd>] [cache_write <usd>]   # per million tokens
//	}
//	default_price input <usd> output <usd> [cached_input <usd>] [cache_write <usd>]
//	prices_file <path>
//	budget <usd> daily|weekly|monthly    # at the top level and in a tier
//	clamp_max_tokens [<min>]             # <min> default 256
//	budget_alert <percent>...            # e.g. 50 80 100 (SPEC "Budget alerts as Caddy events")

// defaultClampMin is clamp_max_tokens' <min> when it is not given.
const defaultClampMin = 256

// parsePrice reads the arguments of price or default_price; the cursor is
// on the subdirective.
func parsePrice(d *caddyfile.Dispenser, where string) (*Price, error) {
	args := d.RemainingArgs()
	if len(args) == 0 || len(args)%2 != 0 {
		return nil, d.Errf("%s: want input <usd> output <usd> [cached_input <usd>] [cache_write <usd>]", where)
	}
	p := new(Price)
	seen := map[string]bool{}
	for i := 0; i < len(args); i += 2 {
		name, raw := args[i], args[i+1]
		if seen[name] {
			return nil, d.Errf("%s: %s given twice", where, name)
		}
		seen[name] = true
		v, err := strconv.ParseFloat(raw, 64)
		if err == nil {
			err = checkPrice(v)
		}
		if err != nil {
			return nil, d.Errf("%s: %s: must be a number >= 0 (USD per million tokens), got %q", where, name, raw)
		}
		switch name {
		case "input":
			p.Input = v
		case "output":
			p.Output = v
		case "cached_input":
			p.CachedInput = &v
		case "cache_write":
			p.CacheWrite = &v
		default:
			return nil, d.Errf("%s: unknown price %q (want input, output, cached_input, cache_write)", where, name)
		}
	}
	if !seen["input"] || !seen["output"] {
		return nil, d.Errf("%s: input and output prices are required", where)
	}
	return p, nil
}

// parseBudget reads "budget <usd> daily|weekly|monthly"; the cursor is on
// budget.
func parseBudget(d *caddyfile.Dispenser, where string) (*Budget, error) {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return nil, d.Errf("%s: want <usd> daily|weekly|monthly", where)
	}
	v, err := strconv.ParseFloat(args[0], 64)
	if err != nil {
		return nil, d.Errf("%s: amount must be a number of USD, got %q", where, args[0])
	}
	b := &Budget{USD: v, Period: args[1]}
	if err := b.check(); err != nil {
		return nil, d.Errf("%s: %v", where, err)
	}
	return b, nil
}

// parseClamp reads "clamp_max_tokens [<min>]".
func parseClamp(d *caddyfile.Dispenser, what string) (int64, error) {
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
		return defaultClampMin, nil
	case 1:
		n, err := strconv.ParseInt(args[0], 10, 64)
		if err != nil || n < 1 {
			return 0, d.Errf("%s: <min> must be a positive integer, got %q", what, args[0])
		}
		return n, nil
	}
	return 0, d.Errf("%s: want at most one argument, <min>", what)
}

// parseBudgetAlert reads "budget_alert <percent>..."; the cursor is on
// budget_alert.
func parseBudgetAlert(d *caddyfile.Dispenser, what string) ([]float64, error) {
	args, err := listArgs(d, what, "one or more percents of the budget, e.g. budget_alert 50 80 100")
	if err != nil {
		return nil, err
	}
	percents := make([]float64, len(args))
	for i, a := range args {
		v, err := strconv.ParseFloat(strings.TrimSuffix(a, "%"), 64)
		if err != nil {
			return nil, d.Errf("%s: %q is not a percent", what, a)
		}
		percents[i] = v
	}
	if err := checkBudgetAlert(percents); err != nil {
		return nil, d.Errf("%s: %v", what, err)
	}
	return percents, nil
}
