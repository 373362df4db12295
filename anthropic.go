package llmratelimit

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// This file knows Anthropic's wire format: the Messages API path and
// request body, the usage object of its responses and streams, Anthropic's
// error body and its rate-limit headers.

// anthropicDialect is the dialect of Anthropic's Messages API.
type anthropicDialect struct{}

func init() { registerDialect(anthropicDialect{}) }

// anthropicSpec is Anthropic's format as data.
var anthropicSpec = dialectSpec{
	name: "anthropic",
	// LiteLLM keys Anthropic's models bare, and some under anthropic/.
	pricesProvider: "anthropic",
	credentials:    anthropicCredentials,
	rateHeaders:    anthropicRateHeaders,
	// An image costs by formula, never by the size of its data.
	image:     imageCost{full: 1600, low: 1600},
	errors:    anthropicErrors,
	errorBody: func(dst []byte, n errorName, e *apiError) []byte { return appendAnthropicError(dst, n.typ, e.msg) },
	// A spend limit reached is not cured by waiting.
	fatal429: [][]byte{[]byte("enforced_spend_limit_reached")},
	usage: usageSpec{
		key: []byte(`"usage"`),
		// input_tokens leaves out cache reads and writes; cache reads do
		// not count against ITPM.
		schemes: []usageNames{{input: "input_tokens", output: "output_tokens",
			cached: "cache_read_input_tokens", cacheWrite: "cache_creation_input_tokens", cacheApart: true}},
		// message_start carries the input usage, each message_delta the
		// cumulative output (the last one is final: message_start's
		// output_tokens is not the total), message_stop ends the stream.
		endTypes:  []string{"message_stop"},
		finalType: "message_delta",
	},
	stream: framingSSE,
}

func (anthropicDialect) spec() *dialectSpec { return &anthropicSpec }

func (anthropicDialect) matchPath(path string) bool {
	return strings.HasSuffix(strings.TrimSuffix(path, "/"), "/v1/messages")
}

// ownsPath: the Messages API's other endpoints (/v1/messages/count_tokens,
// /v1/messages/batches…) and the legacy /v1/complete.
func (anthropicDialect) ownsPath(path string) bool {
	return strings.Contains(path, "/v1/messages/") || strings.HasSuffix(strings.TrimSuffix(path, "/"), "/v1/complete")
}

// anthropicCredentials: Anthropic's clients send x-api-key, or a bearer
// token (OAuth); the bearer token is tried first.
var anthropicCredentials = []credential{
	{header: "X-Api-Key", rank: 10},
	{header: "Authorization", bearer: true, rank: 0},
}

func (anthropicDialect) parse(s *jsonscan.Scanner, tc *costmodel.Counter, _ string, info *requestInfo) (costmodel.Part, error) {
	return parseAnthropic(s, tc, info)
}

// parseAnthropic reads the top-level object at s.pos of a Messages API
// request: system, messages, tools, max_tokens, stream. Anthropic has no
// n: N stays 1.
func parseAnthropic(s *jsonscan.Scanner, tc *costmodel.Counter, info *requestInfo) (costmodel.Part, error) {
	var slots [3]costmodel.Part // system, messages, tools
	err := s.Object(anthropicTopKeys, func(key string) (err error) {
		switch key {
		case "model":
			info.Model, err = s.StringValue()
		case "system":
			slots[0], err = anthropicContent(s, tc, -1)
		case "messages":
			slots[1], err = anthropicMessages(s, tc)
		case "tools":
			slots[2], err = compactField(s, tc, "tools")
		case "max_tokens":
			info.MaxOutput, err = s.IntField("max_tokens", 0, 0)
		case "stream":
			info.Stream, err = s.BoolField("stream")
		default:
			err = s.Skip(nil)
		}
		return err
	})
	return costmodel.Sum(slots[:]), err
}

