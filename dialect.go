package llmratelimit

import (
	"net/http"
	"sort"
	"time"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// dialect is one provider's wire format. The handler asks the request's
// dialect for everything format-specific, as reverse_proxy asks its
// Selector to choose an upstream: one type per provider, each in a file of
// its own (openai.go, anthropic.go, gemini.go, ollama.go), registered
// here by name. Nothing outside those files knows a provider's JSON,
// paths or headers.
//
// What a format is as data (credentials, header and error tables, usage
// members, stream framing) is its spec (dialect_spec.go); the methods are
// what is code. What only some formats do is an optional interface, with
// a default for the others (dialect_spec.go).
//
// A request whose path no dialect claims (under `format auto`) has no
// dialect: it costs 1 request and 0 tokens, and the handler's own answers
// take the shape of the dialect whose family of paths it belongs to
// (ownsPath), else the fallback dialect's.
type dialect interface {
	// spec is the format as data.
	spec() *dialectSpec
	// matchPath tells whether a POST to this URL path speaks the format
	// (`format auto`).
	matchPath(path string) bool
	// parse reads the request body's top-level object at s.pos into info
	// and returns the text it counted. path is the URL path (some formats
	// name the model or the method there).
	parse(s *jsonscan.Scanner, tc *costmodel.Counter, path string, info *requestInfo) (costmodel.Part, error)
	// clampOutput rewrites the body's output limit per choice to n (the
	// field the format and path use; added when absent)
	// (clamp_max_tokens).
	clampOutput(path string, body []byte, n int64) []byte
}

// dialects is the registry, sorted by name. Each dialect's file adds
// itself in an init function.
var dialects []dialect

func registerDialect(d dialect) {
	sp := d.spec()
	sp.memberNames, sp.slots = sp.usage.names()
	_, ownUsage := d.(usageReader)
	if sp.name == "" || sp.errorBody == nil || len(sp.memberNames) > len(usageAcc{}.v) || len(sp.usage.key) == 0 && !ownUsage {
		panic("dialect " + sp.name + ": incomplete spec")
	}
	dialects = append(dialects, d)
	sort.Slice(dialects, func(i, j int) bool { return dialects[i].spec().name < dialects[j].spec().name })
	addCredentials(sp.name, sp.credentials)
}

// dialectNamed is the registered dialect of this name, or nil.
func dialectNamed(name string) dialect {
	for _, d := range dialects {
		if d.spec().name == name {
			return d
		}
	}
	return nil
}

// credential is one place where a format's clients put their API key: a
// request header, or a parameter of the URL's query.
type credential struct {
	// header is the header's canonical name; "" for a query parameter.
	header string
	// bearer: the header holds "Bearer <key>", the scheme matched
	// case-insensitively; another scheme or an empty token is no key.
	bearer bool
	// query names the query parameter that holds the key; "" for a header.
	query string
	// rank orders the default key lookup over every dialect's places:
	// lower is tried first. A place that several dialects name has the
	// same rank in each.
	rank int
}

// fallbackDialect shapes the handler's own answers to requests that no
// dialect parses or owns.
const fallbackDialect = "openai"

// dialectNames lists the formats `format` accepts besides auto.
func dialectNames() []string {
	names := make([]string, len(dialects))
	for i, d := range dialects {
		names[i] = d.spec().name
	}
	return names
}

// dialectForPath is the `format auto` rule of SPEC "Request flow" 2: the
// dialect that claims a POST's path, or nil.
func dialectForPath(path string) dialect {
	for _, d := range dialects {
		if d.matchPath(path) {
			return d
		}
	}
	return nil
}

// shapeForPath is the dialect whose error shape and rate-limit headers
// the handler's own answers take on a path that no dialect parses (SPEC
// "Azure OpenAI paths"): the dialect whose family the path belongs to,
// else the fallback. (A zone with a format answers in its own.)
func shapeForPath(path string) dialect {
	for _, d := range dialects {
		if ownsPath(d, path) {
			return d
		}
	}
	return dialectNamed(fallbackDialect)
}

// requestInfo is what the estimator learns from one request body. It holds
// counts only; the handler turns them into tokens with the model's config
// (token_ratio, image_tokens, max_output).
type requestInfo struct {
	// Model is the request's model: the body's "model" field, or the path's
	// where the format names it there ("" when absent).
	Model string
	// TextTokens is the estimated token count of all the text the model
	// reads (messages, system, tools, tool calls and results, input, prompt,
	// instructions), before token_ratio, without per-message overhead and
	// without images.
	TextTokens int64
	// Messages is the number of messages, turns or input items (3 tokens
	// each).
	Messages int64
	// ImagesLow counts images sent at low detail (a fixed, lower cost).
	ImagesLow int64
	// Images counts every other image or attached file.
	Images int64
	// MaxOutput is the body's own output limit (max_tokens and the like),
	// already multiplied by the number of prompts of a batch; 0 when the
	// body sets none.
	MaxOutput int64
	// N is the number of choices / candidates; 1 when absent.
	N int64
	// NoOutput marks an endpoint that generates nothing (embeddings): no
	// output is reserved.
	NoOutput bool
	// Stream is the body's (or the path's) streaming flag.
	Stream bool
	// StreamUsageSet: the body itself says whether its stream reports
	// usage (OpenAI's stream_options), and the dialect leaves it alone.
	StreamUsageSet bool
}

// usage is what the upstream says the request actually cost.
type usage struct {
	// Input counts the input tokens that count against ITPM (for formats
	// with prompt caching: what the provider counts, cache writes included,
	// cache reads excluded where the provider excludes them).
	Input int64
	// Output counts the output tokens (reasoning tokens included).
	Output int64
	// Read is all the input the model read, cached input included: what
	// calibration compares the estimate with.
	Read int64
	// Cached is the part of Read served from the provider's prompt cache
	// (OpenAI cached_tokens, Anthropic cache_read_input_tokens, Gemini
	// cachedContentTokenCount); CacheWrite the part written to it
	// (Anthropic cache_creation_input_tokens). Both are priced apart.
	Cached, CacheWrite int64
}

// maxSettledTokens bounds a usage figure that settling believes. No
// request reads or writes a billion tokens; a larger figure (up to 9e18
// from a broken or hostile upstream) is taken as this, so that the key ends
// deep in debt and its next request is refused, with no overflow anywhere.
const maxSettledTokens = 1_000_000_000

// clamped is u with each figure within 0..maxSettledTokens.
func (u usage) clamped() usage {
	u.Input = min(max(u.Input, 0), maxSettledTokens)
	u.Output = min(max(u.Output, 0), maxSettledTokens)
	u.Read = min(max(u.Read, 0), maxSettledTokens)
	u.Cached = min(max(u.Cached, 0), u.Read)
	u.CacheWrite = min(max(u.CacheWrite, 0), u.Read-u.Cached)
	return u
}

// usageAcc accumulates the usage objects of one response: a JSON body has
// one; a stream may have several (cumulative counts, or a start and a
// final report), and a member seen later replaces the same member seen
// before. The dialect gives the member names and combines them.
type usageAcc struct {
	v     [8]int64
	found uint32
	// final is set by a dialect whose stream usage counts only once its
	// final report came.
	final bool
}

// has tells whether the member at index i of the names read was found
// (i < 0: a member the scheme does not have).
func (a *usageAcc) has(i int8) bool { return i >= 0 && a.found&(1<<i) != 0 }

// add reads the integer members names of one usage object.
func (a *usageAcc) add(obj []byte, names []string) {
	if obj == nil {
		return
	}
	var v [8]int64
	found, ok := jsonscan.ObjectInts(obj, names, v[:len(names)])
	if !ok {
		return
	}
	for i := range names {
		if found&(1<<i) != 0 {
			a.v[i] = v[i]
		}
	}
	a.found |= found
}

// satAdd adds non-negative figures, saturating instead of wrapping.
func satAdd(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return 1<<63 - 1
}

// errKind is a response the handler makes itself (SPEC "Responses the
// handler makes itself").
type errKind uint8

const (
	errUnauthorized   errKind = iota // 401: no key, unknown key
	errInvalid                       // 400: bad JSON, wrong field types
	errTooLarge                      // 413: body over max_body
	errContextLength                 // 400: input + output over the context window
	errRateLimited                   // 429: over a limit of the gateway's
	errCooldown                      // 429: the upstream asked to slow down
	errUnavailable                   // 503: the shared store is unreachable (fail closed)
	errModelNotFound                 // 404: no provider account serves the model
	errBudget                        // 429: the key's budget cannot cover the request
	errModelNotPriced                // 400: nothing prices the model, and the key has a budget
	errKindCount                     // how many kinds there are
)

var errStatus = [...]int{
	errUnauthorized:   http.StatusUnauthorized,
	errInvalid:        http.StatusBadRequest,
	errTooLarge:       http.StatusRequestEntityTooLarge,
	errContextLength:  http.StatusBadRequest,
	errRateLimited:    http.StatusTooManyRequests,
	errCooldown:       http.StatusTooManyRequests,
	errUnavailable:    http.StatusServiceUnavailable,
	errModelNotFound:  http.StatusNotFound,
	errBudget:         http.StatusTooManyRequests,
	errModelNotPriced: http.StatusBadRequest,
}

// apiError is one of the handler's own error answers, before a dialect
// shapes it.
type apiError struct {
	kind errKind
	msg  string
	// dim is the limit a 429 names.
	dim dimension
	// wait is when a 429 or 503 may be retried; never marks a request that
	// can never fit (no retry at all).
	wait  time.Duration
	never bool
}

func (e *apiError) status() int { return errStatus[e.kind] }

func (e *apiError) Error() string { return e.msg }
