package llmratelimit

import (
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The nested blocks of llm_ratelimit: tier, model, upstream, retry and
// store. Each is a setter of the top level that reads its line's
// arguments, then walks its block with a table of its own.

// parseTier reads "tier <name> { <limits> lane budget }"; the cursor is on
// "tier".
func (h *Handler) parseTier(d *caddyfile.Dispenser, what string) error {
	name, err := oneArg(d, what)
	if err != nil {
		return err
	}
	if err := atLine(d, checkTierName(name)); err != nil {
		return err
	}
	if _, dup := h.Tiers[name]; dup {
		return d.Errf("%s %s: defined twice", what, name)
	}
	where := what + " " + name
	var tier Tier
	subs := setters{
		"lane": func(d *caddyfile.Dispenser, what string) error {
			v, err := oneArg(d, what)
			if err != nil {
				return err
			}
			if err := checkLane(v); err != nil {
				return d.Errf("%s: %w", where, err)
			}
			tier.Lane = v
			return nil
		},
		"budget": into(&tier.Budget, parseBudget),
	}
	subs.limits(&tier.Limits, "rpm", "tpm", "itpm", "otpm", "concurrent")
	if err := namedBlock(where, subs).walk(d); err != nil {
		return err
	}
	if h.Tiers == nil {
		h.Tiers = make(map[string]Tier)
	}
	h.Tiers[name] = tier
	return nil
}

// parseModel reads "model <name|glob> { ... }"; the cursor is on "model".
func (h *Handler) parseModel(d *caddyfile.Dispenser, what string) error {
	name, err := oneArg(d, what)
	if err != nil {
		return err
	}
	if err := atLine(d, checkModelName(name)); err != nil {
		return err
	}
	for _, m := range h.Models {
		if m.Name == name {
			return d.Errf("%s %s: defined twice", what, name)
		}
	}
	where := what + " " + name
	m := Model{Name: name}
	subs := setters{
		"context_window": positive(&m.ContextWindow),
		"max_output":     positive(&m.MaxOutput),
		"image_tokens":   positive(&m.ImageTokens),
		"token_ratio": func(d *caddyfile.Dispenser, what string) error {
			f, err := floatArg(d, what, "must be a positive number up to 100")
			if err != nil {
				return err
			}
			if err := checkTokenRatio(f); err != nil {
				return d.Errf("%s: %w", where, err)
			}
			m.TokenRatio = f
			return nil
		},
		"price": into(&m.Price, parsePrice),
	}
	subs.limits(&m.Limits, "rpm", "tpm", "itpm", "otpm") // no concurrent per model
	if err := namedBlock(where, subs).walk(d); err != nil {
		return err
	}
	h.Models = append(h.Models, m)
	return nil
}

// parseUpstream reads "upstream [<name>] { <account> }"; the cursor is on
// "upstream". Both forms take the same subdirectives.
func (h *Handler) parseUpstream(d *caddyfile.Dispenser, what string) error {
	if !d.NextArg() {
		// The unnamed block: the single account.
		if h.Upstream != nil {
			return d.Errf("%s: given twice", what)
		}
		if len(h.Upstreams) > 0 {
			return d.Errf("%s: an unnamed block cannot be mixed with named upstream blocks (a pool): name every account", what)
		}
		acct := new(Account)
		if err := parseAccount(d, what, acct); err != nil {
			return err
		}
		h.Upstream = acct
		return nil
	}
	name := d.Val()
	where := what + " " + name
	if d.NextArg() {
		return d.Errf("%s: want one name, got more: %q", where, d.Val())
	}
	if h.Upstream != nil {
		return d.Errf("%s: named upstream blocks (a pool) cannot be mixed with the unnamed block: name every account", where)
	}
	if err := atLine(d, checkAccountName(name)); err != nil {
		return err
	}
	for _, a := range h.Upstreams {
		if a.Name == name {
			return d.Errf("%s: defined twice", where)
		}
	}
	acct := Account{Name: name}
	if err := parseAccount(d, where, &acct); err != nil {
		return err
	}
	h.Upstreams = append(h.Upstreams, acct)
	return nil
}

// parseAccount reads the block of an upstream line into acct: limits,
// header_up (repeated), models and priority.
func parseAccount(d *caddyfile.Dispenser, where string, acct *Account) error {
	subs := setters{
		"header_up": func(d *caddyfile.Dispenser, what string) error {
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("%s: want <field> <value>, got %d arguments", what, len(args))
			}
			field := http.CanonicalHeaderKey(args[0])
			if _, dup := acct.HeaderUp[field]; dup {
				return d.Errf("%s %s: given twice", what, args[0])
			}
			if acct.HeaderUp == nil {
				acct.HeaderUp = make(map[string]string)
			}
			acct.HeaderUp[field] = args[1]
			return nil
		},
		"models": func(d *caddyfile.Dispenser, what string) error {
			args, err := listArgs(d, what, "one or more model names or globs")
			if err != nil {
				return err
			}
			for _, m := range args {
				if err := checkModelName(m); err != nil {
					return d.Errf("%s: %w", what, err)
				}
			}
			acct.Models = append(acct.Models, args...)
			return nil
		},
		"priority": integer(&acct.Priority, nil),
	}
	subs.limits(&acct.Limits, "rpm", "tpm", "itpm", "otpm", "concurrent")
	b := namedBlock(where, subs)
	b.repeat = []string{"header_up"}
	return b.walk(d)
}

