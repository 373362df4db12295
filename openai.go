package llmratelimit

import (
	"bytes"
	"strings"

	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// This file (with openai_request.go, its body walk) knows OpenAI's wire
// format: the paths and request bodies of chat completions, completions,
// Responses and embeddings (OpenAI's, and Azure OpenAI's deployment and
// /openai/v1/ paths), the usage object of their responses and streams,
// the include_usage rewrite, where clients put their key, OpenAI's error
// body and its rate-limit headers.

// openAIDialect is the dialect of OpenAI's API and of the many servers that copy
// it (vLLM, other gateways, local model servers' /v1 endpoints).
type openAIDialect struct{}

func init() { registerDialect(openAIDialect{}) }

// openAISpec is OpenAI's format as data.
var openAISpec = dialectSpec{
	name: "openai",
	// LiteLLM keys OpenAI's models bare, and some under openai/. Other
	// providers that speak this format are found by the provider their
	// model's name starts with (pricenames.go).
	pricesProvider: "openai",
	credentials:    openAICredentials,
	rateHeaders:    openAIRateHeaders,
	// Image costs by formula, never by the size of their data.
	image:     imageCost{full: 765, low: 85},
	errors:    openAIErrors,
	byLimit:   &openAILimitTypes,
	errorBody: func(dst []byte, n errorName, e *apiError) []byte { return appendOpenAIError(dst, n.typ, n.code, e.msg) },
	// insufficient_quota is a billing limit; no wait cures it.
	fatal429: [][]byte{[]byte("insufficient_quota")},
	usage: usageSpec{
		key: []byte(`"usage"`),
		// prompt_tokens/completion_tokens: chat, completions, embeddings;
		// input_tokens/output_tokens: Responses. Both include the cached
		// tokens.
		schemes: []usageNames{
			{input: "prompt_tokens", output: "completion_tokens", cached: "prompt_tokens_details.cached_tokens"},
			{input: "input_tokens", output: "output_tokens", cached: "input_tokens_details.cached_tokens"},
		},
		// A chat or completions stream ends with "data: [DONE]" and
		// carries its usage in the last chunk (include_usage); a Responses
		// stream ends with response.completed, whose response holds the
		// usage.
		endData:  [][]byte{[]byte("[DONE]")},
		endTypes: []string{"response.completed"},
	},
	stream: framingSSE,
}

func (openAIDialect) spec() *dialectSpec { return &openAISpec }

func (openAIDialect) matchPath(path string) bool {
	_, _, known := openAIRoute(path)
	return known
}

// The endpoints whose bodies the dialect reads.
const (
	openAINone = iota
	openAIChat
	openAICompletions
	openAIResponses
	openAIEmbeddings
)

// openAIEndpoints names each endpoint as its path ends.
var openAIEndpoints = [...]string{
	openAIChat:        "chat/completions",
	openAICompletions: "completions",
	openAIResponses:   "responses",
	openAIEmbeddings:  "embeddings",
}

// azureDeployments is where an Azure OpenAI deployment path starts:
// /openai/deployments/<deployment>/chat/completions?api-version=….
const azureDeployments = "/openai/deployments/"

// openAIRoute is the endpoint a path calls, by its last segments, and on
// an Azure deployment path the deployment's name (a part of path: nothing
// is allocated). known tells a path that `format auto` reads as OpenAI's:
// …/v1/<endpoint> (OpenAI, and Azure's /openai/v1/),
// …/openai/deployments/<deployment>/<endpoint> and Azure's
// …/openai/responses. Under `format openai` any path is read, its
// endpoint told by how it ends.
func openAIRoute(path string) (ep int, deployment string, known bool) {
	path = strings.TrimSuffix(path, "/")
	if i := strings.LastIndex(path, azureDeployments); i >= 0 {
		rest := path[i+len(azureDeployments):]
		if j := strings.IndexByte(rest, '/'); j > 0 {
			for ep, name := range openAIEndpoints {
				if name != "" && rest[j+1:] == name {
					return ep, rest[:j], true
				}
			}
		}
	}
	for ep, name := range openAIEndpoints {
		if before, ok := strings.CutSuffix(path, name); ok && name != "" && strings.HasSuffix(before, "/") {
			known = strings.HasSuffix(before, "/v1/") || ep == openAIResponses && strings.HasSuffix(before, "/openai/")
			return ep, "", known
		}
	}
	return openAINone, "", false
}

// ownsPath: Azure OpenAI's other paths (/openai/deployments/<d>/images/…,
// /openai/models…). Any path that no dialect owns takes OpenAI's shape too
// (fallbackDialect).
func (openAIDialect) ownsPath(path string) bool {
	return strings.HasPrefix(path, "/openai/") || strings.Contains(path, "/openai/deployments/")
}

// openAICredentials: OpenAI's clients send a bearer token; Azure
// OpenAI's send the key in api-key (tried after every other place).
var openAICredentials = []credential{
	{header: "Authorization", bearer: true, rank: 0},
	{header: "Api-Key", rank: 40},
}

// prepare asks a streaming chat or completions request that did not ask
// for its usage to send it (stream_options.include_usage); the extra chunk
// is stripped again before the client sees it. Responses streams always
// end with their usage.
func (openAIDialect) prepare(path, query string, body []byte, info *requestInfo) ([]byte, bool) {
	if !needsIncludeUsage(path, query, info) {
		return body, false
	}
	return injectIncludeUsage(body), true
}

// azureStreamOptions is the first Azure OpenAI api-version that accepts
// stream_options (2024-09-01-preview; GA 2024-10-21). An older one answers
// 400 to it, so its streams keep their reservation instead. Versions are
// dates, compared as strings.
const azureStreamOptions = "2024-09-01"

func (openAIDialect) isAddedUsageEvent(event []byte) bool { return isUsageOnlyChunk(event) }

// clampOutput: Responses has max_output_tokens, completions max_tokens;
// chat has max_completion_tokens (added when absent) or the older
// max_tokens, whichever the body sets.
func (openAIDialect) clampOutput(path string, body []byte, n int64) []byte {
	switch ep, _, _ := openAIRoute(path); ep {
	case openAIResponses:
		return jsonscan.SetIntMember(body, []string{"max_output_tokens"}, "max_output_tokens", n)
	case openAIChat:
		return jsonscan.SetIntMember(body, []string{"max_completion_tokens", "max_tokens"}, "max_completion_tokens", n)
	}
	return jsonscan.SetIntMember(body, []string{"max_tokens"}, "max_tokens", n)
}

// needsIncludeUsage tells a streaming chat or completions request that did
// not ask for its usage: the handler asks for it (injectIncludeUsage) and
// strips the extra chunk again. Responses streams always end with their
// usage in response.completed. An Azure deployment path is asked only
// from the api-version that accepts stream_options on.
func needsIncludeUsage(path, query string, info *requestInfo) bool {
	if !info.Stream || info.StreamUsageSet {
		return false
	}
	ep, deployment, _ := openAIRoute(path)
	if ep != openAIChat && ep != openAICompletions {
		return false
	}
	return deployment == "" || queryValue(query, "api-version") >= azureStreamOptions
}

// injectIncludeUsage asks an OpenAI streaming request for its usage: it
// adds "stream_options":{"include_usage":true} to the top-level object of a
// body that has no stream_options. The body is valid JSON (parseRequest
// read it).
func injectIncludeUsage(body []byte) []byte {
	i := bytes.IndexByte(body, '{')
	if i < 0 {
		return body
	}
	const member = `"stream_options":{"include_usage":true}`
	out := make([]byte, 0, len(body)+len(member)+1)
	out = append(out, body[:i+1]...)
	out = append(out, member...)
	if j := jsonscan.SkipSpace(body, i+1); j < len(body) && body[j] != '}' {
		out = append(out, ',')
	}
	return append(out, body[i+1:]...)
}

// isUsageOnlyChunk tells the extra chunk that include_usage adds at the end
// of a chat stream: "choices":[] with a usage object.
func isUsageOnlyChunk(event []byte) bool {
	if lastObjectAfterKey(event, openAISpec.usage.key) == nil {
		return false
	}
	i := bytes.Index(event, []byte(`"choices"`))
	if i < 0 {
		return false
	}
	j := jsonscan.SkipSpace(event, i+len(`"choices"`))
	if j >= len(event) || event[j] != ':' {
		return false
	}
	j = jsonscan.SkipSpace(event, j+1)
	if j >= len(event) || event[j] != '[' {
		return false
	}
	j = jsonscan.SkipSpace(event, j+1)
	return j < len(event) && event[j] == ']'
}

// openAIErrors are the error type and code of each of the handler's own
// answers; a rate-limit 429 takes its type from the limit instead.
var openAIErrors = [errKindCount]errorName{
	errUnauthorized:   {"invalid_request_error", "invalid_api_key"},
	errInvalid:        {"invalid_request_error", "invalid_json"},
	errTooLarge:       {"invalid_request_error", "request_too_large"},
	errContextLength:  {"invalid_request_error", "context_length_exceeded"},
	errRateLimited:    {"", "rate_limit_exceeded"},
	errCooldown:       {"requests", "rate_limit_exceeded"},
	errUnavailable:    {"server_error", "store_unavailable"},
	errModelNotFound:  {"invalid_request_error", "model_not_found"},
	errBudget:         {"insufficient_quota", "insufficient_quota"},
	errModelNotPriced: {"invalid_request_error", "model_not_priced"},
}

// openAILimitTypes is the error type of a 429, by the limit it names.
var openAILimitTypes = [dimCount]string{
	dimRequests:    "requests",
	dimTokens:      "tokens",
	dimInput:       "input_tokens",
	dimOutput:      "output_tokens",
	dimConcurrency: "concurrency",
	dimKeys:        "requests",
	dimCooldown:    "requests",
}

// appendOpenAIError appends OpenAI's error body:
// {"error":{"message":…,"type":…,"param":null,"code":…}}. An empty code is
// written as null.
func appendOpenAIError(dst []byte, typ, code, msg string) []byte {
	dst = append(dst, `{"error":{"message":`...)
	dst = jsonscan.AppendString(dst, msg)
	dst = append(dst, `,"type":`...)
	dst = jsonscan.AppendString(dst, typ)
	dst = append(dst, `,"param":null,"code":`...)
	if code == "" {
		dst = append(dst, "null"...)
	} else {
		dst = jsonscan.AppendString(dst, code)
	}
	return append(dst, "}}"...)
}

// openAIRateHeaders are OpenAI's rate-limit headers; resets are Go
// durations ("1s", "6m0s", "20ms"). The gateway writes the same family.
var openAIRateHeaders = []rateHeader{
	{dimRequests, "X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests"},
	{dimTokens, "X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"},
}
