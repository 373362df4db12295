package llmratelimit

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// This file knows OpenAI's wire format: the paths and request bodies of
// chat completions, completions, Responses and embeddings (OpenAI's, and
// Azure OpenAI's deployment and /openai/v1/ paths), the usage object of
// their responses and streams, the include_usage rewrite, where clients
// put their key, OpenAI's error body and its rate-limit headers.

// openAIDialect is the dialect of OpenAI's API and of the many servers that copy
// it (vLLM, Ollama, other gateways).
type openAIDialect struct{}

func init() { registerDialect(openAIDialect{}) }

func (openAIDialect) name() string { return "openai" }

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

func (openAIDialect) credentials() []credential { return openAICredentials }

// Image costs by formula, never by the size of their data.
const (
	openAIImageLowTokens = 85
	openAIImageTokens    = 765
)

func (openAIDialect) imageTokens() (int64, int64) { return openAIImageTokens, openAIImageLowTokens }

// parse reads the body; on an Azure deployment path the model is the
// body's, else the deployment's name.
func (openAIDialect) parse(s *jsonScanner, tc *textCounter, path string, info *requestInfo) (part, error) {
	ep, deployment, _ := openAIRoute(path)
	info.NoOutput = ep == openAIEmbeddings
	p, err := parseOpenAI(s, tc, info)
	if info.Model == "" {
		info.Model = deployment
	}
	return p, err
}

// parseOpenAI reads the top-level object at s.pos of an OpenAI request. It
// does not need to know the endpoint: messages (chat), prompt
// (completions), input and instructions (Responses, embeddings) are each
// read when present.
func parseOpenAI(s *jsonScanner, tc *textCounter, info *requestInfo) (part, error) {
	const (
		slotMessages = iota
		slotInput
		slotPrompt
		slotInstructions
		slotTools
		slotFunctions
		numSlots
	)
	var slots [numSlots]part
	// max_completion_tokens, max_output_tokens, max_tokens; -1 = absent.
	maxes := [3]int64{-1, -1, -1}
	prompts := int64(1)
	err := s.object(openAITopKeys, func(key string) (err error) {
		switch key {
		case "model":
			info.Model, err = stringValue(s)
		case "messages":
			slots[slotMessages], err = openAIMessages(s, tc)
		case "input":
			slots[slotInput], _, err = openAIInputs(s, tc, "input")
		case "prompt":
			slots[slotPrompt], prompts, err = openAIInputs(s, tc, "prompt")
		case "instructions":
			slots[slotInstructions], err = textField(s, tc, "instructions")
		case "tools":
			slots[slotTools], err = compactField(s, tc, "tools")
		case "functions": // legacy function definitions
			slots[slotFunctions], err = countLoose(s, tc)
		case "max_completion_tokens":
			maxes[0], err = intField(s, "max_completion_tokens", 0, -1)
		case "max_output_tokens":
			maxes[1], err = intField(s, "max_output_tokens", 0, -1)
		case "max_tokens":
			maxes[2], err = intField(s, "max_tokens", 0, -1)
		case "n":
			info.N, err = intField(s, "n", 1, 1)
		case "stream":
			info.Stream, err = boolField(s, "stream")
		case "stream_options":
			info.IncludeUsage, err = openAIStreamOptions(s, info)
		default:
			err = s.skip(nil)
		}
		return err
	})
	if err != nil {
		return part{}, err
	}
	for _, v := range maxes {
		if v >= 0 {
			// max_tokens applies to each prompt of a completions batch.
			info.MaxOutput = satMul(v, prompts)
			break
		}
	}
	return sumParts(slots[:]), nil
}

func openAIStreamOptions(s *jsonScanner, info *requestInfo) (includeUsage bool, err error) {
	if ok, err := s.nullOr(jsonObject, "stream_options", "an object"); !ok {
		return false, err
	}
	info.HasStreamOptions = true
	err = s.object(streamOptionsKeys, func(key string) (err error) {
		if key != "include_usage" {
			return s.skip(nil)
		}
		includeUsage, err = boolField(s, "stream_options.include_usage")
		return err
	})
	return includeUsage, err
}

// openAIMessages reads chat "messages": each entry is one message.
func openAIMessages(s *jsonScanner, tc *textCounter) (total part, err error) {
	if ok, err := s.nullOr(jsonArray, "messages", "an array"); !ok {
		return part{}, err
	}
	err = s.array(func(i int) error {
		if s.peek() != jsonObject {
			return s.typeError(fmt.Sprintf("messages[%d]", i), "an object")
		}
		p, err := openAIEntry(s, tc, "messages", i)
		p.messages++
		total.add(p)
		return err
	})
	return total, err
}