func anthropicMessages(s *jsonscan.Scanner, tc *costmodel.Counter) (total costmodel.Part, err error) {
	if ok, err := s.NullOr(jsonscan.Array, "messages", "an array"); !ok {
		return costmodel.Part{}, err
	}
	err = s.Array(func(i int) error {
		if s.Peek() != jsonscan.Object {
			return s.TypeError(fmt.Sprintf("messages[%d]", i), "an object")
		}
		var content costmodel.Part // {role, content}
		err := s.Object(contentKeys, func(key string) (err error) {
			if key != "content" {
				return s.Skip(nil)
			}
			content, err = anthropicContent(s, tc, i)
			return err
		})
		content.Messages++
		total.Add(content)
		return err
	})
	return total, err
}

// anthropicContent reads system (msg < 0) or message content: a string,
// null or an array of blocks.
func anthropicContent(s *jsonscan.Scanner, tc *costmodel.Counter, msg int) (costmodel.Part, error) {
	switch s.Peek() {
	case jsonscan.String, jsonscan.Null:
		return countLoose(s, tc)
	case jsonscan.Array:
		return anthropicBlocks(s, tc)
	}
	name := "system"
	if msg >= 0 {
		name = fmt.Sprintf("messages[%d].content", msg)
	}
	return costmodel.Part{}, s.TypeError(name, "a string or an array")
}

// anthropicBlocks reads an array of content blocks.
func anthropicBlocks(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	return sumArray(s, tc, func(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
		if s.Peek() == jsonscan.Object {
			return anthropicBlock(s, tc)
		}
		return countLoose(s, tc)
	})
}

// anthropicBlock reads one content block. Counted: text; tool_use and
// server_tool_use name and input (as compact JSON); tool_result content
// (a string or blocks, recursively); a document's title, context and
// plain-text source. An image block is one image; base64 data, URLs and
// thinking blocks are not counted. Recursion through nested content is
// bounded by jsonscan.MaxDepth.
func anthropicBlock(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	var slots [7]costmodel.Part
	var typ [16]byte
	typN := 0
	err := s.Object(anthropicBlockKeys, func(key string) (err error) {
		switch key {
		case "type":
			typN, err = s.ShortString(typ[:])
		case "text":
			slots[0], err = countLoose(s, tc)
		case "name":
			slots[1], err = countLoose(s, tc)
		case "input":
			slots[2], err = countCompact(s, tc)
		case "title":
			slots[3], err = countLoose(s, tc)
		case "context":
			slots[4], err = countLoose(s, tc)
		case "content":
			if s.Peek() == jsonscan.Array {
				slots[5], err = anthropicBlocks(s, tc)
			} else {
				slots[5], err = countLoose(s, tc)
			}
		case "source":
			if s.Peek() == jsonscan.Object {
				slots[6], err = anthropicSource(s, tc)
			} else {
				err = s.Skip(nil)
			}
		default:
			err = s.Skip(nil)
		}
		return err
	})
	p := costmodel.Sum(slots[:])
	if string(typ[:typN]) == "image" {
		p.Images++
	}
	return p, err
}

// anthropicSource reads a block's source: {type:"text", data} counts data
// as text, {type:"content", content:[blocks]} counts the blocks; base64
// and URL sources are not text.
func anthropicSource(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	var typ [16]byte
	typN, dataPos := 0, -1
	var content costmodel.Part
	err := s.Object(anthropicSourceKeys, func(key string) (err error) {
		switch key {
		case "type":
			typN, err = s.ShortString(typ[:])
		case "data":
			dataPos = -1
			if s.Peek() == jsonscan.String {
				dataPos = s.Pos()
			}
			err = s.Skip(nil)
		case "content":
			if s.Peek() == jsonscan.Array {
				content, err = anthropicBlocks(s, tc)
			} else {
				content, err = countLoose(s, tc)
			}
		default:
			err = s.Skip(nil)
		}
		return err
	})
	if err == nil && string(typ[:typN]) == "text" && dataPos >= 0 {
		// The data was validated above; count it now that its type is known.
		ds := s.At(dataPos)
		return countString(&ds, tc)
	}
	return content, err
}

// The keys each object walker reads.
var (
	anthropicTopKeys    = []string{"model", "system", "messages", "tools", "max_tokens", "stream"}
	contentKeys         = []string{"content"}
	anthropicBlockKeys  = []string{"type", "text", "name", "input", "title", "context", "content", "source"}
	anthropicSourceKeys = []string{"type", "data", "content"}
)

