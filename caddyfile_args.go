package llmratelimit

import (
	"slices"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// How the Caddyfile is read, at every level alike: a block is a table from
// subdirective name to a setter, and one walker (block.walk) goes through
// the block's lines, rejecting unknown names, repeats and blocks after
// lines that take none. The setters share the readers of the common
// argument shapes below: one argument, an integer, a number, a duration,
// on/off, a list, nothing.

// A setter reads one subdirective, the cursor on its name: its arguments
// and, for a subdirective that has one, its block. what names it in errors
// as its block does: "rpm" at the top level, "tier pro: rpm" in a tier
// block, "retry jitter" in the retry block.
type setter func(d *caddyfile.Dispenser, what string) error

// setters is a block's grammar: the setter of each subdirective, by name.
type setters map[string]setter

// block is one block of the grammar and how its errors name things.
type block struct {
	// where names the block in errors: "" for llm_ratelimit's own,
	// "tier pro", "retry", "store redis".
	where string
	// sep joins where and a subdirective's name: ": " (tier pro: rpm) or
	// " " (retry jitter).
	sep  string
	subs setters
	// repeat are the subdirectives that may be given more than once; their
	// setters reject what must not repeat (a tier's name, an api_key).
	repeat []string
	// nested are the subdirectives that read a block of their own; any
	// other rejects one.
	nested []string
	// named: the block belongs to a named line (tier, model, upstream), so
	// it must be there, even empty; a tier or model line inside it is told
	// to move to the top level, and concurrent, where the block has no
	// setter for it (a model's), is said to be unsupported there.
	named bool
}

// walk reads the block that follows the cursor's line, calling the setter
// of each subdirective.
func (b *block) walk(d *caddyfile.Dispenser) error {
	line, file := d.Line(), d.File()
	nesting := d.Nesting()
	opened := d.NextBlock(nesting)
	if b.named && !opened && !isEmptyBlockEnd(d, line, file) {
		return d.Errf("%s: expected a block { ... } after the name", b.where)
	}
	seen := make(map[string]bool)
	for ; opened; opened = d.NextBlock(nesting) {
		sub := d.Val()
		set, ok := b.subs[sub]
		if !ok {
			return b.unknown(d, sub)
		}
		what := sub
		if b.where != "" {
			what = b.where + b.sep + sub
		}
		if seen[sub] && !slices.Contains(b.repeat, sub) {
			return d.Errf("%s: given twice", what)
		}
		seen[sub] = true
		if err := set(d, what); err != nil {
			return err
		}
		if !slices.Contains(b.nested, sub) {
			if err := noBlock(d, what); err != nil {
				return err
			}
		}
	}
	return nil
}

// unknown is the error for a subdirective the block does not take.
func (b *block) unknown(d *caddyfile.Dispenser, sub string) error {
	if b.where == "" {
		return d.Errf("unknown subdirective %q", sub)
	}
	if b.named {
		switch sub {
		case "tier", "model":
			return d.Errf("%s: a %s block cannot be nested inside another block; put it at the top level of llm_ratelimit", b.where, sub)
		case "concurrent":
			return d.Errf("%s: concurrent is not supported per model", b.where)
		}
	}
	return d.Errf("%s: unknown subdirective %q", b.where, sub)
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

// noBlock rejects a block after a line that takes none.
func noBlock(d *caddyfile.Dispenser, what string) error {
	if d.NextBlock(d.Nesting()) {
		d.Prev() // report the line of the opening brace
		return d.Errf("%s: takes no block", what)
	}
	return nil
}

// atLine gives the error of a Validate check (validate.go), which names
// its subdirective itself, the cursor's file and line; nil stays nil.
func atLine(d *caddyfile.Dispenser, err error) error {
	if err != nil {
		return d.Errf("%w", err)
	}
	return nil
}

// The readers of argument shapes. Each reads the arguments of the line at
// the cursor and names what in its errors, with the bad token.

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

// listArgs reads one or more arguments; want describes them when there
// are none ("want one or more status codes").
func listArgs(d *caddyfile.Dispenser, what, want string) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Errf("%s: want %s", what, want)
	}
	return args, nil
}