// openAIInputs reads "prompt" (completions) or "input" (Responses,
// embeddings): a string, or an array of strings, token ids, arrays of
// token ids, or Responses input items (one message each). prompts is the
// number of prompts: each string or token array is one, loose token ids
// together are one.
func openAIInputs(s *jsonScanner, tc *textCounter, name string) (total part, prompts int64, err error) {
	switch s.peek() {
	case jsonString:
		total, err = countString(s, tc)
		return total, 1, err
	case jsonNull:
		_, err = s.literal()
		return part{}, 1, err
	case jsonArray:
	default:
		return part{}, 1, s.typeError(name, "a string or an array")
	}
	err = s.array(func(i int) (err error) {
		var p part
		switch s.peek() {
		case jsonString:
			prompts++
			p, err = countString(s, tc)
		case jsonNumber:
			p.tokens++
			_, err = s.number()
		case jsonArray:
			prompts++
			p, err = tokenIDs(s, tc)
		case jsonObject: // a Responses input item
			p, err = openAIEntry(s, tc, name, i)
			p.messages++
		default:
			return s.typeError(fmt.Sprintf("%s[%d]", name, i), "a string, a token id, an array of token ids or an object")
		}
		total.add(p)
		return err
	})
	return total, max(prompts, 1), err
}

// tokenIDs reads an array of token ids: each number is one token; anything
// else in it is counted as text.
func tokenIDs(s *jsonScanner, tc *textCounter) (total part, err error) {
	err = s.array(func(int) (err error) {
		if s.peek() == jsonNumber {
			total.tokens++
			_, err = s.number()
			return err
		}
		p, err := countCompact(s, tc)
		total.add(p)
		return err
	})
	return total, err
}

// openAIEntry reads a chat message or a Responses input item: message
// content, a participant or function name, tool calls (chat), function
// call arguments, inputs and outputs (Responses items).
func openAIEntry(s *jsonScanner, tc *textCounter, list string, idx int) (part, error) {
	const (
		slotContent = iota
		slotName
		slotToolCalls
		slotFunctionCall
		slotArguments
		slotInput
		slotOutput
		numSlots
	)
	var slots [numSlots]part
	err := s.object(openAIEntryKeys, func(key string) (err error) {
		switch key {
		case "content":
			switch s.peek() {
			case jsonString, jsonNull:
				slots[slotContent], err = countLoose(s, tc)
			case jsonArray:
				slots[slotContent], err = openAIParts(s, tc)
			default:
				err = s.typeError(fmt.Sprintf("%s[%d].content", list, idx), "a string or an array")
			}
		case "name":
			slots[slotName], err = countLoose(s, tc)
		case "tool_calls": // [{id, type, function:{name, arguments}}]
			if s.peek() == jsonArray {
				slots[slotToolCalls], err = sumArray(s, tc, openAIFunction)
			} else {
				slots[slotToolCalls], err = countLoose(s, tc)
			}
		case "function_call": // legacy: {name, arguments}
			slots[slotFunctionCall], err = openAIFunction(s, tc)
		case "arguments": // Responses function_call item
			slots[slotArguments], err = countLoose(s, tc)
		case "input": // Responses custom_tool_call item
			slots[slotInput], err = countLoose(s, tc)
		case "output": // Responses function_call_output item
			if s.peek() == jsonArray {
				slots[slotOutput], err = openAIParts(s, tc)
			} else {
				slots[slotOutput], err = countLoose(s, tc)
			}
		default:
			err = s.skip(nil)
		}
		return err
	})
	return sumParts(slots[:]), err
}

// openAIParts reads an array of content parts.
func openAIParts(s *jsonScanner, tc *textCounter) (part, error) {
	return sumArray(s, tc, func(s *jsonScanner, tc *textCounter) (part, error) {
		if s.peek() == jsonObject {
			return openAIPart(s, tc)
		}
		return countLoose(s, tc)
	})
}

