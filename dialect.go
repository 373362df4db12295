package llmratelimit

import "strings"

// format is the wire format of a request: which provider's JSON the body,
// the usage report and the handler's own error responses speak.
type format uint8

const (
	// formatNone means the path carries no body the estimator reads:
	// the request costs 1 request and 0 tokens.
	formatNone format = iota
	formatOpenAI
	formatAnthropic
)

func (f format) String() string {
	switch f {
	case formatOpenAI:
		return "openai"
	case formatAnthropic:
		return "anthropic"
	}
	return "none"
}

// formatForPath is the `format auto` rule of SPEC "Request flow" 2.
func formatForPath(path string) format {
	path = strings.TrimSuffix(path, "/")
	switch {
	case strings.HasSuffix(path, "/v1/messages"):
		return formatAnthropic
	case strings.HasSuffix(path, "/v1/chat/completions"),
		strings.HasSuffix(path, "/v1/completions"),
		strings.HasSuffix(path, "/v1/responses"),
		strings.HasSuffix(path, "/v1/embeddings"):
		return formatOpenAI
	}
	return formatNone
}

// requestInfo is what the estimator learns from one request body. It holds
// counts only; the handler turns them into tokens with the model's config
// (token_ratio, image_tokens, max_output).
type requestInfo struct {
	// Model is the body's "model" field ("" when absent).
	Model string
	// TextTokens is the estimated token count of all the text the model
	// reads (messages, system, tools, tool calls and results, input, prompt,
	// instructions), before token_ratio, without per-message overhead and
	// without images.
	TextTokens int64
	// Messages is the number of chat / messages / input items (3 tokens each).
	Messages int64
	// ImagesLow counts OpenAI images with detail "low".
	ImagesLow int64
	// Images counts every other image (OpenAI high/auto detail, Anthropic).
	Images int64
	// MaxOutput is max_completion_tokens | max_output_tokens | max_tokens
	// as given in the body; 0 when the body sets none.
	MaxOutput int64
	// N is the number of choices; 1 when absent.
	N int64
	// Stream is the body's "stream" flag.
	Stream bool
	// IncludeUsage reports stream_options.include_usage == true (OpenAI).
	IncludeUsage bool
	// HasStreamOptions reports a stream_options object (OpenAI).
	HasStreamOptions bool
}

// usage is what the upstream says the request actually cost.
type usage struct {
	// Input counts the input tokens that count against ITPM: for Anthropic
	// input_tokens + cache_creation_input_tokens (cache reads excluded).
	Input int64
	// Output counts the output tokens.
	Output int64
}

// usageAcc accumulates the usage objects of one response: a JSON body has
// one; a stream may have several (Anthropic's message_start and then
// message_delta, whose counts are cumulative), and a member seen later
// replaces the same member seen before.
type usageAcc struct {
	f     format
	v     [4]int64
	found uint32
	// needsFinal: an Anthropic stream's usage counts only once its
	// message_delta came (message_start's output_tokens is not the total).
	needsFinal, final bool
}

// add reads one usage object.
func (a *usageAcc) add(obj []byte) {
	if obj == nil {
		return
	}
	names := openAIUsageNames
	if a.f == formatAnthropic {
		names = anthropicUsageNames
	}
	var v [4]int64
	found, ok := objectInts(obj, names, v[:])
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

// usage is the accumulated usage; false when none was seen.
func (a *usageAcc) usage() (usage, bool) {
	if a.needsFinal && !a.final {
		return usage{}, false
	}
	switch a.f {
	case formatOpenAI:
		return openAIUsage(a.v[:], a.found)
	case formatAnthropic:
		return anthropicUsage(a.v[:], a.found)
	}
	return usage{}, false
}

// parseUsageJSON reads the usage object of a non-streamed JSON response of
// format f (the last "usage" object in it, where providers put it).
func parseUsageJSON(f format, body []byte) (usage, bool) {
	a := usageAcc{f: f}
	a.add(lastObjectAfterKey(body, usageKey))
	return a.usage()
}

var usageKey = []byte(`"usage"`)

// badRequestError is a client error found in the body: the handler answers
// 400 in the request's format with this message.
type badRequestError struct{ msg string }

func (e *badRequestError) Error() string { return e.msg }
