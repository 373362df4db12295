package llmratelimit

import (
	"bytes"
	"net/http"
	"slices"
	"time"

	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// dialectSpec is what a dialect is as data: where its clients put their
// key, the headers and error bodies of its family, where its answers
// report usage and how its streams are framed. The handler reads a
// dialect's wire format through it, with the shared code below; a dialect
// writes code only for what is really code (its body walk, its rewrites),
// or overrides a default through one of the optional interfaces at the
// end of this file.
type dialectSpec struct {
	// name is the format's name in the config: "openai".
	name string
	// pricesProvider is the provider prefix under which the prices file
	// keys the format's models ("gemini" for gemini/…), "" for none
	// (pricenames.go).
	pricesProvider string
	// credentials are every place where the format's clients put their
	// API key. Together, over every dialect, they are the one list that
	// the default key lookup, the removal of a client's key before an
	// account's own goes upstream, and the 401 message read
	// (credentials.go).
	credentials []credential
	// rateHeaders are the provider's rate-limit headers (limit,
	// remaining, reset per dimension), nil for none: learned from
	// (learn.go), and the default retry hint (the longest reset of a
	// used-up limit).
	rateHeaders []rateHeader
	// image is what one image costs when no model block says.
	image imageCost
	// errors names each of the handler's own answers in the format's
	// error body; byLimit, when set, replaces the type of a rate-limit 429
	// by the limit it names.
	errors  [errKindCount]errorName
	byLimit *[dimCount]string
	// errorBody appends the format's error body for one of the handler's
	// own answers, named n.
	errorBody func(dst []byte, n errorName, e *apiError) []byte
	// busy are the provider's statuses besides 429 and 529 that say it is
	// too busy now: the retry loop treats them as a 429 (retry.go).
	busy []int
	// fatal429 are markers of an upstream 429 body that no wait will cure
	// (a quota or spend limit used up).
	fatal429 [][]byte
	// usage says where answers report what they cost.
	usage usageSpec
	// stream is how the format frames a streamed answer.
	stream framing

	// memberNames are usage's names as usageAcc reads them, and slots
	// where each scheme's are among them (set at registration).
	memberNames []string
	slots       [][slotsPerScheme]int8
}

// imageCost is what one image costs, in tokens: full, and sent at low
// detail (which image_tokens does not change).
type imageCost struct{ full, low int64 }

// errorName is how a format names one kind of error: its type (OpenAI's
// and Anthropic's type, Google's status) and its code, when it has one.
type errorName struct{ typ, code string }

// framing is how a format cuts a streamed answer into events.
type framing uint8

const (
	// framingSSE is server-sent events (text/event-stream): each event's
	// data lines carry one JSON object.
	framingSSE framing = iota
	// framingNDJSON is one JSON object per line (application/x-ndjson).
	framingNDJSON
)

// mediaType is the Content-Type of a stream so framed.
func (f framing) mediaType() string {
	if f == framingNDJSON {
		return "application/x-ndjson"
	}
	return "text/event-stream"
}

// usageSpec says where a format's answers report their usage, by name.
type usageSpec struct {
	// key is the member that holds the usage object (`"usage"`). A format
	// whose answers have none reads its usage itself (usageReader).
	key []byte
	// schemes are the names a usage object uses; the first scheme whose
	// input or output is present counts (OpenAI's chat and its Responses
	// name them differently).
	schemes []usageNames
	// endData are stream events that end a stream whole ("[DONE]");
	// endTypes the values of an event's "type" that end it.
	endData  [][]byte
	endTypes []string
	// finalType, when set, is the "type" of the event after which a
	// stream's usage counts (Anthropic's message_delta): a stream cut
	// before it keeps its reservation.
	finalType string
}

// usageNames are the member names of one usage scheme.
type usageNames struct {
	// input is the input count; output the output count, and output2 a
	// second output count added to it (reasoning), "" for none.
	input, output, output2 string
	// cached is the input read from the prompt cache, cacheWrite the input
	// written to it, "" for none.
	cached, cacheWrite string
	// cacheApart: input excludes the cached reads and writes (Anthropic);
	// else input includes the cached part (OpenAI, Gemini).
	cacheApart bool
}

// The figures of a usage scheme, and how many there are.
const (
	slotInput = iota
	slotOutput
	slotOutput2
	slotCached
	slotCacheWrite
	slotsPerScheme
)

// names lists the member names of every scheme, once each, and where
// each scheme's figures are among them (-1: the scheme has none).
func (u *usageSpec) names() (names []string, slots [][slotsPerScheme]int8) {
	for _, s := range u.schemes {
		var sl [slotsPerScheme]int8
		for i, n := range [slotsPerScheme]string{s.input, s.output, s.output2, s.cached, s.cacheWrite} {
			sl[i] = -1
			if n == "" {
				continue
			}
			if j := slices.Index(names, n); j >= 0 {
				sl[i] = int8(j)
				continue
			}
			sl[i] = int8(len(names))
			names = append(names, n)
		}
		slots = append(slots, sl)
	}
	return names, slots
}

// combine is the usage that acc read, by the first scheme present; a
// stream's counts only once its final event came (finalType).
func (sp *dialectSpec) combine(a *usageAcc, stream bool) (usage, bool) {
	u := &sp.usage
	if stream && u.finalType != "" && !a.final {
		return usage{}, false
	}
	for i, s := range u.schemes {
		sl := &sp.slots[i]
		if !a.has(sl[slotInput]) && !a.has(sl[slotOutput]) {
			continue
		}
		var v [slotsPerScheme]int64
		for k, j := range sl {
			if a.has(j) {
				v[k] = a.v[j]
			}
		}
		out := satAdd(v[slotOutput], v[slotOutput2])
		if s.cacheApart {
			in := satAdd(v[slotInput], v[slotCacheWrite])
			return usage{Input: in, Output: out, Read: satAdd(in, v[slotCached]), Cached: v[slotCached], CacheWrite: v[slotCacheWrite]}, true
		}
		in := v[slotInput]
		return usage{Input: in, Output: out, Read: in, Cached: min(v[slotCached], in)}, true
	}
	return usage{}, false
}

// The defaults every dialect shares, read from its spec.

// jsonUsage reads the usage of a whole (non-stream) answer, or of its
// tail: the last usage object, where providers put it.
func jsonUsage(d dialect, body []byte) (usage, bool) {
	if r, ok := d.(usageReader); ok {
		return r.jsonUsage(body)
	}
	sp := d.spec()
	var a usageAcc
	a.add(lastObjectAfterKey(body, sp.usage.key), sp.memberNames)
	return sp.combine(&a, false)
}

// streamEvent reads one stream event's data (an SSE event's data, an
// NDJSON line) into acc; end reports the event that ends the stream.
func streamEvent(d dialect, data []byte, acc *usageAcc) (end bool) {
	if r, ok := d.(usageReader); ok {
		return r.streamEvent(data, acc)
	}
	u := &d.spec().usage
	if bytes.Contains(data, u.key) {
		acc.add(lastObjectAfterKey(data, u.key), d.spec().memberNames)
		if u.finalType != "" && jsonscan.HasStringMember(data, "type", u.finalType) {
			acc.final = true
		}
	}
	for _, e := range u.endData {
		if bytes.Equal(data, e) {
			return true
		}
	}
	for _, t := range u.endTypes {
		if jsonscan.HasStringMember(data, "type", t) {
			return true
		}
	}
	return false
}

// streamUsage is the usage a stream's events gathered, once it has passed.
func streamUsage(d dialect, acc *usageAcc) (usage, bool) {
	if r, ok := d.(usageReader); ok {
		return r.streamUsage(acc)
	}
	return d.spec().combine(acc, true)
}

// appendError appends d's error body for one of the handler's own
// answers.
func appendError(d dialect, dst []byte, e *apiError) []byte {
	sp := d.spec()
	n := sp.errors[e.kind]
	if e.kind == errRateLimited && sp.byLimit != nil {
		n.typ = sp.byLimit[e.dim]
	}
	return sp.errorBody(dst, n, e)
}

// dialectRetryHint is d's own wait hint in an upstream answer: by default
// the longest reset of its rate-limit headers whose limit is used up, and
// a hint in the body where the format has one.
func dialectRetryHint(d dialect, h http.Header, body []byte, at time.Time) (time.Duration, bool) {
	best, found := longestReset(h, d.spec().rateHeaders, at)
	if b, ok := d.(bodyHinter); ok {
		if w, ok := b.bodyHint(body); ok && (!found || w > best) {
			best, found = w, true
		}
	}
	return best, found
}

// isFatal429 tells an upstream 429 body that d says no wait will cure.
func isFatal429(d dialect, body []byte) bool {
	for _, m := range d.spec().fatal429 {
		if bytes.Contains(body, m) {
			return true
		}
	}
	return false
}

// ownsPath tells a path of d's provider that d does not parse: the
// handler's own answers to it take d's shape and headers.
func ownsPath(d dialect, path string) bool {
	o, ok := d.(pathOwner)
	return ok && o.ownsPath(path)
}

// prepareBody lets d rewrite a body before it is forwarded (to ask a
// stream for its usage); strip says that the event the rewrite adds must
// be taken out of the stream again (isAddedUsageEvent).
func prepareBody(d dialect, path, query string, body []byte, info *requestInfo) (out []byte, strip bool) {
	if p, ok := d.(usageRequester); ok {
		return p.prepare(path, query, body, info)
	}
	return body, false
}

// isAddedUsageEvent tells the stream event that d's prepare added.
func isAddedUsageEvent(d dialect, event []byte) bool {
	p, ok := d.(usageRequester)
	return ok && p.isAddedUsageEvent(event)
}

// The optional interfaces: what only some dialects do, or do their own way.

// pathOwner is a dialect whose provider has paths it does not parse
// (Gemini's :countTokens, Anthropic's count_tokens): the handler's own
// answers to them take the format's shape and headers.
type pathOwner interface{ ownsPath(path string) bool }

// usageRequester is a dialect that rewrites a body before it is
// forwarded, to ask a stream for its usage, and strips the event the
// rewrite added. query is the URL's raw query (some servers accept the
// rewrite only from an API version on).
type usageRequester interface {
	prepare(path, query string, body []byte, info *requestInfo) (out []byte, strip bool)
	isAddedUsageEvent(event []byte) bool
}

// quotaHeaderWriter is a dialect whose family of rate-limit headers is
// not x-ratelimit-*.
type quotaHeaderWriter interface {
	setQuotaHeaders(hdr http.Header, qs quotaSet, now time.Time)
}

// bodyHinter is a dialect whose error bodies say when to retry (Google's
// RetryInfo).
type bodyHinter interface {
	bodyHint(body []byte) (time.Duration, bool)
}

// usageReader is a dialect whose answers report usage in a way usageSpec
// cannot say.
type usageReader interface {
	jsonUsage(body []byte) (usage, bool)
	streamEvent(data []byte, acc *usageAcc) (end bool)
	streamUsage(acc *usageAcc) (usage, bool)
}
