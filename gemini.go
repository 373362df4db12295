package llmratelimit

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// This file knows Google's Gemini API (generativelanguage and Vertex AI
// paths): the generateContent and streamGenerateContent paths and request
// body, usageMetadata in answers and streams (server-sent events with
// alt=sse, or one streamed JSON array), and Google's error body with its
// RetryInfo.
//
// Google's JSON accepts both the lowerCamelCase and the snake_case
// spelling of every field; the walkers read both.

// geminiDialect is the dialect of Google's Gemini API.
type geminiDialect struct{}

func init() { registerDialect(geminiDialect{}) }

func (geminiDialect) name() string { return "gemini" }

// pricesProvider: LiteLLM keys the Gemini API's prices under gemini/
// (gemini/gemini-2.5-flash); the bare names are Vertex AI's.
func (geminiDialect) pricesProvider() string { return "gemini" }

// geminiMethod splits a path ending in …/models/<model>:<method> under
// /v1beta/ or /v1/; ok is false for any other path.
func geminiMethod(path string) (model, method string, ok bool) {
	if !strings.Contains(path, "/v1beta/") && !strings.Contains(path, "/v1/") {
		return "", "", false
	}
	i := strings.LastIndex(path, "/models/")
	if i < 0 {
		return "", "", false
	}
	rest := path[i+len("/models/"):]
	j := strings.LastIndexByte(rest, ':')
	if j <= 0 || strings.IndexByte(rest, '/') >= 0 {
		return "", "", false
	}
	return rest[:j], rest[j+1:], true
}

func (geminiDialect) matchPath(path string) bool {
	_, method, ok := geminiMethod(path)
	return ok && (method == "generateContent" || method == "streamGenerateContent")
}

// ownsPath: every other method on a model (:countTokens, :embedContent,
// :batchGenerateContent…) and every path of the v1beta API, except its
// OpenAI-compatible endpoints (/v1beta/openai/…), whose clients are
// OpenAI's SDKs.
func (geminiDialect) ownsPath(path string) bool {
	if strings.Contains(path, "/openai/") {
		return false
	}
	_, _, ok := geminiMethod(path)
	return ok || strings.Contains(path, "/v1beta/") || strings.HasSuffix(path, "/v1beta")
}

// geminiCredentials: Google's clients send x-goog-api-key, or ?key= in
// the URL; Vertex AI's send a bearer token (tried first).
var geminiCredentials = []credential{
	{header: "X-Goog-Api-Key", rank: 20},
	{query: "key", rank: 30},
	{header: "Authorization", bearer: true, rank: 0},
}

func (geminiDialect) credentials() []credential { return geminiCredentials }

// geminiFileTokens is what an inlineData or fileData part (an image, a
// page, a clip) costs when no model block says.
const geminiFileTokens = 258

func (geminiDialect) imageTokens() (int64, int64) { return geminiFileTokens, geminiFileTokens }

// parse reads a GenerateContentRequest: contents, systemInstruction, tools
// and generationConfig. The model and whether the answer streams come from
// the path.
func (geminiDialect) parse(s *jsonScanner, tc *textCounter, path string, info *requestInfo) (part, error) {
	model, method, _ := geminiMethod(path)
	info.Model = model
	info.Stream = method == "streamGenerateContent"
	var slots [3]part // contents, systemInstruction, tools
	err := s.object(geminiTopKeys, func(key string) (err error) {
		switch key {
		case "contents":
			slots[0], err = geminiContents(s, tc)
		case "systemInstruction", "system_instruction":
			if ok, err := s.nullOr(jsonObject, key, "an object"); !ok {
				return err
			}
			slots[1], err = geminiContent(s, tc, key, -1)
		case "tools":
			slots[2], err = geminiTools(s, tc)
		case "generationConfig", "generation_config":
			err = geminiGenerationConfig(s, key, info)
		default:
			err = s.skip(nil)
		}
		return err
	})
	return sumParts(slots[:]), err
}

