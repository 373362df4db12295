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

// geminiSpec is Google's format as data.
var geminiSpec = dialectSpec{
	name: "gemini",
	// LiteLLM keys the Gemini API's prices under gemini/
	// (gemini/gemini-2.5-flash); the bare names are Vertex AI's.
	pricesProvider: "gemini",
	credentials:    geminiCredentials,
	// The Gemini API sends no rate-limit headers; the gateway's are the
	// x-ratelimit-* family.
	rateHeaders: nil,
	image:       imageCost{full: geminiFileTokens, low: geminiFileTokens},
	errors:      geminiStatus,
	errorBody:   appendGeminiError,
	// Gemini says a used-up quota and a rate limit the same way
	// (RESOURCE_EXHAUSTED), and its RetryInfo tells them apart: the retry
	// loop waits as it says.
	fatal429: nil,
	usage: usageSpec{
		key: []byte(`"usageMetadata"`),
		// promptTokenCount is the input (cached content included);
		// candidatesTokenCount + thoughtsTokenCount the output. Each
		// chunk's figures are cumulative, so the last one counts; a stream
		// has no end event: it ends when the connection does.
		schemes: []usageNames{{input: "promptTokenCount", output: "candidatesTokenCount", output2: "thoughtsTokenCount",
			cached: "cachedContentTokenCount"}},
	},
	stream: framingSSE,
}

func (geminiDialect) spec() *dialectSpec { return &geminiSpec }

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

// geminiFileTokens is what an inlineData or fileData part (an image, a
// page, a clip) costs when no model block says.
const geminiFileTokens = 258

// parse reads a GenerateContentRequest: contents, systemInstruction, tools
// and generationConfig. The model and whether the answer streams come from
// the path.
func (geminiDialect) parse(s *jsonscan.Scanner, tc *costmodel.Counter, path string, info *requestInfo) (costmodel.Part, error) {
	model, method, _ := geminiMethod(path)
	info.Model = model
	info.Stream = method == "streamGenerateContent"
	var slots [3]costmodel.Part // contents, systemInstruction, tools
	err := s.Object(geminiTopKeys, func(key string) (err error) {
		switch key {
		case "contents":
			slots[0], err = geminiContents(s, tc)
		case "systemInstruction", "system_instruction":
			if ok, err := s.NullOr(jsonscan.Object, key, "an object"); !ok {
				return err
			}
			slots[1], err = geminiContent(s, tc, key, -1)
		case "tools":
			slots[2], err = geminiTools(s, tc)
		case "generationConfig", "generation_config":
			err = geminiGenerationConfig(s, key, info)
		default:
			err = s.Skip(nil)
		}
		return err
	})
	return costmodel.Sum(slots[:]), err
}

