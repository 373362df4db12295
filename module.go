// Package llmratelimit is a Caddy HTTP handler that rate limits traffic to
// LLM provider APIs per API key: it estimates each request's tokens from
// its JSON body, debits requests-per-minute, tokens-per-minute, input- and
// output-tokens-per-minute buckets and a concurrency cap in one
// all-or-nothing decision, and settles the estimate against the usage the
// upstream reports.
package llmratelimit

import (
	"fmt"
	"os"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("llm_ratelimit", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("llm_ratelimit", httpcaddyfile.Before, "reverse_proxy")
}

const (
	defaultZone      = "default"
	defaultMaxBody   = 16 << 20
	defaultMaxOutput = 4096
	defaultMaxQueue  = 10000
	defaultMaxKeys   = 100000
)

// Limits are per-minute limits. Each is a token bucket whose capacity is the
// per-minute figure, refilled continuously at limit/60 per second. A zero
// value means "no limit of this kind".
type Limits struct {
	// Requests per minute.
	RPM int64 `json:"rpm,omitempty"`
	// Tokens per minute: estimated input plus reserved output, settled to
	// the actual input plus output.
	TPM int64 `json:"tpm,omitempty"`
	// Input tokens per minute.
	ITPM int64 `json:"itpm,omitempty"`
	// Output tokens per minute (the output reservation, settled to the
	// actual output).
	OTPM int64 `json:"otpm,omitempty"`
	// Requests in flight at once. Not a per-minute figure.
	Concurrent int64 `json:"concurrent,omitempty"`
}

// inherit fills every limit l does not set from d.
func (l Limits) inherit(d Limits) Limits {
	if l.RPM == 0 {
		l.RPM = d.RPM
	}
	if l.TPM == 0 {
		l.TPM = d.TPM
	}
	if l.ITPM == 0 {
		l.ITPM = d.ITPM
	}
	if l.OTPM == 0 {
		l.OTPM = d.OTPM
	}
	if l.Concurrent == 0 {
		l.Concurrent = d.Concurrent
	}
	return l
}

func (l Limits) validate(where string) error {
	for _, f := range []struct {
		name string
		v    int64
	}{{"rpm", l.RPM}, {"tpm", l.TPM}, {"itpm", l.ITPM}, {"otpm", l.OTPM}, {"concurrent", l.Concurrent}} {
		if f.v != 0 {
			if err := checkPositive(where+f.name, f.v); err != nil {
				return err
			}
		}
	}
	return nil
}

// Tier is a named set of limits, and the queue lane of its keys.
type Tier struct {
	Limits
	// Budget caps what each key of the tier may spend per calendar
	// period. Default: the top-level budget.
	Budget *Budget `json:"budget,omitempty"`
	// Lane is "interactive" (default) or "batch": waiters of the
	// interactive lane are granted before waiters of the batch lane on the
	// shared accounts. A batch waiter whose wait cannot fit max_wait is
	// rejected at admission, never starved.
	Lane string `json:"lane,omitempty"`
}

// APIKey assigns a key to a tier.
type APIKey struct {
	// Key is the raw API key, or "sha256:<64 hex digits>" of it so that the
	// config need not hold the secret.
	Key string `json:"key"`
	// Tier names an entry of tiers.
	Tier string `json:"tier"`
}

// Model holds what applies to requests whose body names a model.
type Model struct {
	// Name is the model name, matched exactly first, then as a path.Match
	// glob; the longest matching glob wins.
	Name string `json:"name"`
	// Per key × model limits (concurrent is not supported here).
	Limits
	// ContextWindow, when set, rejects with 400 context_length_exceeded a
	// request whose estimated input plus output reservation exceeds it.
	ContextWindow int64 `json:"context_window,omitempty"`
	// MaxOutput is the output reservation when the body sets no
	// max_tokens-like field. Default: default_max_output.
	MaxOutput int64 `json:"max_output,omitempty"`
	// TokenRatio multiplies the input estimate (e.g. 1.3 for models whose
	// tokenizer counts ~30 % more tokens than o200k). Default 1.0.
	TokenRatio float64 `json:"token_ratio,omitempty"`
	// ImageTokens is what one image costs. Default: the format's own image
	// cost (docs/configuration.md, "Formats").
	ImageTokens int64 `json:"image_tokens,omitempty"`
	// Price is what the model costs (USD per million tokens); it wins over
	// prices_file.
	Price *Price `json:"price,omitempty"`

	calib *modelCalib // the zone's calibration of this block
}

// Handler rate limits LLM API requests per API key. Put it before
// reverse_proxy.
type Handler struct {
	// Zone names the state pool. Handlers with the same zone share bucket
	// state, and the state survives config reloads. Default "default".
	Zone string `json:"zone,omitempty"`

	// Key is a placeholder template whose value identifies the caller,
	// e.g. "{http.request.header.X-Team}". Default: the bearer token of
	// Authorization, else the x-api-key header. An empty value is answered
	// with 401.
	Key string `json:"key,omitempty"`

	// Format of request bodies and of the handler's own error responses:
	// "auto" (default: the path decides) or a registered dialect's name
	// (docs/configuration.md, "Formats", lists them).
	Format string `json:"format,omitempty"`

	// MaxBody is the largest request body read, in bytes; larger → 413.
	// Default 16 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Default limits, for keys without a tier.
	Limits

	// Tiers are named sets of limits. A tier inherits every limit it does
	// not set from the defaults.
	Tiers map[string]Tier `json:"tiers,omitempty"`

	// APIKeys assigns keys to tiers.
	APIKeys []APIKey `json:"api_keys,omitempty"`

	// KeysFile is a file of "<key|sha256:hex> <tier>" lines; blank lines
	// and everything from # to the end of a line are ignored. Read at
	// provision time, and again whenever it changes on disk.
	KeysFile string `json:"keys_file,omitempty"`

	// RequireKnownKeys answers 401 to a key that no api_key or keys_file
	// line names.
	RequireKnownKeys bool `json:"require_known_keys,omitempty"`

	// Models configure per key × model limits and the estimator per model.
	Models []Model `json:"models,omitempty"`

	// DefaultMaxOutput is the output reservation when neither the body nor
	// the model says. Default 4096.
	DefaultMaxOutput int64 `json:"default_max_output,omitempty"`

	// Headers adds the x-ratelimit-* headers to every response. Default
	// true.
	Headers *bool `json:"headers,omitempty"`

	// DryRun decides, logs and meters, but never rejects.
	DryRun bool `json:"dry_run,omitempty"`

	// Upstream is the single provider account that every key of the zone
	// shares (the unnamed upstream block): its quota, one set of buckets
	// per zone, debited in the same all-or-nothing admission as the key's
	// own, and by every retry; and, as for a named account, the headers
	// (credentials) it sends and the models it serves. It has no name.
	// Upstreams is the pool.
	Upstream *Account `json:"upstream,omitempty"`

	// Calibrate learns, from every answer that reports its usage, the
	// ratio of the input the model really read to the raw estimate: a
	// factor per model block (or "*"), starting at its token_ratio, and a
	// factor per key relative to it, both exponentially weighted within
	// [0.25, 4]. The admission estimate is raw × model factor × key
	// factor. false pins the model factor at token_ratio and the key factor
	// at 1. Default true.
	Calibrate *bool `json:"calibrate,omitempty"`

	// LearnLimits reads the providers' own rate-limit headers (each
	// format's family, dialectSpec.rateHeaders) on every upstream answer and
	// paces to what they say: for the account that served, or, in a zone
	// without upstream blocks, for the client's own key. A learned limit
	// applies where none is configured; where both are, the smaller wins.
	// Default true.
	LearnLimits *bool `json:"learn_limits,omitempty"`

	// Upstreams is a pool of provider accounts (named upstream blocks):
	// every attempt of a request is served by one account that serves its
	// model, chosen by affinity to the key's previous account, then
	// priority, then headroom; an account that answers 429 or 529 cools
	// down for the provider's hint and the retry goes to another account
	// at once. Not together with Upstream.
	Upstreams []Account `json:"upstreams,omitempty"`

	// MaxWait lets a request that does not fit now wait up to this long in
	// the zone's fair queue instead of being rejected. Default 0: reject at
	// once.
	MaxWait caddy.Duration `json:"max_wait,omitempty"`

	// MaxQueue bounds the requests waiting in a zone's queue; beyond it a
	// request is rejected at once. Default 10000.
	MaxQueue int `json:"max_queue,omitempty"`

	// MaxKeys bounds the keys a zone holds state for, against key floods.
	// Keys named by api_key or keys_file, and keys that already have
	// state, are always served; a new unknown key past the bound gets a
	// 429 until the sweeper releases idle keys. Default 100000 (about
	// 25 MB); -1 for no bound.
	MaxKeys int `json:"max_keys,omitempty"`

	// Store shares the buckets and concurrency slots of the zone between
	// gateway instances (Redis). Without it, state stays in this process.
	Store *StoreConfig `json:"store,omitempty"`

	// DefaultPrice is what a model costs that no priced model block and
	// no prices_file entry prices. Without it such a model is refused
	// (400 model_not_priced) for a key that has a budget, so that a budget
	// cannot be dodged by naming an unpriced model, and goes up at cost 0
	// for a key without one (counted in
	// caddy_llm_ratelimit_unpriced_requests_total).
	DefaultPrice *Price `json:"default_price,omitempty"`

	// PricesFile is a pricing table in the format of LiteLLM's
	// model_prices_and_context_window.json, read at provision time and
	// again whenever it changes on disk (no reload needed). A
	// request's model finds its entry by its exact name, else without
	// case, without a provider prefix, with its provider's prefix added,
	// or without a date suffix. Long-context prices
	// (*_above_200k_tokens) apply to the whole of a request whose input is
	// above that size. A null or absent price is not priced; a row with a
	// price that cannot be used (a string, a negative or absurd number) is
	// skipped with a warning. Its max_input_tokens and max_output_tokens
	// become a model's context_window and max_output where no model block
	// sets them.
	PricesFile string `json:"prices_file,omitempty"`

	// Budget caps what each key without a tier may spend per calendar
	// period (tiers have their own). Admission reserves the worst case a
	// request can cost; settling replaces it with what its usage cost.
	Budget *Budget `json:"budget,omitempty"`

	// ClampMaxTokens, when > 0, lets a request that the budget cannot
	// cover at its full output reservation through with a smaller one, if
	// its input plus at least this many output tokens fit: the body's
	// output limit is rewritten (or added) to match, and the answer
	// carries x-llm-ratelimit-max-tokens-clamped. 0: off.
	ClampMaxTokens int64 `json:"clamp_max_tokens,omitempty"`

	// KeyInfo is a path (e.g. /v1/llm_ratelimit/key, the Caddyfile's
	// default) where a GET with a key is answered by the handler itself,
	// never forwarded and at no cost, with that key's own limits,
	// remaining quota, reset times, budget and usage today. Empty: off.
	KeyInfo string `json:"key_info,omitempty"`

	// BudgetAlert are percents of a key's budget (e.g. 50, 80, 100): when
	// the key's spend first reaches one in a period, the event
	// llm_ratelimit.budget_threshold goes out through Caddy's events app,
	// once (across every instance under store redis). Default none.
	BudgetAlert []float64 `json:"budget_alert,omitempty"`

	// Retry configures the upstream retry loop; absent = the defaults
	// (4 retries, 1s base, 60s max, 0.2 jitter, 429 500 502 503 504 529,
	// 2m in all). {"off": true} disables it.
	Retry *RetryConfig `json:"retry,omitempty"`

	// UsageRetention is how many UTC days, today included, the usage per
	// key and day (GET /llm_ratelimit/usage/<zone>) is kept: in Caddy's
	// storage, or in Redis under store. Default 400; -1 records none.
	UsageRetention int `json:"usage_retention,omitempty"`

	logger       *zap.Logger
	zone         *zone
	dialect      dialect                   // the configured format; nil for auto
	keys         *atomic.Pointer[keyTable] // key → tier name; keys_file reloads swap it
	tiers        map[string]Limits         // resolved: inherited from the defaults
	models       map[string]*Model         // exact names
	globs        []*Model                  // glob patterns, longest first
	headersOn    bool
	retry        *retryPolicy  // nil: retries off
	released     *atomic.Bool  // Cleanup has given the zone back
	rs           *redisStore   // the shared store, or nil
	admitter     admitter      // decides on the zone, or on rs
	accounts     []*accountCfg // the unnamed upstream block, or the pool
	pool         bool          // named accounts: chosen per attempt
	acctFields   []string      // the request fields accounts change
	learn        bool          // learn_limits
	defaultCalls *callCounters // upstream_calls_total when no named account serves
	calibrate    bool
	starCalib    *modelCalib     // the factor of requests no model block matches
	lanes        map[string]lane // tier → its queue lane
	spend        spendConfig
	alertSink    *alertSink // where budget_alert's events go, or nil
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.llm_ratelimit",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler: logger, defaults, keys and models, then the
// zone state from the pool.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Zone == "" {
		h.Zone = defaultZone
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	if h.DefaultMaxOutput == 0 {
		h.DefaultMaxOutput = defaultMaxOutput
	}
	h.headersOn = h.Headers == nil || *h.Headers
	h.learn = h.LearnLimits == nil || *h.LearnLimits
	h.calibrate = h.Calibrate == nil || *h.Calibrate
	h.retry = h.Retry.policy()
	if h.MaxQueue == 0 {
		h.MaxQueue = defaultMaxQueue
	}
	if h.MaxKeys == 0 {
		h.MaxKeys = defaultMaxKeys
	}

	h.tiers = make(map[string]Limits, len(h.Tiers))
	h.lanes = make(map[string]lane, len(h.Tiers))
	for name, t := range h.Tiers {
		h.lanes[name] = laneOf(t.Lane)
		h.tiers[name] = t.inherit(h.Limits)
	}
	var keysContent []byte
	if h.KeysFile != "" {
		b, err := os.ReadFile(h.KeysFile)
		if err != nil {
			return fmt.Errorf("keys_file: %v", err)
		}
		keysContent = b
	}

	if h.Format != "" && h.Format != "auto" {
		h.dialect = dialectNamed(h.Format) // Validate reports an unknown name
	}
	h.provisionModels()
	h.provisionAccounts()
	if err := h.provisionSpend(); err != nil {
		return err
	}

	// Validate before taking the zone, so that a config that fails never
	// touches live state.
	if err := h.Validate(); err != nil {
		return err
	}
	keys, err := h.buildKeys(keysContent)
	if err != nil {
		return err
	}
	h.keys = new(atomic.Pointer[keyTable])
	h.keys.Store(&keys)

	if h.Store != nil && h.Store.Redis != nil {
		rs, err := loadRedisStore(h.Store.Redis, h.logger)
		if err != nil {
			return err
		}
		h.rs = rs
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	z, _, err := zones.LoadOrNew(h.Zone, func() (caddy.Destructor, error) {
		return newZone(h.Zone), nil
	})
	if err != nil {
		return err
	}
	h.zone = z.(*zone)
	h.released = new(atomic.Bool)
	h.admitter = localAdmitter{h}
	if h.rs != nil {
		h.admitter = sharedAdmitter{h}
	}
	for i := range h.Models {
		m := &h.Models[i]
		m.calib = h.zone.calibFor(m.Name, m.TokenRatio)
	}
	h.starCalib = h.zone.calibFor(calibStar, 1)
	h.zone.upMu.Lock()
	for _, ac := range h.accounts { // the zone's state of each, once
		ac.st = h.zone.accountState(ac.name)
	}
	h.zone.upMu.Unlock()
	if h.rs != nil {
		var up Limits
		if h.Upstream != nil {
			up = h.Upstream.Limits
		}
		sz := &sharedZone{rs: h.rs, up: up}
		if h.pool {
			sz.pool = h.accounts
		}
		h.zone.shared.Store(sz)
	}
	if len(h.spend.budgets) > 0 && h.rs == nil {
		h.zone.budgets.Store(&h.spend.budgets)
		h.zone.attachLedger(storageOf(ctx), h.logger)
	}
	h.provisionAlerts(ctx)
	h.zone.attachUsage(storageOf(ctx), h.logger, h.UsageRetention)
	if files := h.watchedFiles(); len(files) > 0 {
		go h.watchFiles(ctx, files)
	}
	return nil
}

// Cleanup releases the zone this handler took in Provision, once. The
// handler keeps its pointer: on a reload Caddy cleans up the old config
// while its servers still finish their requests, and those requests still
// use the zone (which lives on in the pool for the new config).
func (h *Handler) Cleanup() error {
	if h.zone != nil && h.released.CompareAndSwap(false, true) {
		h.releaseAlerts()
		if l := h.zone.ledgerOf(); l != nil {
			l.save(h.zone, false)
		}
		if b := h.zone.bookOf(); b != nil {
			b.flush(h.zone) // before the store's client may close
		}
		if h.rs != nil {
			_, _ = stores.Delete(h.rs.poolKey)
		}
		_, err := zones.Delete(h.Zone)
		return err
	}
	return nil
}

// limitsFor returns the limits of a key's tier, or the defaults.
func (h *Handler) limitsFor(tier string) Limits {
	if t, ok := h.tiers[tier]; ok {
		return t
	}
	return h.Limits
}

// parseCaddyfile is the Caddyfile hook; see caddyfile.go.
func parseCaddyfile(helper httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(helper.Dispenser)
	return h, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
	_ caddy.AdminRouter           = (*adminAPI)(nil)
)