// geminiContents reads contents: an array of turns, one message each.
func geminiContents(s *jsonScanner, tc *textCounter) (total part, err error) {
	if ok, err := s.nullOr(jsonArray, "contents", "an array"); !ok {
		return part{}, err
	}
	err = s.array(func(i int) error {
		if s.peek() != jsonObject {
			return s.typeError(contentName("contents", i), "an object")
		}
		p, err := geminiContent(s, tc, "contents", i)
		p.messages++
		total.add(p)
		return err
	})
	return total, err
}

// contentName names a Content in an error: field, or field[i] for i >= 0.
// Names are only built for errors: building them per element would
// allocate on every request.
func contentName(field string, i int) string {
	if i < 0 {
		return field
	}
	return field + "[" + strconv.Itoa(i) + "]"
}

// geminiNullOr is s.nullOr for a member of a Content, whose name is
// built (contentName + suffix) only for the error.
func geminiNullOr(s *jsonScanner, want jsonKind, field string, i int, suffix, desc string) (present bool, err error) {
	switch s.peek() {
	case want:
		return true, nil
	case jsonNull:
		_, err = s.literal()
		return false, err
	}
	return false, s.typeError(contentName(field, i)+suffix, desc)
}

// geminiContent reads one Content: {role, parts}; field and i name it in
// errors (contentName).
func geminiContent(s *jsonScanner, tc *textCounter, field string, i int) (p part, err error) {
	err = s.object(geminiContentKeys, func(key string) (err error) {
		if key != "parts" {
			return s.skip(nil)
		}
		if ok, err := geminiNullOr(s, jsonArray, field, i, ".parts", "an array"); !ok {
			return err
		}
		p, err = sumArray(s, tc, func(s *jsonScanner, tc *textCounter) (part, error) {
			if s.peek() != jsonObject {
				return part{}, s.typeError(contentName(field, i)+".parts[]", "an object")
			}
			return geminiPart(s, tc, field, i)
		})
		return err
	})
	return p, err
}

// geminiPart reads one Part: text; a function call or response, executable
// code or its result (as compact JSON); inline data or a file (one image
// each, never by their size). Thought signatures are not text.
func geminiPart(s *jsonScanner, tc *textCounter, field string, i int) (part, error) {
	var slots [2]part // text, structured content
	files := int64(0)
	err := s.object(geminiPartKeys, func(key string) (err error) {
		switch key {
		case "text":
			if ok, err := geminiNullOr(s, jsonString, field, i, ".parts[].text", "a string"); !ok {
				return err
			}
			slots[0], err = countString(s, tc)
		case "functionCall", "function_call", "functionResponse", "function_response",
			"executableCode", "executable_code", "codeExecutionResult", "code_execution_result":
			var p part
			p, err = countCompact(s, tc)
			slots[1].add(p)
		case "inlineData", "inline_data", "fileData", "file_data":
			files++
			err = s.skip(nil)
		default:
			err = s.skip(nil)
		}
		return err
	})
	p := sumParts(slots[:])
	p.images += files
	return p, err
}

// geminiTools reads tools: the function declarations count as compact JSON;
// built-in tools (search, code execution) are not text.
func geminiTools(s *jsonScanner, tc *textCounter) (total part, err error) {
	if ok, err := s.nullOr(jsonArray, "tools", "an array"); !ok {
		return part{}, err
	}
	err = s.array(func(i int) error {
		if s.peek() != jsonObject {
			return s.typeError(fmt.Sprintf("tools[%d]", i), "an object")
		}
		return s.object(geminiToolKeys, func(key string) error {
			if key == "" {
				return s.skip(nil)
			}
			p, err := countCompact(s, tc)
			total.add(p)
			return err
		})
	})
	return total, err
}

