package llmratelimit

import (
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile fills h from the llm_ratelimit directive. It only
// parses: it counts arguments, reads numbers, sizes and durations, walks
// the blocks and rejects repeats and unknown subdirectives. Defaults, key
// files and zones are Provision's business, and the range of a value is
// Validate's: where a value is out of range the parser returns the error
// of the very check Validate makes (validate.go), at the value's line.
// Syntax:
//
//	llm_ratelimit [<matcher>] {
//		zone        <name>
//		key         <placeholder template>
//		format      auto|openai|anthropic|gemini
//		max_body    <size>
//		rpm <n>  tpm <n>  itpm <n>  otpm <n>  concurrent <n>
//		tier <name> {
//			rpm <n>  tpm <n>  itpm <n>  otpm <n>  concurrent <n>
//			lane interactive|batch
//			budget <usd> daily|weekly|monthly
//		}
//		api_key     <key | sha256:<hex>> <tier>
//		keys_file   <path>
//		require_known_keys
//		model <name | glob> {
//			rpm <n>  tpm <n>  itpm <n>  otpm <n>
//			context_window <n>
//			max_output     <n>
//			token_ratio    <float>
//			image_tokens   <n>
//			price input <usd> output <usd> [cached_input <usd>] [cache_write <usd>]
//		}
//		default_price input <usd> output <usd> [cached_input <usd>] [cache_write <usd>]
//		prices_file <path>
//		budget <usd> daily|weekly|monthly
//		budget_alert <percent>...
//		clamp_max_tokens [<min>]
//		usage_retention <days> | off
//		default_max_output <n>
//		learn_limits on|off
//		calibrate on|off
//		headers on|off
//		dry_run
//		key_info    [<path>]             # default path /v1/llm_ratelimit/key
//		upstream [<name>] {               # unnamed: the single account; named, repeated: a pool
//			rpm <n>  tpm <n>  itpm <n>  otpm <n>  concurrent <n>
//			header_up <field> <value>     # repeated
//			models    <name|glob>...
//			priority  <n>
//		}
//		max_wait    <duration>
//		max_queue   <n>
//		max_keys    <n> | -1
//		store redis {
//			address  <host:port>...      # one, a cluster's seed nodes, or the Sentinels
//			url      <redis://...|rediss://...>
//			cluster
//			sentinel <master name>
//			username <name>
//			password <secret>            # placeholders work: {env.REDIS_PASSWORD}
//			tls
//			prefix  <string>
//			fail    open|closed
//			timeout <duration>
//		}
//		retry off
//		retry {
//			attempts  <n>
//			base      <duration>
//			max       <duration>
//			jitter    <float>
//			statuses  <status> ...
//			max_total <duration>
//		}
//	}
//
// <n> is a positive integer (retry attempts may be 0): a limit is left out
// for "unlimited". store redis needs address or url. Every subdirective
// may be given once, inside its block too, except tier, api_key and model,
// which repeat with distinct names; retry is either off or a block. Errors
// carry the file and line of the offending token.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the directive name; Caddy has stripped any matcher
	if d.NextArg() {
		return d.ArgErr()
	}

	seen := make(map[string]bool)
	type pendingKey struct {
		tier string
		at   caddyfile.Token // the api_key token, for the error's file and line
	}
	var pending []pendingKey
	keys := make(map[keyHash]bool)

	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		switch sub {
		case "tier":
			if err := h.parseTier(d); err != nil {
				return err
			}
			continue
		case "model":
			if err := h.parseModel(d); err != nil {
				return err
			}
			continue
		case "store":
			if seen[sub] {
				return d.Errf("%s: given twice", sub)
			}
			seen[sub] = true
			if err := h.parseStore(d); err != nil {
				return err
			}
			continue
		case "upstream":
			if err := h.parseUpstream(d); err != nil {
				return err
			}
			continue
		case "retry":
			if seen[sub] {
				return d.Errf("%s: given twice", sub)
			}
			seen[sub] = true
			if err := h.parseRetry(d); err != nil {
				return err
			}
			continue
		case "api_key":
			at := d.Token()
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("api_key: want <key | sha256:<hex>> <tier>, got %d arguments", len(args))
			}
			kh, err := parseKeySpec(args[0])
			if err != nil {
				// Never echo the key itself.
				return d.Errf("api_key: %v", err)
			}
			if keys[kh] {
				return d.Err("api_key: the same key is given twice")
			}
			keys[kh] = true
			// An empty or undefined tier is reported after the block.
			h.APIKeys = append(h.APIKeys, APIKey{Key: args[0], Tier: args[1]})
			pending = append(pending, pendingKey{tier: args[1], at: at})
			if err := noBlock(d, sub); err != nil {
				return err
			}
			continue
		}

		// Everything else is a single setting: given at most once, no block.
		if seen[sub] {
			return d.Errf("%s: given twice", sub)
		}
		seen[sub] = true
		switch sub {
		case "zone":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			h.Zone = v
		case "key":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			h.Key = v
		case "format":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			if err := checkFormat(v); err != nil {
				return d.Errf("%w", err)
			}
			h.Format = v
		case "max_body":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil {
				return d.Errf("max_body: bad size %q, want e.g. 16MiB, 10MB or plain bytes", v)
			}
			if size > math.MaxInt64 {
				return d.Errf("max_body: size %q is too large", v)
			}
			if err := checkMaxBody(int64(size)); err != nil {
				return d.Errf("%w", err)
			}
			h.MaxBody = int64(size)
		case "rpm", "tpm", "itpm", "otpm", "concurrent":
			n, err := positiveInt(d, sub)
			if err != nil {
				return err
			}
			setLimit(&h.Limits, sub, n)
		case "keys_file":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			h.KeysFile = v
		case "require_known_keys":
			if err := noArgs(d, sub); err != nil {
				return err
			}
			h.RequireKnownKeys = true
		case "max_wait":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("max_wait: want a duration such as 30s, got %q", v)
			}
			if err := checkMaxWait(dur); err != nil {
				return d.Errf("%w", err)
			}
			h.MaxWait = caddy.Duration(dur)
		case "max_keys":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("max_keys: want an integer, got %q", v)
			}
			if err := checkMaxKeys(n); err != nil {
				return d.Errf("%w", err)
			}
			h.MaxKeys = n
		case "max_queue":
			n, err := positiveInt(d, sub)
			if err != nil {
				return err
			}
			h.MaxQueue = int(n)
		case "default_max_output":
			n, err := positiveInt(d, sub)
			if err != nil {
				return err
			}
			h.DefaultMaxOutput = n
		case "learn_limits", "calibrate", "headers":
			on, err := onOff(d, sub)
			if err != nil {
				return err
			}
			switch sub {
			case "calibrate":
				h.Calibrate = &on
			case "learn_limits":
				h.LearnLimits = &on
			default:
				h.Headers = &on
			}
		case "default_price":
			p, err := parsePrice(d, sub)
			if err != nil {
				return err
			}
			h.DefaultPrice = p
		case "prices_file":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			h.PricesFile = v
		case "budget":
			b, err := parseBudget(d, sub)
			if err != nil {
				return err
			}
			h.Budget = b
		case "budget_alert":
			v, err := parseBudgetAlert(d)
			if err != nil {
				return err
			}
			h.BudgetAlert = v
		case "clamp_max_tokens":
			n, err := parseClamp(d)
			if err != nil {
				return err
			}
			h.ClampMaxTokens = n
		case "dry_run":
			if err := noArgs(d, sub); err != nil {
				return err
			}
			h.DryRun = true
		case "key_info":
			p, err := parseKeyInfo(d)
			if err != nil {
				return err
			}
			h.KeyInfo = p
		case "usage_retention":
			n, err := parseUsageRetention(d)
			if err != nil {
				return err
			}
			h.UsageRetention = n
		default:
			return d.Errf("unknown subdirective %q", sub)
		}
		if err := noBlock(d, sub); err != nil {
			return err
		}
	}

	// Tiers may be defined after the api_key lines that name them, so the
	// check waits for the end of the block and reports the api_key's line.
	for _, p := range pending {
		if _, ok := h.Tiers[p.tier]; !ok {
			ed := caddyfile.NewDispenser([]caddyfile.Token{p.at})
			ed.Next()
			return ed.Errf("api_key: unknown tier %q", p.tier)
		}
	}
	return nil
}

