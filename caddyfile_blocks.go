package llmratelimit

import (
	"net/http"
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The nested blocks of llm_ratelimit: tier, model, upstream and retry.

// parseRetry reads "retry off" or "retry { attempts base max jitter
// statuses max_total }"; the cursor is on "retry".
func (h *Handler) parseRetry(d *caddyfile.Dispenser) error {
	rc := new(RetryConfig)
	h.Retry = rc
	if d.NextArg() {
		if d.Val() != "off" {
			return d.Errf("retry: want \"off\" or a block, got %q", d.Val())
		}
		rc.Off = true
		return noBlock(d, "retry off")
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("retry %s: given twice", sub)
		}
		seen[sub] = true
		switch sub {
		case "attempts":
			v, err := oneArg(d, "retry attempts")
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("retry attempts: want an integer, got %q", v)
			}
			if err := checkRetryAttempts(n); err != nil {
				return d.Errf("%w", err)
			}
			rc.Attempts = &n
		case "base", "max", "max_total":
			v, err := oneArg(d, "retry "+sub)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("retry %s: want a duration such as 1s, got %q", sub, v)
			}
			if err := checkPositiveDuration("retry "+sub, dur); err != nil {
				return d.Errf("%w", err)
			}
			switch sub {
			case "base":
				rc.Base = caddy.Duration(dur)
			case "max":
				rc.Max = caddy.Duration(dur)
			default:
				rc.MaxTotal = caddy.Duration(dur)
			}
		case "jitter":
			v, err := oneArg(d, "retry jitter")
			if err != nil {
				return err
			}
			j, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return d.Errf("retry jitter: want a number, got %q", v)
			}
			if err := checkJitter(j); err != nil {
				return d.Errf("%w", err)
			}
			rc.Jitter = &j
		case "statuses":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("retry statuses: want one or more status codes")
			}
			for _, a := range args {
				code, err := strconv.Atoi(a)
				if err != nil {
					return d.Errf("retry statuses: %q is not a status code", a)
				}
				if err := checkRetryStatus(code); err != nil {
					return d.Errf("%w", err)
				}
				rc.Statuses = append(rc.Statuses, code)
			}
		default:
			return d.Errf("retry: unknown subdirective %q", sub)
		}
		if err := noBlock(d, "retry "+sub); err != nil {
			return err
		}
	}
	return nil
}

// parseUpstream reads "upstream [<name>] { <account> }"; the cursor is on
// "upstream". Both forms take the same subdirectives.
func (h *Handler) parseUpstream(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		// The unnamed block: the single account.
		if h.Upstream != nil {
			return d.Err("upstream: given twice")
		}
		if len(h.Upstreams) > 0 {
			return d.Err("upstream: an unnamed block cannot be mixed with named upstream blocks (a pool): name every account")
		}
		acct := new(Account)
		if err := parseAccount(d, "upstream", acct); err != nil {
			return err
		}
		h.Upstream = acct
		return nil
	}
	name := d.Val()
	if d.NextArg() {
		return d.Errf("upstream %s: want one name, got more: %q", name, d.Val())
	}
	if h.Upstream != nil {
		return d.Errf("upstream %s: named upstream blocks (a pool) cannot be mixed with the unnamed block: name every account", name)
	}
	if err := checkAccountName(name); err != nil {
		return d.Errf("%w", err)
	}
	for _, a := range h.Upstreams {
		if a.Name == name {
			return d.Errf("upstream %s: defined twice", name)
		}
	}
	acct := Account{Name: name}
	if err := parseAccount(d, "upstream "+name, &acct); err != nil {
		return err
	}
	h.Upstreams = append(h.Upstreams, acct)
	return nil
}

// parseAccount reads the block of an upstream line into acct: limits,
// header_up (repeated), models and priority.
func parseAccount(d *caddyfile.Dispenser, where string, acct *Account) error {
	subs := limitSetters(d, where, &acct.Limits, "rpm", "tpm", "itpm", "otpm", "concurrent")
	subs["header_up"] = func() error {
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("%s: header_up: want <field> <value>, got %d arguments", where, len(args))
		}
		if acct.HeaderUp == nil {
			acct.HeaderUp = make(map[string]string)
		}
		if _, dup := acct.HeaderUp[http.CanonicalHeaderKey(args[0])]; dup {
			return d.Errf("%s: header_up %s: given twice", where, args[0])
		}
		acct.HeaderUp[http.CanonicalHeaderKey(args[0])] = args[1]
		return nil
	}
	subs["models"] = func() error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.Errf("%s: models: want one or more model names or globs", where)
		}
		for _, m := range args {
			if err := checkModelName(m); err != nil {
				return d.Errf("%s: models: %w", where, err)
			}
		}
		acct.Models = append(acct.Models, args...)
		return nil
	}
	subs["priority"] = func() error {
		v, err := oneArg(d, where+": priority")
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return d.Errf("%s: priority: want an integer, got %q", where, v)
		}
		acct.Priority = n
		return nil
	}
	return parseBlock(d, where, subs, "header_up")
}

// parseTier reads "tier <name> { <limits> }"; the cursor is on "tier".
func (h *Handler) parseTier(d *caddyfile.Dispenser) error {
	name, err := oneArg(d, "tier")
	if err != nil {
		return err
	}
	if err := checkTierName(name); err != nil {
		return d.Errf("%w", err)
	}
	if _, dup := h.Tiers[name]; dup {
		return d.Errf("tier %s: defined twice", name)
	}
	where := "tier " + name
	var tier Tier
	subs := limitSetters(d, where, &tier.Limits, "rpm", "tpm", "itpm", "otpm", "concurrent")
	subs["lane"] = func() error {
		v, err := oneArg(d, where+": lane")
		if err != nil {
			return err
		}
		if err := checkLane(v); err != nil {
			return d.Errf("%s: %w", where, err)
		}
		tier.Lane = v
		return nil
	}
	subs["budget"] = func() (err error) {
		tier.Budget, err = parseBudget(d, where+": budget")
		return err
	}
	if err := parseBlock(d, where, subs); err != nil {
		return err
	}
	if h.Tiers == nil {
		h.Tiers = make(map[string]Tier)
	}
	h.Tiers[name] = tier
	return nil
}