// geminiConfigField is name.key for the generation config fields that
// geminiGenerationConfig reads, as a constant.
func geminiConfigField(name, key string) string {
	camel := name == "generationConfig"
	switch key {
	case "maxOutputTokens":
		if camel {
			return "generationConfig.maxOutputTokens"
		}
		return "generation_config.maxOutputTokens"
	case "max_output_tokens":
		if camel {
			return "generationConfig.max_output_tokens"
		}
		return "generation_config.max_output_tokens"
	case "candidateCount":
		if camel {
			return "generationConfig.candidateCount"
		}
		return "generation_config.candidateCount"
	}
	if camel {
		return "generationConfig.candidate_count"
	}
	return "generation_config.candidate_count"
}

// geminiGenerationConfig reads the output limit: maxOutputTokens ×
// candidateCount.
func geminiGenerationConfig(s *jsonScanner, name string, info *requestInfo) error {
	if ok, err := s.nullOr(jsonObject, name, "an object"); !ok {
		return err
	}
	maxOut, n := int64(-1), int64(1)
	err := s.object(geminiGenConfigKeys, func(key string) (err error) {
		// The field names of errors are constants: built per request, they
		// would allocate.
		switch key {
		case "maxOutputTokens", "max_output_tokens":
			maxOut, err = intField(s, geminiConfigField(name, key), 0, -1)
		case "candidateCount", "candidate_count":
			n, err = intField(s, geminiConfigField(name, key), 1, 1)
		default:
			err = s.skip(nil)
		}
		return err
	})
	info.N = n
	if maxOut >= 0 {
		info.MaxOutput = maxOut
	}
	return err
}

// The keys each object walker reads.
var (
	geminiTopKeys     = []string{"contents", "systemInstruction", "system_instruction", "tools", "generationConfig", "generation_config"}
	geminiContentKeys = []string{"parts"}
	geminiPartKeys    = []string{"text", "functionCall", "function_call", "functionResponse", "function_response",
		"executableCode", "executable_code", "codeExecutionResult", "code_execution_result",
		"inlineData", "inline_data", "fileData", "file_data"}
	geminiToolKeys      = []string{"functionDeclarations", "function_declarations"}
	geminiGenConfigKeys = []string{"maxOutputTokens", "max_output_tokens", "candidateCount", "candidate_count"}
)

// prepare: Gemini streams always carry their usage.
func (geminiDialect) prepare(_, _ string, body []byte, _ *requestInfo) ([]byte, bool) {
	return body, false
}

func (geminiDialect) isAddedUsageEvent([]byte) bool { return false }