// geminiContents reads contents: an array of turns, one message each.
func geminiContents(s *jsonscan.Scanner, tc *costmodel.Counter) (total costmodel.Part, err error) {
	if ok, err := s.NullOr(jsonscan.Array, "contents", "an array"); !ok {
		return costmodel.Part{}, err
	}
	err = s.Array(func(i int) error {
		if s.Peek() != jsonscan.Object {
			return s.TypeError(contentName("contents", i), "an object")
		}
		p, err := geminiContent(s, tc, "contents", i)
		p.Messages++
		total.Add(p)
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
func geminiNullOr(s *jsonscan.Scanner, want jsonscan.Kind, field string, i int, suffix, desc string) (present bool, err error) {
	switch s.Peek() {
	case want:
		return true, nil
	case jsonscan.Null:
		_, err = s.Literal()
		return false, err
	}
	return false, s.TypeError(contentName(field, i)+suffix, desc)
}

// geminiContent reads one Content: {role, parts}; field and i name it in
// errors (contentName).
func geminiContent(s *jsonscan.Scanner, tc *costmodel.Counter, field string, i int) (p costmodel.Part, err error) {
	err = s.Object(geminiContentKeys, func(key string) (err error) {
		if key != "parts" {
			return s.Skip(nil)
		}
		if ok, err := geminiNullOr(s, jsonscan.Array, field, i, ".parts", "an array"); !ok {
			return err
		}
		p, err = sumArray(s, tc, func(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
			if s.Peek() != jsonscan.Object {
				return costmodel.Part{}, s.TypeError(contentName(field, i)+".parts[]", "an object")
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
func geminiPart(s *jsonscan.Scanner, tc *costmodel.Counter, field string, i int) (costmodel.Part, error) {
	var slots [2]costmodel.Part // text, structured content
	files := int64(0)
	err := s.Object(geminiPartKeys, func(key string) (err error) {
		switch key {
		case "text":
			if ok, err := geminiNullOr(s, jsonscan.String, field, i, ".parts[].text", "a string"); !ok {
				return err
			}
			slots[0], err = countString(s, tc)
		case "functionCall", "function_call", "functionResponse", "function_response",
			"executableCode", "executable_code", "codeExecutionResult", "code_execution_result":
			var p costmodel.Part
			p, err = countCompact(s, tc)
			slots[1].Add(p)
		case "inlineData", "inline_data", "fileData", "file_data":
			files++
			err = s.Skip(nil)
		default:
			err = s.Skip(nil)
		}
		return err
	})
	p := costmodel.Sum(slots[:])
	p.Images += files
	return p, err
}

// geminiTools reads tools: the function declarations count as compact JSON;
// built-in tools (search, code execution) are not text.
func geminiTools(s *jsonscan.Scanner, tc *costmodel.Counter) (total costmodel.Part, err error) {
	if ok, err := s.NullOr(jsonscan.Array, "tools", "an array"); !ok {
		return costmodel.Part{}, err
	}
	err = s.Array(func(i int) error {
		if s.Peek() != jsonscan.Object {
			return s.TypeError(fmt.Sprintf("tools[%d]", i), "an object")
		}
		return s.Object(geminiToolKeys, func(key string) error {
			if key == "" {
				return s.Skip(nil)
			}
			p, err := countCompact(s, tc)
			total.Add(p)
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
func geminiGenerationConfig(s *jsonscan.Scanner, name string, info *requestInfo) error {
	if ok, err := s.NullOr(jsonscan.Object, name, "an object"); !ok {
		return err
	}
	maxOut, n := int64(-1), int64(1)
	err := s.Object(geminiGenConfigKeys, func(key string) (err error) {
		// The field names of errors are constants: built per request, they
		// would allocate.
		switch key {
		case "maxOutputTokens", "max_output_tokens":
			maxOut, err = s.IntField(geminiConfigField(name, key), 0, -1)
		case "candidateCount", "candidate_count":
			n, err = s.IntField(geminiConfigField(name, key), 1, 1)
		default:
			err = s.Skip(nil)
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

// clampOutput rewrites generationConfig.maxOutputTokens (either
// spelling), adding what is missing.
func (geminiDialect) clampOutput(_ string, body []byte, n int64) []byte {
	cfg := []byte(`{"maxOutputTokens":` + strconv.FormatInt(n, 10) + `}`)
	from, to, ok := jsonscan.MemberSpan(body, []string{"generationConfig", "generation_config"})
	if !ok {
		return jsonscan.AddMember(body, "generationConfig", cfg)
	}
	if body[from] == '{' {
		cfg = jsonscan.SetIntMember(body[from:to], []string{"maxOutputTokens", "max_output_tokens"}, "maxOutputTokens", n)
	}
	return append(append(append(make([]byte, 0, len(body)+len(cfg)), body[:from]...), cfg...), body[to:]...)
}

// geminiStatus is Google's status name of each of the handler's own
// answers (google.rpc.Code).
var geminiStatus = [errKindCount]errorName{
	errUnauthorized:   {typ: "UNAUTHENTICATED"},
	errInvalid:        {typ: "INVALID_ARGUMENT"},
	errTooLarge:       {typ: "INVALID_ARGUMENT"},
	errContextLength:  {typ: "INVALID_ARGUMENT"},
	errRateLimited:    {typ: "RESOURCE_EXHAUSTED"},
	errCooldown:       {typ: "RESOURCE_EXHAUSTED"},
	errUnavailable:    {typ: "UNAVAILABLE"},
	errModelNotFound:  {typ: "NOT_FOUND"},
	errBudget:         {typ: "RESOURCE_EXHAUSTED"},
	errModelNotPriced: {typ: "INVALID_ARGUMENT"},
}

// appendGeminiError appends Google's error body:
// {"error":{"code":429,"message":…,"status":"RESOURCE_EXHAUSTED"}}; a 429
// that may be retried adds a RetryInfo detail with the wait in seconds.
func appendGeminiError(dst []byte, n errorName, e *apiError) []byte {
	dst = append(dst, `{"error":{"code":`...)
	dst = strconv.AppendInt(dst, int64(e.status()), 10)
	dst = append(dst, `,"message":`...)
	dst = jsonscan.AppendString(dst, e.msg)
	dst = append(dst, `,"status":"`...)
	dst = append(dst, n.typ...)
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

// bodyHint reads RetryInfo's retryDelay ("30s", "1.5s") from an error
// body.
func (geminiDialect) bodyHint(body []byte) (time.Duration, bool) {
	v, ok := jsonscan.StringMember(body, "retryDelay")
	if !ok || len(v) > 32 {
		return 0, false
	}
	d, err := time.ParseDuration(string(v))
	if err != nil {
		return 0, false
	}
	return sane(d)
}