// isEmptyBlockEnd reports whether NextBlock just consumed "{ }" opened on
// the given line: the cursor is then on the closing brace and the token
// before it is the opening brace on the name's line.
func isEmptyBlockEnd(d *caddyfile.Dispenser, line int, file string) bool {
	if d.Val() != "}" || !d.Prev() {
		return false
	}
	ok := d.Val() == "{" && d.Line() == line && d.File() == file
	d.Next()
	return ok
}

// oneArg reads exactly one argument.
func oneArg(d *caddyfile.Dispenser, what string) (string, error) {
	if !d.NextArg() {
		return "", d.Errf("%s: wants one argument", what)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: wants one argument, got more: %q", what, d.Val())
	}
	return v, nil
}

// onOff reads one argument that must be on or off.
func onOff(d *caddyfile.Dispenser, what string) (bool, error) {
	v, err := oneArg(d, what)
	if err != nil {
		return false, err
	}
	switch v {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, d.Errf("%s: must be on or off, got %q", what, v)
}

// noArgs rejects arguments on a flag line.
func noArgs(d *caddyfile.Dispenser, what string) error {
	if d.NextArg() {
		return d.Errf("%s: takes no arguments, got %q", what, d.Val())
	}
	return nil
}

// noBlock rejects a block after a line that takes none.
func noBlock(d *caddyfile.Dispenser, what string) error {
	if d.NextBlock(d.Nesting()) {
		d.Prev() // report the line of the opening brace
		return d.Errf("%s: takes no block", what)
	}
	return nil
}

// positiveInt reads one integer argument and applies checkPositive to it:
// in the Caddyfile a limit is simply left out for "unlimited", so 0 is an
// error.
func positiveInt(d *caddyfile.Dispenser, what string) (int64, error) {
	v, err := oneArg(d, what)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, d.Errf("%s: must be a positive integer, got %q", what, v)
	}
	if err := checkPositive(what, n); err != nil {
		return 0, d.Errf("%w", err)
	}
	return n, nil
}

func setLimit(l *Limits, name string, n int64) {
	switch name {
	case "rpm":
		l.RPM = n
	case "tpm":
		l.TPM = n
	case "itpm":
		l.ITPM = n
	case "otpm":
		l.OTPM = n
	case "concurrent":
		l.Concurrent = n
	}
}

// parseKeyInfo reads "key_info [<path>]": the path, by default
// defaultKeyInfoPath.
func parseKeyInfo(d *caddyfile.Dispenser) (string, error) {
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
		return defaultKeyInfoPath, nil
	case 1:
		if err := checkKeyInfo(args[0]); err != nil {
			return "", d.Errf("%w", err)
		}
		return args[0], nil
	}
	return "", d.Errf("key_info: want at most one argument, <path>")
}