var (
	geminiUsageKey = []byte(`"usageMetadata"`)
	// promptTokenCount is the input (cached content included);
	// candidatesTokenCount + thoughtsTokenCount the output.
	geminiUsageNames = []string{"promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "cachedContentTokenCount"}
)

// jsonUsage reads the last usageMetadata of an answer: of a single
// response, or of the streamed JSON array (each chunk's figures are
// cumulative, so the last one counts).
// setQuotaHeaders: Google has no rate-limit headers of its own; the
// gateway's are the x-ratelimit-* family.
func (geminiDialect) setQuotaHeaders(hdr http.Header, qs quotaSet, _ time.Time) {
	setXQuotaHeaders(hdr, qs.req, qs.tok)
}

// clampOutput rewrites generationConfig.maxOutputTokens (either
// spelling), adding what is missing.
func (geminiDialect) clampOutput(_ string, body []byte, n int64) []byte {
	cfg := []byte(`{"maxOutputTokens":` + strconv.FormatInt(n, 10) + `}`)
	from, to, ok := memberSpan(body, []string{"generationConfig", "generation_config"})
	if !ok {
		return addMember(body, "generationConfig", cfg)
	}
	if body[from] == '{' {
		cfg = setIntMember(body[from:to], []string{"maxOutputTokens", "max_output_tokens"}, "maxOutputTokens", n)
	}
	return append(append(append(make([]byte, 0, len(body)+len(cfg)), body[:from]...), cfg...), body[to:]...)
}

func (g geminiDialect) jsonUsage(body []byte) (usage, bool) {
	var a usageAcc
	a.add(lastObjectAfterKey(body, geminiUsageKey), geminiUsageNames)
	return g.streamUsage(&a)
}

// streamLine reads each event's usageMetadata; the last one counts. A
// Gemini stream has no end event: it ends when the connection does.
func (geminiDialect) streamLine(line []byte, acc *usageAcc) bool {
	if data, ok := sseData(line); ok && bytes.Contains(data, geminiUsageKey) {
		acc.add(lastObjectAfterKey(data, geminiUsageKey), geminiUsageNames)
	}
	return false
}

func (geminiDialect) streamUsage(a *usageAcc) (usage, bool) {
	if a.found&0b111 == 0 {
		return usage{}, false
	}
	// promptTokenCount includes the cached content.
	return usage{Input: a.v[0], Output: satAdd(a.v[1], a.v[2]), Read: a.v[0], Cached: min(a.v[3], a.v[0])}, true
}

// geminiStatus is Google's status name of each of the handler's own
// answers (google.rpc.Code).
var geminiStatus = [...]string{
	errUnauthorized:   "UNAUTHENTICATED",
	errInvalid:        "INVALID_ARGUMENT",
	errTooLarge:       "INVALID_ARGUMENT",
	errContextLength:  "INVALID_ARGUMENT",
	errRateLimited:    "RESOURCE_EXHAUSTED",
	errCooldown:       "RESOURCE_EXHAUSTED",
	errUnavailable:    "UNAVAILABLE",
	errModelNotFound:  "NOT_FOUND",
	errBudget:         "RESOURCE_EXHAUSTED",
	errModelNotPriced: "INVALID_ARGUMENT",
}

// appendError appends Google's error body:
// {"error":{"code":429,"message":…,"status":"RESOURCE_EXHAUSTED"}}; a 429
// that may be retried adds a RetryInfo detail with the wait in seconds.
func (geminiDialect) appendError(dst []byte, e *apiError) []byte {
	dst = append(dst, `{"error":{"code":`...)
	dst = strconv.AppendInt(dst, int64(e.status()), 10)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, e.msg)
	dst = append(dst, `,"status":"`...)
	dst = append(dst, geminiStatus[e.kind]...)
	dst = append(dst, '"')
	if e.status() == http.StatusTooManyRequests && !e.never {
		dst = append(dst, `,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"`...)
		dst = appendSeconds(dst, e.wait)
		dst = append(dst, `"}]`...)
	}
	return append(dst, "}}"...)
}

// appendSeconds writes a wait as google.protobuf.Duration's JSON form,
// rounded up to the millisecond: "2s", "0.250s".
func appendSeconds(dst []byte, d time.Duration) []byte {
	ms := int64((max(d, 0) + time.Millisecond - 1) / time.Millisecond)
	dst = strconv.AppendInt(dst, ms/1000, 10)
	if frac := ms % 1000; frac != 0 {
		dst = append(dst, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
	}
	return append(dst, 's')
}

// retryHint reads RetryInfo's retryDelay ("30s", "1.5s") from an error
// body.
func (geminiDialect) retryHint(_ http.Header, body []byte, _ time.Time) (time.Duration, bool) {
	v, ok := stringMember(body, "retryDelay")
	if !ok || len(v) > 32 {
		return 0, false
	}
	d, err := time.ParseDuration(string(v))
	if err != nil {
		return 0, false
	}
	return sane(d)
}

// fatal429: Gemini says a used-up quota and a rate limit the same way
// (RESOURCE_EXHAUSTED), and its RetryInfo tells them apart: the retry loop
// waits as it says.
func (geminiDialect) fatal429([]byte) bool { return false }

// rateHeaders: the Gemini API sends no rate-limit headers.
func (geminiDialect) rateHeaders() []rateHeader { return nil }
