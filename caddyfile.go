package llmratelimit

import (
	"math"
	"path"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile fills h from the llm_ratelimit directive. It only
// parses: defaults, key files and zones are Provision's business. Syntax:
//
//	llm_ratelimit [<matcher>] {
//		zone        <name>
//		key         <placeholder template>
//		format      auto|openai|anthropic
//		max_body    <size>
//		rpm <n>  tpm <n>  itpm <n>  otpm <n>  concurrent <n>
//		tier <name> {
//			rpm <n>  tpm <n>  itpm <n>  otpm <n>  concurrent <n>
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
//		}
//		default_max_output <n>
//		headers on|off
//		dry_run
//	}
//
// Every subdirective may be given once, except tier, api_key and model,
// which repeat with distinct names. Errors carry the file and line of the
// offending token.
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
			if args[1] == "" {
				return d.Err("api_key: empty tier name")
			}
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
			switch v {
			case "auto", "openai", "anthropic":
			default:
				return d.Errf("format: must be auto, openai or anthropic, got %q", v)
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
			if size == 0 || size > math.MaxInt64 {
				return d.Errf("max_body: must be a positive size, got %q", v)
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
		case "default_max_output":
			n, err := positiveInt(d, sub)
			if err != nil {
				return err
			}
			h.DefaultMaxOutput = n
		case "headers":
			v, err := oneArg(d, sub)
			if err != nil {
				return err
			}
			var on bool
			switch v {
			case "on":
				on = true
			case "off":
				on = false
			default:
				return d.Errf("headers: must be on or off, got %q", v)
			}
			h.Headers = &on
		case "dry_run":
			if err := noArgs(d, sub); err != nil {
				return err
			}
			h.DryRun = true
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
			if err != nil || n < 0 || n > 100 {
				return d.Errf("retry attempts: want an integer 0..100, got %q", v)
			}
			rc.Attempts = &n
		case "base", "max", "max_total":
			v, err := oneArg(d, "retry "+sub)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("retry %s: want a positive duration such as 1s, got %q", sub, v)
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
			if err != nil || math.IsNaN(j) || j < 0 || j > 1 {
				return d.Errf("retry jitter: want a number within 0..1, got %q", v)
			}
			rc.Jitter = &j
		case "statuses":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("retry statuses: want one or more status codes")
			}
			for _, a := range args {
				code, err := strconv.Atoi(a)
				if err != nil || code < 400 || code > 599 {
					return d.Errf("retry statuses: %q is not an error status (400..599)", a)
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

// parseTier reads "tier <name> { <limits> }"; the cursor is on "tier".
func (h *Handler) parseTier(d *caddyfile.Dispenser) error {
	name, err := oneArg(d, "tier")
	if err != nil {
		return err
	}
	if name == "" {
		return d.Err("tier: a tier needs a name")
	}
	if _, dup := h.Tiers[name]; dup {
		return d.Errf("tier %s: defined twice", name)
	}
	where := "tier " + name
	var l Limits
	if err := parseBlock(d, where, limitSetters(d, where, &l, "rpm", "tpm", "itpm", "otpm", "concurrent")); err != nil {
		return err
	}
	if h.Tiers == nil {
		h.Tiers = make(map[string]Limits)
	}
	h.Tiers[name] = l
	return nil
}

// parseModel reads "model <name|glob> { ... }"; the cursor is on "model".
func (h *Handler) parseModel(d *caddyfile.Dispenser) error {
	name, err := oneArg(d, "model")
	if err != nil {
		return err
	}
	if name == "" {
		return d.Err("model: a model needs a name")
	}
	for _, m := range h.Models {
		if m.Name == name {
			return d.Errf("model %s: defined twice", name)
		}
	}
	if _, err := path.Match(name, ""); err != nil {
		return d.Errf("model %s: bad glob pattern: %v", name, err)
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
		if err != nil || !(f > 0) || math.IsInf(f, 0) || f > 100 {
			return d.Errf("%s: token_ratio: must be a positive number up to 100, got %q", where, v)
		}
		m.TokenRatio = f
		return nil
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
func parseBlock(d *caddyfile.Dispenser, where string, subs map[string]func() error) error {
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
		if seen[sub] {
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

// positiveInt reads one argument that must be an integer > 0. In the
// Caddyfile a limit is simply left out for "unlimited", so 0 is an error.
func positiveInt(d *caddyfile.Dispenser, what string) (int64, error) {
	v, err := oneArg(d, what)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, d.Errf("%s: must be a positive integer, got %q", what, v)
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
