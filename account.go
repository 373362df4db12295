package llmratelimit

import (
	"net/http"
	"path"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// This file is the pool of provider accounts: named upstream blocks, each
// an account with its own quota, credentials and models. Every attempt of
// a request is served by one account, chosen in the same atomic admission
// as the key's buckets (zone.admit); an account that answers 429 cools
// down and the retry moves to another one at once (ticket.failover).

// Account is one provider account: the unnamed upstream block (the single
// account), or a named one of a pool.
type Account struct {
	// Name identifies an account of a pool: in {vars.llm_upstream}, the
	// x-llm-ratelimit-upstream response header, the stats and the metrics.
	// The unnamed block has none (it is "default" there).
	Name string `json:"name,omitempty"`
	// The account's quota at the provider; a limit left out has no bucket.
	Limits
	// HeaderUp sets request headers on every attempt this account serves;
	// placeholders work ({env.OPENAI_KEY_1}). When it sets a credential
	// header of any format (Authorization, x-api-key, x-goog-api-key,
	// api-key), every client credential of every format is removed first,
	// headers and the key query parameter: a client's gateway key never
	// reaches the provider.
	HeaderUp map[string]string `json:"header_up,omitempty"`
	// Models are the models this account serves, as path.Match globs; a
	// request for a model that no account serves is answered 404.
	// Default: every model.
	Models []string `json:"models,omitempty"`
	// Priority orders the accounts of a pool that can take a request:
	// lower goes first. Default 0; no effect on the unnamed block.
	Priority int `json:"priority,omitempty"`
}

// defaultAccount names the unnamed upstream block in stats and metrics.
const defaultAccount = "default"

// accountCfg is an account as provisioned: its header_up resolved as far
// as it can be before a request.
type accountCfg struct {
	name     string
	lim      Limits
	models   []string
	priority int
	idx      int  // config order, the last tie-breaker
	pool     bool // a named account: chosen, cooled down, routed
	creds    bool // header_up sets a credential header: the client's are removed
	headers  []headerUp
	calls    *callCounters // upstream_calls_total of this account
	nameVar  any           // name, as {vars.llm_upstream} holds it (no conversion per request)
	// st is the zone's state of the account, resolved at provision so
	// that choosing an account looks nothing up by name (nil: look up).
	st *account
}

type headerUp struct {
	field, value string
	dynamic      bool // holds request placeholders, replaced per attempt
}

// provisionAccounts resolves the unnamed block and the named pool into the
// accounts a request can be served by.
func (h *Handler) provisionAccounts() {
	h.accounts = nil
	h.defaultCalls = &callCounters{zone: h.Zone, account: defaultAccount}
	global := caddy.NewReplacer() // {env.*} and other global placeholders
	if h.Upstream != nil {
		ac := &accountCfg{name: defaultAccount, lim: h.Upstream.Limits, models: h.Upstream.Models, calls: h.defaultCalls}
		ac.setHeaders(h.Upstream.HeaderUp, global)
		h.accounts = append(h.accounts, ac)
	}
	for i, a := range h.Upstreams {
		ac := &accountCfg{name: a.Name, lim: a.Limits, models: a.Models, priority: a.Priority, idx: i, pool: true,
			calls: &callCounters{zone: h.Zone, account: a.Name}}
		ac.setHeaders(a.HeaderUp, global)
		h.accounts = append(h.accounts, ac)
	}
	for _, ac := range h.accounts {
		ac.nameVar = ac.name
	}
	h.pool = len(h.Upstreams) > 0
	h.acctFields = nil
	if h.pool {
		h.acctFields = accountFields(h.accounts)
	}
}

// setHeaders resolves an account's header_up as far as it can be before a
// request (global placeholders such as {env.*}); an account that sets a
// credential header of any dialect brings its own credentials.
func (ac *accountCfg) setHeaders(fields map[string]string, global *caddy.Replacer) {
	for field, value := range fields {
		field = http.CanonicalHeaderKey(field)
		v := global.ReplaceKnown(value, "")
		ac.headers = append(ac.headers, headerUp{field: field, value: v, dynamic: strings.Contains(v, "{")})
		ac.creds = ac.creds || isCredentialHeader(field)
	}
	// Map order is random: apply them in one order on every attempt.
	sort.Slice(ac.headers, func(i, j int) bool { return ac.headers[i].field < ac.headers[j].field })
}

// serves tells whether the account serves a model; a request that names
// no model can go to any account.
func (ac *accountCfg) serves(model string) bool {
	if len(ac.models) == 0 || model == "" {
		return true
	}
	for _, m := range ac.models {
		if m == model {
			return true
		}
		if ok, _ := path.Match(m, model); ok {
			return true
		}
	}
	return false
}

// accountsFor is the accounts that serve a model, in config order; nil
// without any account, and empty (not nil) when none serves it.
func (h *Handler) accountsFor(model string) []*accountCfg {
	if len(h.accounts) == 0 {
		return h.accounts
	}
	n := 0
	for _, ac := range h.accounts {
		if ac.serves(model) {
			n++
		}
	}
	if n == len(h.accounts) {
		return h.accounts
	}
	out := make([]*accountCfg, 0, n)
	for _, ac := range h.accounts {
		if ac.serves(model) {
			out = append(out, ac)
		}
	}
	return out
}

// applyAccount prepares the request for an attempt served by ac: the
// account's name in {vars.llm_upstream} (matchers run again on every
// attempt), the client's credentials removed when the account brings its
// own, and the account's header_up set.
func applyAccount(r *http.Request, x *exchange, ac *accountCfg) {
	caddyhttp.SetVar(r.Context(), "llm_upstream", ac.nameVar)
	if ac.creds {
		removeClientCredentials(r)
	}
	var repl *caddy.Replacer
	for _, hu := range ac.headers {
		v := hu.value
		if hu.dynamic {
			if repl == nil {
				repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			}
			if repl != nil {
				v = repl.ReplaceAll(v, "")
			}
		}
		r.Header[hu.field] = x.one(v)
	}
}

// savedHeaders keeps the request's fields that accounts change, so that
// an attempt served by another account starts from the client's request.
type savedHeaders struct {
	fields []string
	vals   [][]string
	arr    [8][]string // vals' backing for up to 8 fields
	query  string
}

func saveHeaders(r *http.Request, fields []string, into *savedHeaders) {
	into.fields = fields
	into.vals = into.arr[:0]
	for _, f := range fields {
		into.vals = append(into.vals, r.Header[f])
	}
	if r.URL != nil {
		into.query = r.URL.RawQuery
	}
}

func (s *savedHeaders) restore(r *http.Request) {
	for i, f := range s.fields {
		if s.vals[i] == nil {
			delete(r.Header, f)
		} else {
			r.Header[f] = s.vals[i]
		}
	}
	if r.URL != nil {
		r.URL.RawQuery = s.query
	}
}

// accountFields is every request field that some account may change.
func accountFields(accts []*accountCfg) []string {
	fields := credentialHeaders()
	for _, ac := range accts {
		for _, hu := range ac.headers {
			dup := false
			for _, f := range fields {
				dup = dup || f == hu.field
			}
			if !dup {
				fields = append(fields, hu.field)
			}
		}
	}
	return fields
}

// account is the state of one provider account in a zone, guarded by the
// zone's upMu: its buckets, its requests in flight, its cooldown and its
// counters.
type account struct {
	limitBuckets
	inflight      int64
	cooldownUntil int64         // unix ns: a 429 cooled it down until then
	cfg           Limits        // its configured quota, as of the last request
	learned       *learnedState // what its rate-limit headers said; nil: nothing yet
	calls         int64         // attempts sent to it
	rateLimited   int64         // attempts it answered 429 or 529
}

// limits is the account's quota in force: the configured one with the
// learned limits applied.
func (st *account) limits(cfg Limits) Limits { return st.learned.limits(cfg) }

// limitsOf is limits by pointer, for the choice's hot path (a copied
// Limits stalls on store forwarding): cfg itself when nothing was learned,
// else scratch filled.
func (st *account) limitsOf(cfg, scratch *Limits) *Limits {
	if st.learned == nil {
		return cfg
	}
	*scratch = st.learned.apply(*cfg)
	return scratch
}

// accountState is the zone's state of an account, created on first use.
// The caller holds z.upMu.
func (z *zone) accountState(name string) *account {
	st := z.accounts[name]
	if st == nil {
		if z.accounts == nil {
			z.accounts = make(map[string]*account)
		}
		st = new(account)
		z.accounts[name] = st
	}
	return st
}

// headroom is the smallest remaining fraction over the account's buckets
// (1 for an account without limits).
func (st *account) headroom(lim *Limits, nowNs int64) (num, den float64) {
	num, den = 1, 1
	// The smallest level/limit, kept as a fraction: no division.
	least := func(b *bucket, limit int64) {
		if limit > 0 {
			if l, c := b.advance(nowNs, limit), float64(limit); l*den < num*c {
				num, den = l, c
			}
		}
	}
	least(&st.rpm, lim.RPM)
	least(&st.tpm, lim.TPM)
	least(&st.itpm, lim.ITPM)
	least(&st.otpm, lim.OTPM)
	return num, den
}

// maxAccounts bounds the candidates ordered on the stack per choice.
const maxAccounts = 32

// chooseAccount picks the account that serves an attempt, among accts,
// and debits it (unless peek): a candidate must not be cooling down, must
// have a free slot and its buckets must serve the demand together with
// the buckets already in a (the key's, for a first attempt). The order is
// affinity (the account that served the key's previous request), then the
// lowest priority, then the most headroom, then config order. When none
// can take it now, the verdict says how long until one could, and why.
// The caller holds the key's shard lock and z.upMu.
func (z *zone) chooseAccount(a *admission, accts []*accountCfg, d demand, affinity, exclude *account, nowNs int64, peek bool) (*accountCfg, *account, verdict) {
	var v verdict
	ac, st := z.chooseAccountInto(a, accts, &d, affinity, exclude, nowNs, peek, &v)
	return ac, st, v
}

// chooseAccountInto is chooseAccount writing its verdict into best.
func (z *zone) chooseAccountInto(a *admission, accts []*accountCfg, d *demand, affinity, exclude *account, nowNs int64, peek bool, best *verdict) (*accountCfg, *account) {
	base := a.n
	*best = verdict{}
	if len(accts) > maxAccounts {
		accts = accts[:maxAccounts]
	}
	// The candidates are picked best first: a selection, not a sort, for
	// the first pick is nearly always the one, and most picks never need
	// an account's headroom.
	// The zone's scratch (the caller holds upMu): nothing to clear but
	// the bit sets.
	c := &z.pick
	c.z, c.accts, c.affinity, c.nowNs, c.lookup, c.out, c.known = z, accts, affinity, nowNs, false, 0, 0
	left := 0
	for i, ac := range accts {
		if ac.st == nil {
			c.lookup = true // an account made after provision (tests)
		}
		if c.state(i) == exclude {
			c.out |= 1 << i
			continue
		}
		c.state(i).learned.rise(nowNs)
		left++
	}
	allNever := left > 0
	var v verdict
	for ; left > 0; left-- {
		k := c.next()
		ac, st := accts[k], c.state(k)
		switch {
		case ac.pool && st.cooldownUntil > nowNs:
			v = verdict{wait: durationNs(st.cooldownUntil - nowNs), blocking: use{dim: dimCooldown, scope: scopeUpstream}}
		case ac.lim.Concurrent > 0 && st.inflight >= ac.lim.Concurrent:
			v = verdict{wait: 1e9, blocking: use{limit: ac.lim.Concurrent, need: 1, dim: dimConcurrency, scope: scopeUpstream}}
		default:
			a.n = base
			var learned Limits
			st.admitInto(a, st.limitsOf(&ac.lim, &learned), d, scopeUpstream)
			if a.checkInto(nowNs, &v); v.ok {
				if !peek {
					a.debit()
				}
				st.cfg = ac.lim
				*best = v
				c.accts, c.affinity = nil, nil // keep no config alive
				return ac, st
			}
		}
		if !v.never {
			allNever = false
			if best.wait == 0 || v.wait < best.wait {
				*best = v
			}
		} else if best.wait == 0 && !best.never {
			*best = v
		}
	}
	a.n = base
	if allNever {
		best.wait = 0
	}
	c.accts, c.affinity = nil, nil
	return nil, nil
}

// choice is one account choice's candidates: which were picked already
// (or excluded), and each one's headroom once needed.
type choice struct {
	z        *zone
	accts    []*accountCfg // at most maxAccounts
	affinity *account
	nowNs    int64
	lookup   bool                    // some account's state was not resolved at provision
	out      uint32                  // bit i: accts[i] was picked, or is excluded
	known    uint32                  // bit i: room[i] holds accts[i]'s headroom
	room     [maxAccounts][2]float64 // a headroom as a fraction
}

// state is the zone's state of candidate i.
func (c *choice) state(i int) *account {
	if st := c.accts[i].st; st != nil || !c.lookup {
		return st
	}
	return c.z.accountState(c.accts[i].name)
}

// next picks the best candidate left and takes it out.
func (c *choice) next() int {
	k := -1
	for i := range c.accts {
		if c.out&(1<<i) != 0 {
			continue
		}
		if k < 0 || c.before(i, k) {
			k = i
		}
	}
	c.out |= 1 << k
	return k
}

// before orders candidates i and j: affinity (the key's previous
// account), then the lower priority, then the more headroom, then config
// order. A headroom is computed only when the first two tie.
func (c *choice) before(i, j int) bool {
	x, y := c.accts[i], c.accts[j]
	if c.affinity != nil {
		if xs, ys := c.state(i) == c.affinity, c.state(j) == c.affinity; xs != ys {
			return xs
		}
	}
	if x.priority != y.priority {
		return x.priority < y.priority
	}
	xr, yr := c.headroom(i), c.headroom(j)
	// xr > yr, as fractions with positive denominators.
	if a, b := xr[0]*yr[1], yr[0]*xr[1]; a != b {
		return a > b
	}
	return x.idx < y.idx
}

func (c *choice) headroom(i int) *[2]float64 {
	if c.known&(1<<i) == 0 {
		st := c.state(i)
		var learned Limits
		c.room[i][0], c.room[i][1] = st.headroom(st.limitsOf(&c.accts[i].lim, &learned), c.nowNs)
		c.known |= 1 << i
	}
	return &c.room[i]
}