// intArg reads one integer; bad says what it must be, for the error
// ("want an integer").
func intArg(d *caddyfile.Dispenser, what, bad string) (int64, error) {
	v, err := oneArg(d, what)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, d.Errf("%s: %s, got %q", what, bad, v)
	}
	return n, nil
}

// positiveInt reads one integer argument and applies checkPositive to it:
// in the Caddyfile a limit is simply left out for "unlimited", so 0 is an
// error.
func positiveInt(d *caddyfile.Dispenser, what string) (int64, error) {
	n, err := intArg(d, what, "must be a positive integer")
	if err != nil {
		return 0, err
	}
	return n, atLine(d, checkPositive(what, n))
}

// floatArg reads one number; bad says what it must be, for the error.
func floatArg(d *caddyfile.Dispenser, what, bad string) (float64, error) {
	v, err := oneArg(d, what)
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, d.Errf("%s: %s, got %q", what, bad, v)
	}
	return f, nil
}

// durationArg reads one duration; example shows the form in the error
// ("30s").
func durationArg(d *caddyfile.Dispenser, what, example string) (time.Duration, error) {
	v, err := oneArg(d, what)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: want a duration such as %s, got %q", what, example, v)
	}
	return dur, nil
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

// Setters for the common shapes, storing into a field of the config.

// into is the setter that stores what read reads in *dst.
func into[T any](dst *T, read func(*caddyfile.Dispenser, string) (T, error)) setter {
	return func(d *caddyfile.Dispenser, what string) error {
		v, err := read(d, what)
		if err == nil {
			*dst = v
		}
		return err
	}
}

// text sets *dst to the one argument.
func text(dst *string) setter { return into(dst, oneArg) }

// flag sets *dst on a line without arguments.
func flag(dst *bool) setter {
	return func(d *caddyfile.Dispenser, what string) error {
		*dst = true
		return noArgs(d, what)
	}
}

// onOffSetter sets *dst to on or off.
func onOffSetter(dst **bool) setter {
	return func(d *caddyfile.Dispenser, what string) error {
		on, err := onOff(d, what)
		if err == nil {
			*dst = &on
		}
		return err
	}
}

// positive sets *dst to one positive integer.
func positive[T int | int64](dst *T) setter {
	return func(d *caddyfile.Dispenser, what string) error {
		n, err := positiveInt(d, what)
		if err == nil {
			*dst = T(n)
		}
		return err
	}
}

// integer sets *dst to one integer that check, if not nil, accepts.
func integer(dst *int, check func(int) error) setter {
	return func(d *caddyfile.Dispenser, what string) error {
		n, err := intArg(d, what, "want an integer")
		if err != nil {
			return err
		}
		if check != nil {
			if err := atLine(d, check(int(n))); err != nil {
				return err
			}
		}
		*dst = int(n)
		return nil
	}
}

// duration sets *dst to one duration that check accepts; example shows
// the form in the error ("30s").
func duration(dst *caddy.Duration, example string, check func(what string, v time.Duration) error) setter {
	return func(d *caddyfile.Dispenser, what string) error {
		v, err := durationArg(d, what, example)
		if err != nil {
			return err
		}
		if err := atLine(d, check(what, v)); err != nil {
			return err
		}
		*dst = caddy.Duration(v)
		return nil
	}
}

// limits adds a setter for each named limit of l to s.
func (s setters) limits(l *Limits, names ...string) setters {
	fields := map[string]*int64{"rpm": &l.RPM, "tpm": &l.TPM, "itpm": &l.ITPM, "otpm": &l.OTPM, "concurrent": &l.Concurrent}
	for _, name := range names {
		s[name] = positive(fields[name])
	}
	return s
}