// namedBlock is the block of a tier, model or upstream line.
func namedBlock(where string, subs setters) *block {
	return &block{where: where, sep: ": ", subs: subs, named: true}
}

// parseRetry reads "retry off" or "retry { attempts base max jitter
// statuses max_total }"; the cursor is on "retry".
func (h *Handler) parseRetry(d *caddyfile.Dispenser, what string) error {
	rc := new(RetryConfig)
	h.Retry = rc
	if d.NextArg() {
		if d.Val() != "off" {
			return d.Errf("%s: want \"off\" or a block, got %q", what, d.Val())
		}
		rc.Off = true
		return noBlock(d, what+" off")
	}
	b := block{where: what, sep: " ", subs: setters{
		"attempts": func(d *caddyfile.Dispenser, what string) error {
			var n int
			if err := integer(&n, checkRetryAttempts)(d, what); err != nil {
				return err
			}
			rc.Attempts = &n
			return nil
		},
		"base":      duration(&rc.Base, "1s", checkPositiveDuration),
		"max":       duration(&rc.Max, "1s", checkPositiveDuration),
		"max_total": duration(&rc.MaxTotal, "1s", checkPositiveDuration),
		"jitter": func(d *caddyfile.Dispenser, what string) error {
			j, err := floatArg(d, what, "want a number")
			if err != nil {
				return err
			}
			if err := atLine(d, checkJitter(j)); err != nil {
				return err
			}
			rc.Jitter = &j
			return nil
		},
		"statuses": func(d *caddyfile.Dispenser, what string) error {
			args, err := listArgs(d, what, "one or more status codes")
			if err != nil {
				return err
			}
			for _, a := range args {
				code, err := strconv.Atoi(a)
				if err != nil {
					return d.Errf("%s: %q is not a status code", what, a)
				}
				if err := atLine(d, checkRetryStatus(code)); err != nil {
					return err
				}
				rc.Statuses = append(rc.Statuses, code)
			}
			return nil
		},
	}}
	return b.walk(d)
}

// parseStore reads "store redis { address... url cluster sentinel username
// password tls prefix fail timeout }"; the cursor is on "store".
func (h *Handler) parseStore(d *caddyfile.Dispenser, what string) error {
	if !d.NextArg() || d.Val() != "redis" {
		return d.Errf("%s: want \"redis\", got %q", what, d.Val())
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	rc := new(RedisConfig)
	h.Store = &StoreConfig{Redis: rc}
	b := block{where: what + " redis", sep: " ", subs: setters{
		"address": func(d *caddyfile.Dispenser, what string) error {
			args, err := listArgs(d, what, "<host:port>...")
			if err != nil {
				return err
			}
			rc.Address = args[0]
			if len(args) > 1 {
				rc.Addresses = args[1:]
			}
			return nil
		},
		"url":      text(&rc.URL),
		"cluster":  flag(&rc.Cluster),
		"sentinel": text(&rc.Sentinel),
		"username": text(&rc.Username),
		"password": text(&rc.Password),
		"tls":      flag(&rc.TLS),
		"prefix":   text(&rc.Prefix),
		"fail": func(d *caddyfile.Dispenser, what string) error {
			v, err := oneArg(d, what)
			if err != nil {
				return err
			}
			if err := atLine(d, checkFailMode(v)); err != nil {
				return err
			}
			rc.Fail = v
			return nil
		},
		"timeout": duration(&rc.Timeout, "100ms", checkPositiveDuration),
	}}
	if err := b.walk(d); err != nil {
		return err
	}
	if err := atLine(d, checkRedisTarget(rc.Address, rc.URL)); err != nil {
		return err
	}
	return atLine(d, checkRedisMode(rc))
}