// anthropicQuotaKinds are the kinds of Anthropic's rate-limit headers.
var anthropicQuotaKinds = [4]string{"requests", "tokens", "input-tokens", "output-tokens"}

// setQuotaHeaders: Anthropic's family, anthropic-ratelimit-<kind>-limit,
// -remaining and -reset (RFC 3339, UTC, whole seconds), for requests,
// tokens, input-tokens and output-tokens, each from the bucket of that
// kind that constrains most; none of x-ratelimit-*.
func (anthropicDialect) setQuotaHeaders(hdr http.Header, qs quotaSet, now time.Time) {
	var hb headerBatch
	b := hb.arr[:0]
	for i, q := range [4]quota{qs.req, qs.tpm, qs.itpm, qs.otpm} {
		if !q.set {
			continue
		}
		names := &anthropicQuotaNames[i]
		b = strconv.AppendInt(b, q.limit, 10)
		hb.end(names[0], b)
		b = strconv.AppendInt(b, q.remaining(), 10)
		hb.end(names[1], b)
		reset := now.Add(q.reset() + time.Second - 1).UTC().Truncate(time.Second) // rounded up
		b = reset.AppendFormat(b, time.RFC3339)
		hb.end(names[2], b)
	}
	hb.set(hdr, b)
}

// anthropicQuotaNames are the header names of each kind: limit,
// remaining, reset, in canonical form.
var anthropicQuotaNames = func() (n [4][3]string) {
	for i, k := range anthropicQuotaKinds {
		for j, what := range [3]string{"limit", "remaining", "reset"} {
			n[i][j] = http.CanonicalHeaderKey("anthropic-ratelimit-" + k + "-" + what)
		}
	}
	return n
}()

// clampOutput rewrites max_tokens.
func (anthropicDialect) clampOutput(_ string, body []byte, n int64) []byte {
	return jsonscan.SetIntMember(body, []string{"max_tokens"}, "max_tokens", n)
}

// anthropicErrors is the error type of each of the handler's own answers.
var anthropicErrors = [errKindCount]errorName{
	errUnauthorized:   {typ: "authentication_error"},
	errInvalid:        {typ: "invalid_request_error"},
	errTooLarge:       {typ: "request_too_large"},
	errContextLength:  {typ: "invalid_request_error"},
	errRateLimited:    {typ: "rate_limit_error"},
	errCooldown:       {typ: "rate_limit_error"},
	errUnavailable:    {typ: "api_error"},
	errModelNotFound:  {typ: "not_found_error"},
	errBudget:         {typ: "rate_limit_error"},
	errModelNotPriced: {typ: "invalid_request_error"},
}

// appendAnthropicError appends Anthropic's error body:
// {"type":"error","error":{"type":…,"message":…}}.
func appendAnthropicError(dst []byte, typ, msg string) []byte {
	dst = append(dst, `{"type":"error","error":{"type":`...)
	dst = jsonscan.AppendString(dst, typ)
	dst = append(dst, `,"message":`...)
	dst = jsonscan.AppendString(dst, msg)
	return append(dst, "}}"...)
}

// anthropicRateHeaders are Anthropic's rate-limit headers; resets are RFC
// 3339 times.
var anthropicRateHeaders = []rateHeader{
	{dimRequests, "Anthropic-Ratelimit-Requests-Limit", "Anthropic-Ratelimit-Requests-Remaining", "Anthropic-Ratelimit-Requests-Reset"},
	{dimTokens, "Anthropic-Ratelimit-Tokens-Limit", "Anthropic-Ratelimit-Tokens-Remaining", "Anthropic-Ratelimit-Tokens-Reset"},
	{dimInput, "Anthropic-Ratelimit-Input-Tokens-Limit", "Anthropic-Ratelimit-Input-Tokens-Remaining", "Anthropic-Ratelimit-Input-Tokens-Reset"},
	{dimOutput, "Anthropic-Ratelimit-Output-Tokens-Limit", "Anthropic-Ratelimit-Output-Tokens-Remaining", "Anthropic-Ratelimit-Output-Tokens-Reset"},
}