// openAIPart reads one content part: text ({type:text|input_text|
// output_text, text}), a refusal, or an image ({type:image_url,
// image_url:{url,detail}} in chat, {type:input_image, detail} in
// Responses). An image counts by its detail, never by its URL or data.
func openAIPart(s *jsonScanner, tc *textCounter) (part, error) {
	var text [2]part // text, refusal
	var typ, detail [16]byte
	var typN, detailN int
	image := false
	err := s.object(openAIPartKeys, func(key string) (err error) {
		switch key {
		case "type":
			typN, err = shortField(s, typ[:])
		case "text":
			text[0], err = countLoose(s, tc)
		case "refusal":
			text[1], err = countLoose(s, tc)
		case "detail": // Responses input_image
			detailN, err = shortField(s, detail[:])
		case "image_url":
			image = true
			if s.peek() != jsonObject {
				return s.skip(nil) // a URL or base64 data is not text
			}
			err = s.object(imageURLKeys, func(key string) (err error) {
				if key == "detail" {
					detailN, err = shortField(s, detail[:])
					return err
				}
				return s.skip(nil)
			})
		default:
			err = s.skip(nil)
		}
		return err
	})
	p := sumParts(text[:])
	switch string(typ[:typN]) {
	case "image_url", "input_image", "image":
		image = true
	}
	if image && string(detail[:detailN]) == "low" {
		p.imagesLow++
	} else if image {
		p.images++
	}
	return p, err
}

// openAIFunction reads a function call: the text of its name, arguments
// and input counts; {function:{…}} and {custom:{…}} wrappers of tool calls
// are read through.
func openAIFunction(s *jsonScanner, tc *textCounter) (part, error) {
	if s.peek() != jsonObject {
		return countLoose(s, tc)
	}
	var fields [5]part
	err := s.object(openAIFunctionKeys, func(key string) (err error) {
		switch key {
		case "name":
			fields[0], err = countLoose(s, tc)
		case "arguments":
			fields[1], err = countLoose(s, tc)
		case "input":
			fields[2], err = countLoose(s, tc)
		case "function":
			fields[3], err = openAIFunction(s, tc)
		case "custom":
			fields[4], err = openAIFunction(s, tc)
		default:
			err = s.skip(nil)
		}
		return err
	})
	return sumParts(fields[:]), err
}

// The keys each object walker reads.
var (
	openAITopKeys = []string{"model", "messages", "input", "prompt", "instructions", "tools", "functions",
		"max_completion_tokens", "max_output_tokens", "max_tokens", "n", "stream", "stream_options"}
	streamOptionsKeys  = []string{"include_usage"}
	openAIEntryKeys    = []string{"content", "name", "tool_calls", "function_call", "arguments", "input", "output"}
	openAIPartKeys     = []string{"type", "text", "refusal", "detail", "image_url"}
	imageURLKeys       = []string{"detail"}
	openAIFunctionKeys = []string{"name", "arguments", "input", "function", "custom"}
)

var (
	openAIUsageKey   = []byte(`"usage"`)
	openAIUsageNames = []string{"prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
		"prompt_tokens_details.cached_tokens", "input_tokens_details.cached_tokens"}
)

// jsonUsage reads the last "usage" object of a response, where OpenAI puts
// it.
func (o openAIDialect) jsonUsage(body []byte) (usage, bool) {
	var a usageAcc
	a.add(lastObjectAfterKey(body, openAIUsageKey), openAIUsageNames)
	return o.streamUsage(&a)
}

// streamLine: a chat or completions stream ends with "data: [DONE]" and
// carries its usage in the last chunk (include_usage); a Responses stream
// ends with response.completed, whose response holds the usage.
func (openAIDialect) streamLine(line []byte, acc *usageAcc) bool {
	data, ok := sseData(line)
	if !ok {
		return false
	}
	if bytes.Contains(data, openAIUsageKey) {
		acc.add(lastObjectAfterKey(data, openAIUsageKey), openAIUsageNames)
	}
	return bytes.Equal(data, []byte("[DONE]")) || hasStringMember(data, "type", "response.completed")
}

