package llmratelimit

import (
	"math"
	"time"

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
//		format      auto|<a registered format's name>
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
// may be given once, inside its block too, except tier, model, api_key and
// named upstream blocks, which repeat with distinct names, and header_up,
// once per field; retry is either off or a block. Errors carry the file
// and line of the offending token.
//
// Every block, this one included, is read the same way: a table from
// subdirective name to a setter, walked by block.walk (caddyfile_args.go).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the directive name; Caddy has stripped any matcher
	if d.NextArg() {
		return d.ArgErr()
	}
	var keys apiKeyLines
	top := block{
		subs:   h.topSetters(&keys),
		repeat: []string{"tier", "model", "upstream", "api_key"},
		nested: []string{"tier", "model", "upstream", "store", "retry"},
	}
	if err := top.walk(d); err != nil {
		return err
	}
	return keys.checkTiers(h.Tiers)
}

// topSetters is the grammar of llm_ratelimit's own block.
func (h *Handler) topSetters(keys *apiKeyLines) setters {
	s := setters{
		"zone": text(&h.Zone),
		"key":  text(&h.Key),
		"format": func(d *caddyfile.Dispenser, what string) error {
			v, err := oneArg(d, what)
			if err != nil {
				return err
			}
			if err := atLine(d, checkFormat(v)); err != nil {
				return err
			}
			h.Format = v
			return nil
		},
		"max_body":           h.setMaxBody,
		"keys_file":          text(&h.KeysFile),
		"require_known_keys": flag(&h.RequireKnownKeys),
		"api_key": func(d *caddyfile.Dispenser, what string) error {
			return keys.add(d, what, h)
		},
		"tier":     h.parseTier,
		"model":    h.parseModel,
		"upstream": h.parseUpstream,
		"store":    h.parseStore,
		"retry":    h.parseRetry,
		"max_wait": duration(&h.MaxWait, "30s", func(_ string, v time.Duration) error {
			return checkMaxWait(v)
		}),
		"max_queue":          positive(&h.MaxQueue),
		"max_keys":           integer(&h.MaxKeys, checkMaxKeys),
		"default_max_output": positive(&h.DefaultMaxOutput),
		"learn_limits":       onOffSetter(&h.LearnLimits),
		"calibrate":          onOffSetter(&h.Calibrate),
		"headers":            onOffSetter(&h.Headers),
		"dry_run":            flag(&h.DryRun),
		"key_info":           into(&h.KeyInfo, parseKeyInfo),
		// Spend (caddyfile_spend.go) and usage (caddyfile_usage.go).
		"default_price":    into(&h.DefaultPrice, parsePrice),
		"prices_file":      text(&h.PricesFile),
		"budget":           into(&h.Budget, parseBudget),
		"budget_alert":     into(&h.BudgetAlert, parseBudgetAlert),
		"clamp_max_tokens": into(&h.ClampMaxTokens, parseClamp),
		"usage_retention":  into(&h.UsageRetention, parseUsageRetention),
	}
	return s.limits(&h.Limits, "rpm", "tpm", "itpm", "otpm", "concurrent")
}

// setMaxBody reads "max_body <size>": 16MiB, 10MB or plain bytes.
func (h *Handler) setMaxBody(d *caddyfile.Dispenser, what string) error {
	v, err := oneArg(d, what)
	if err != nil {
		return err
	}
	size, err := humanize.ParseBytes(v)
	if err != nil {
		return d.Errf("%s: bad size %q, want e.g. 16MiB, 10MB or plain bytes", what, v)
	}
	if size > math.MaxInt64 {
		return d.Errf("%s: size %q is too large", what, v)
	}
	if err := atLine(d, checkMaxBody(int64(size))); err != nil {
		return err
	}
	h.MaxBody = int64(size)
	return nil
}

// apiKeyLines are the api_key lines read so far: their keys, against
// repeats, and their tiers, which are checked when the block is done
// because a tier may be defined after the api_key lines that name it.
type apiKeyLines struct {
	seen    map[keyHash]bool
	pending []pendingKey
}

// pendingKey is an api_key line's tier, to be checked.
type pendingKey struct {
	tier string
	at   caddyfile.Token // the api_key token, for the error's file and line
}

// add reads "api_key <key | sha256:<hex>> <tier>" into h.
func (k *apiKeyLines) add(d *caddyfile.Dispenser, what string, h *Handler) error {
	at := d.Token()
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Errf("%s: want <key | sha256:<hex>> <tier>, got %d arguments", what, len(args))
	}
	kh, err := parseKeySpec(args[0])
	if err != nil {
		// Never echo the key itself.
		return d.Errf("%s: %v", what, err)
	}
	if k.seen[kh] {
		return d.Errf("%s: the same key is given twice", what)
	}
	if k.seen == nil {
		k.seen = make(map[keyHash]bool)
	}
	k.seen[kh] = true
	// An empty or undefined tier is reported after the block.
	h.APIKeys = append(h.APIKeys, APIKey{Key: args[0], Tier: args[1]})
	k.pending = append(k.pending, pendingKey{tier: args[1], at: at})
	return nil
}

// checkTiers reports the first api_key line whose tier is not defined, at
// that line.
func (k *apiKeyLines) checkTiers(tiers map[string]Tier) error {
	for _, p := range k.pending {
		if _, ok := tiers[p.tier]; !ok {
			ed := caddyfile.NewDispenser([]caddyfile.Token{p.at})
			ed.Next()
			return ed.Errf("api_key: unknown tier %q", p.tier)
		}
	}
	return nil
}

// parseKeyInfo reads "key_info [<path>]": the path, by default
// defaultKeyInfoPath.
func parseKeyInfo(d *caddyfile.Dispenser, what string) (string, error) {
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
	return "", d.Errf("%s: want at most one argument, <path>", what)
}