// parseModel reads "model <name|glob> { ... }"; the cursor is on "model".
func (h *Handler) parseModel(d *caddyfile.Dispenser) error {
	name, err := oneArg(d, "model")
	if err != nil {
		return err
	}
	if err := checkModelName(name); err != nil {
		return d.Errf("%w", err)
	}
	for _, m := range h.Models {
		if m.Name == name {
			return d.Errf("model %s: defined twice", name)
		}
	}
	where := "model " + name
	m := Model{Name: name}
	subs := limitSetters(d, where, &m.Limits, "rpm", "tpm", "itpm", "otpm")
	for sub, field := range map[string]*int64{
		"context_window": &m.ContextWindow,
		"max_output":     &m.MaxOutput,
		"image_tokens":   &m.ImageTokens,
	} {
		subs[sub] = func() (err error) {
			*field, err = positiveInt(d, where+": "+sub)
			return err
		}
	}
	subs["token_ratio"] = func() error {
		v, err := oneArg(d, where+": token_ratio")
		if err != nil {
			return err
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return d.Errf("%s: token_ratio: must be a positive number up to 100, got %q", where, v)
		}
		if err := checkTokenRatio(f); err != nil {
			return d.Errf("%s: %w", where, err)
		}
		m.TokenRatio = f
		return nil
	}
	subs["price"] = func() (err error) {
		m.Price, err = parsePrice(d, where+": price")
		return err
	}
	if err := parseBlock(d, where, subs); err != nil {
		return err
	}
	h.Models = append(h.Models, m)
	return nil
}

// limitSetters returns a parser for each named limit that stores into l.
func limitSetters(d *caddyfile.Dispenser, where string, l *Limits, names ...string) map[string]func() error {
	subs := make(map[string]func() error, len(names))
	for _, name := range names {
		subs[name] = func() error {
			n, err := positiveInt(d, where+": "+name)
			if err != nil {
				return err
			}
			setLimit(l, name, n)
			return nil
		}
	}
	return subs
}

// parseBlock walks the block that must follow a tier or model line, calling
// the parser of each subdirective and rejecting repeats, nested tier or
// model blocks and anything else it does not know.
func parseBlock(d *caddyfile.Dispenser, where string, subs map[string]func() error, repeatable ...string) error {
	line, file := d.Line(), d.File()
	nesting := d.Nesting()
	opened := d.NextBlock(nesting)
	if !opened && !isEmptyBlockEnd(d, line, file) {
		return d.Errf("%s: expected a block { ... } after the name", where)
	}
	seen := make(map[string]bool)
	for ; opened; opened = d.NextBlock(nesting) {
		sub := d.Val()
		parse, ok := subs[sub]
		if !ok {
			switch sub {
			case "tier", "model":
				return d.Errf("%s: a %s block cannot be nested inside another block; put it at the top level of llm_ratelimit", where, sub)
			case "concurrent":
				return d.Errf("%s: concurrent is not supported per model", where)
			default:
				return d.Errf("%s: unknown subdirective %q", where, sub)
			}
		}
		if seen[sub] && !slices.Contains(repeatable, sub) {
			return d.Errf("%s: %s: given twice", where, sub)
		}
		seen[sub] = true
		if err := parse(); err != nil {
			return err
		}
		if err := noBlock(d, where+": "+sub); err != nil {
			return err
		}
	}
	return nil
}

// parseStore reads "store redis { address... url cluster sentinel username
// password tls prefix fail timeout }"; the cursor is on "store".
func (h *Handler) parseStore(d *caddyfile.Dispenser) error {
	if !d.NextArg() || d.Val() != "redis" {
		return d.Errf("store: want \"redis\", got %q", d.Val())
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	rc := new(RedisConfig)
	h.Store = &StoreConfig{Redis: rc}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("store redis %s: given twice", sub)
		}
		seen[sub] = true
		switch sub {
		case "address":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("store redis address: want <host:port>...")
			}
			rc.Address, rc.Addresses = args[0], args[1:]
			if len(rc.Addresses) == 0 {
				rc.Addresses = nil
			}
			continue
		case "cluster", "tls":
			if d.NextArg() {
				return d.Errf("store redis %s: takes no argument", sub)
			}
			if sub == "cluster" {
				rc.Cluster = true
			} else {
				rc.TLS = true
			}
			continue
		}
		v, err := oneArg(d, "store redis "+sub)
		if err != nil {
			return err
		}
		switch sub {
		case "url":
			rc.URL = v
		case "prefix":
			rc.Prefix = v
		case "sentinel":
			rc.Sentinel = v
		case "username":
			rc.Username = v
		case "password":
			rc.Password = v
		case "fail":
			if err := checkFailMode(v); err != nil {
				return d.Errf("%w", err)
			}
			rc.Fail = v
		case "timeout":
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("store redis timeout: want a duration such as 100ms, got %q", v)
			}
			if err := checkPositiveDuration("store redis timeout", dur); err != nil {
				return d.Errf("%w", err)
			}
			rc.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("store redis: unknown subdirective %q", sub)
		}
	}
	if err := checkRedisTarget(rc.Address, rc.URL); err != nil {
		return d.Errf("%w", err)
	}
	if err := checkRedisMode(rc); err != nil {
		return d.Errf("%w", err)
	}
	return nil
}