// streamUsage combines the members read: prompt_tokens/completion_tokens
// (chat, completions, embeddings) or input_tokens/output_tokens
// (Responses).
func (openAIDialect) streamUsage(a *usageAcc) (usage, bool) {
	// prompt_tokens and input_tokens include the cached tokens.
	switch {
	case a.found&0b0011 != 0:
		return usage{Input: a.v[0], Output: a.v[1], Read: a.v[0], Cached: min(a.v[4], a.v[0])}, true
	case a.found&0b1100 != 0:
		return usage{Input: a.v[2], Output: a.v[3], Read: a.v[2], Cached: min(a.v[5], a.v[2])}, true
	}
	return usage{}, false
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

// setQuotaHeaders: x-ratelimit-{limit,remaining,reset}-{requests,tokens}.
func (openAIDialect) setQuotaHeaders(hdr http.Header, qs quotaSet, _ time.Time) {
	setXQuotaHeaders(hdr, qs.req, qs.tok)
}

// clampOutput: Responses has max_output_tokens, completions max_tokens;
// chat has max_completion_tokens (added when absent) or the older
// max_tokens, whichever the body sets.
func (openAIDialect) clampOutput(path string, body []byte, n int64) []byte {
	switch ep, _, _ := openAIRoute(path); ep {
	case openAIResponses:
		return setIntMember(body, []string{"max_output_tokens"}, "max_output_tokens", n)
	case openAIChat:
		return setIntMember(body, []string{"max_completion_tokens", "max_tokens"}, "max_completion_tokens", n)
	}
	return setIntMember(body, []string{"max_tokens"}, "max_tokens", n)
}

// needsIncludeUsage tells a streaming chat or completions request that did
// not ask for its usage: the handler asks for it (injectIncludeUsage) and
// strips the extra chunk again. Responses streams always end with their
// usage in response.completed. An Azure deployment path is asked only
// from the api-version that accepts stream_options on.
func needsIncludeUsage(path, query string, info *requestInfo) bool {
	if !info.Stream || info.HasStreamOptions {
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
	if j := skipSpace(body, i+1); j < len(body) && body[j] != '}' {
		out = append(out, ',')
	}
	return append(out, body[i+1:]...)
}

// isUsageOnlyChunk tells the extra chunk that include_usage adds at the end
// of a chat stream: "choices":[] with a usage object.
func isUsageOnlyChunk(event []byte) bool {
	if lastObjectAfterKey(event, openAIUsageKey) == nil {
		return false
	}
	i := bytes.Index(event, []byte(`"choices"`))
	if i < 0 {
		return false
	}
	j := skipSpace(event, i+len(`"choices"`))
	if j >= len(event) || event[j] != ':' {
		return false
	}
	j = skipSpace(event, j+1)
	if j >= len(event) || event[j] != '[' {
		return false
	}
	j = skipSpace(event, j+1)
	return j < len(event) && event[j] == ']'
}

// openAIErrors are the error type and code of each of the handler's own
// answers; a rate-limit 429 takes its type from the limit instead.
var openAIErrors = [...]struct{ typ, code string }{
	errUnauthorized:  {"invalid_request_error", "invalid_api_key"},
	errInvalid:       {"invalid_request_error", "invalid_json"},
	errTooLarge:      {"invalid_request_error", "request_too_large"},
	errContextLength: {"invalid_request_error", "context_length_exceeded"},
	errRateLimited:   {"", "rate_limit_exceeded"},
	errCooldown:      {"requests", "rate_limit_exceeded"},
	errUnavailable:   {"server_error", "store_unavailable"},
	errModelNotFound: {"invalid_request_error", "model_not_found"},
	errBudget:        {"insufficient_quota", "insufficient_quota"},
}

// openAILimitTypes is the error type of a 429, by the limit it names.
var openAILimitTypes = [...]string{
	dimRequests:    "requests",
	dimTokens:      "tokens",
	dimInput:       "input_tokens",
	dimOutput:      "output_tokens",
	dimConcurrency: "concurrency",
	dimKeys:        "requests",
	dimCooldown:    "requests",
}

func (openAIDialect) appendError(dst []byte, e *apiError) []byte {
	oe := openAIErrors[e.kind]
	if e.kind == errRateLimited {
		oe.typ = openAILimitTypes[e.dim]
	}
	return appendOpenAIError(dst, oe.typ, oe.code, e.msg)
}

// appendOpenAIError appends OpenAI's error body:
// {"error":{"message":…,"type":…,"param":null,"code":…}}. An empty code is
// written as null.
func appendOpenAIError(dst []byte, typ, code, msg string) []byte {
	dst = append(dst, `{"error":{"message":`...)
	dst = appendJSONString(dst, msg)
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, typ)
	dst = append(dst, `,"param":null,"code":`...)
	if code == "" {
		dst = append(dst, "null"...)
	} else {
		dst = appendJSONString(dst, code)
	}
	return append(dst, "}}"...)
}

// retryHint: the longest x-ratelimit-reset-* (Go durations such as "6m0s",
// "20ms") of the limits that are used up.
func (openAIDialect) retryHint(h http.Header, _ []byte, at time.Time) (time.Duration, bool) {
	return longestReset(h, openAIRateHeaders, at)
}

// fatal429: insufficient_quota is a billing limit; no wait cures it.
func (openAIDialect) fatal429(body []byte) bool {
	return bytes.Contains(body, []byte("insufficient_quota"))
}

// openAIRateHeaders are OpenAI's rate-limit headers; resets are Go
// durations ("1s", "6m0s", "20ms").
var openAIRateHeaders = []rateHeader{
	{dimRequests, "X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests"},
	{dimTokens, "X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"},
}

func (openAIDialect) rateHeaders() []rateHeader { return openAIRateHeaders }
