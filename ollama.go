package llmratelimit

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// This file knows Ollama's native API: the paths and request bodies of
// /api/chat, /api/generate and /api/embed, the counts its answers end with
// (prompt_eval_count, eval_count), its NDJSON streams and its error body
// {"error":"…"}. Ollama's OpenAI-compatible endpoints (/v1/…) are
// OpenAI's dialect.

// ollamaDialect is the dialect of Ollama's native API.
type ollamaDialect struct{}

func init() { registerDialect(ollamaDialect{}) }

// ollamaSpec is Ollama's format as data.
var ollamaSpec = dialectSpec{
	name: "ollama",
	// Ollama has no keys of its own; clients put a gateway's key in a
	// bearer token (ollama-js and the Go client send the headers given).
	credentials: []credential{{header: "Authorization", bearer: true, rank: 0}},
	// Ollama sends no rate-limit headers; the gateway's are the
	// x-ratelimit-* family.
	rateHeaders: nil,
	// An image is resized to the model's vision tiles: the flat cost SPEC
	// gives, unless a model block sets image_tokens.
	image:     imageCost{full: 765, low: 765},
	errorBody: appendOllamaError,
	// A full queue (OLLAMA_MAX_QUEUE) answers 503 "server busy": retried as
	// a 429 is.
	busy: []int{http.StatusServiceUnavailable},
	usage: usageSpec{
		// The counts are members of the answer's last object itself: the
		// whole answer, or a stream's line with "done":true. A missing
		// count is 0 (Ollama leaves out prompt_eval_count when the prompt
		// was all cached).
		schemes: []usageNames{{input: "prompt_eval_count", output: "eval_count"}},
	},
	stream: framingNDJSON,
}

func (ollamaDialect) spec() *dialectSpec { return &ollamaSpec }

// The endpoints whose bodies the dialect reads, by how their path ends.
const (
	ollamaChat     = "/api/chat"
	ollamaGenerate = "/api/generate"
	ollamaEmbed    = "/api/embed"
)

func (ollamaDialect) matchPath(path string) bool {
	path = strings.TrimSuffix(path, "/")
	return strings.HasSuffix(path, ollamaChat) || strings.HasSuffix(path, ollamaGenerate) || strings.HasSuffix(path, ollamaEmbed)
}

// ownsPath: Ollama's other endpoints (the older /api/embeddings, /api/show,
// /api/tags, /api/ps, /api/version) answer in its shape.
func (ollamaDialect) ownsPath(path string) bool {
	for _, p := range [...]string{"/api/embeddings", "/api/show", "/api/tags", "/api/ps", "/api/version"} {
		if strings.HasSuffix(strings.TrimSuffix(path, "/"), p) {
			return true
		}
	}
	return false
}

// The keys each object walker reads.
var (
	ollamaTopKeys     = []string{"model", "messages", "prompt", "suffix", "system", "images", "context", "input", "tools", "options", "stream"}
	ollamaMessageKeys = []string{"content", "images", "tool_calls", "thinking"}
	ollamaOptionKeys  = []string{"num_predict"}
)

// parse reads a chat, generate or embed body. Streaming is on unless the
// body says "stream": false; embed never streams and generates nothing.
func (ollamaDialect) parse(s *jsonscan.Scanner, tc *costmodel.Counter, path string, info *requestInfo) (costmodel.Part, error) {
	embed := strings.HasSuffix(strings.TrimSuffix(path, "/"), ollamaEmbed)
	info.NoOutput, info.Stream = embed, !embed
	var slots [8]costmodel.Part // messages, prompt, suffix, system, images, context, input, tools
	err := s.Object(ollamaTopKeys, func(key string) (err error) {
		switch key {
		case "model":
			info.Model, err = s.StringValue()
		case "messages":
			slots[0], err = ollamaMessages(s, tc)
		case "prompt":
			slots[1], err = textField(s, tc, "prompt")
			slots[1].Messages = 1
		case "suffix":
			slots[2], err = textField(s, tc, "suffix")
		case "system":
			slots[3], err = textField(s, tc, "system")
		case "images":
			slots[4], err = ollamaImages(s, "images")
		case "context": // the token ids of an earlier answer
			if ok, e := s.NullOr(jsonscan.Array, "context", "an array"); !ok {
				return e
			}
			slots[5], err = tokenIDs(s, tc)
		case "input":
			slots[6], err = ollamaInput(s, tc)
		case "tools":
			slots[7], err = compactField(s, tc, "tools")
		case "options":
			err = ollamaOptions(s, info)
		case "stream":
			if s.Peek() == jsonscan.Null { // the default
				_, err = s.Literal()
				break
			}
			var stream bool
			stream, err = s.BoolField("stream")
			info.Stream = stream && !embed
		default:
			err = s.Skip(nil)
		}
		return err
	})
	return costmodel.Sum(slots[:]), err
}

// ollamaMessages reads chat "messages": each one's content, thinking,
// tool calls and images.
func ollamaMessages(s *jsonscan.Scanner, tc *costmodel.Counter) (total costmodel.Part, err error) {
	if ok, err := s.NullOr(jsonscan.Array, "messages", "an array"); !ok {
		return costmodel.Part{}, err
	}
	err = s.Array(func(i int) error {
		if s.Peek() != jsonscan.Object {
			return s.TypeError(fmt.Sprintf("messages[%d]", i), "an object")
		}
		var slots [4]costmodel.Part
		err := s.Object(ollamaMessageKeys, func(key string) (err error) {
			switch key {
			case "content":
				slots[0], err = countLoose(s, tc)
			case "thinking":
				slots[1], err = countLoose(s, tc)
			case "tool_calls":
				slots[2], err = countCompact(s, tc)
			case "images":
				slots[3], err = ollamaImages(s, fmt.Sprintf("messages[%d].images", i))
			default:
				err = s.Skip(nil)
			}
			return err
		})
		p := costmodel.Sum(slots[:])
		p.Messages++
		total.Add(p)
		return err
	})
	return total, err
}

// ollamaImages counts a list of images (base64 data, never counted as
// text).
func ollamaImages(s *jsonscan.Scanner, name string) (p costmodel.Part, err error) {
	if ok, err := s.NullOr(jsonscan.Array, name, "an array"); !ok {
		return costmodel.Part{}, err
	}
	err = s.Array(func(int) error {
		p.Images++
		return s.Skip(nil)
	})
	return p, err
}

// ollamaInput reads embed's input: a string or a list of strings, one
// input each.
func ollamaInput(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	switch s.Peek() {
	case jsonscan.String:
		p, err := countString(s, tc)
		p.Messages = 1
		return p, err
	case jsonscan.Array:
		return sumArray(s, tc, func(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
			p, err := countLoose(s, tc)
			p.Messages++
			return p, err
		})
	case jsonscan.Null:
		_, err := s.Literal()
		return costmodel.Part{}, err
	}
	return costmodel.Part{}, s.TypeError("input", "a string or an array")
}

// ollamaOptions reads options.num_predict, the output limit: -1
// (unbounded) and -2 (fill the context) leave the model's default.
func ollamaOptions(s *jsonscan.Scanner, info *requestInfo) error {
	if ok, err := s.NullOr(jsonscan.Object, "options", "an object"); !ok {
		return err
	}
	return s.Object(ollamaOptionKeys, func(key string) error {
		if key != "num_predict" {
			return s.Skip(nil)
		}
		n, err := s.IntField("options.num_predict", -2, -1)
		if n >= 0 {
			info.MaxOutput = n
		}
		return err
	})
}

// clampOutput rewrites options.num_predict, adding what is missing.
func (ollamaDialect) clampOutput(_ string, body []byte, n int64) []byte {
	opts := []byte(`{"num_predict":` + fmt.Sprint(n) + `}`)
	from, to, ok := jsonscan.MemberSpan(body, []string{"options"})
	if !ok {
		return jsonscan.AddMember(body, "options", opts)
	}
	if body[from] == '{' {
		opts = jsonscan.SetIntMember(body[from:to], []string{"num_predict"}, "num_predict", n)
	}
	return append(append(append(make([]byte, 0, len(body)+len(opts)), body[:from]...), opts...), body[to:]...)
}

// jsonUsage reads the counts at the end of a whole answer (its tail): a
// chat or generate answer ends "done": true with them; an embed answer
// has prompt_eval_count and no done.
func (ollamaDialect) jsonUsage(body []byte) (usage, bool) {
	names := &ollamaSpec.usage.schemes[0]
	in, inOK := ollamaCount(body, names.input)
	out, outOK := ollamaCount(body, names.output)
	if !inOK && !outOK && !ollamaDone(body) {
		return usage{}, false
	}
	return usage{Input: in, Output: out, Read: in}, true
}

// streamEvent: each NDJSON line is one object; the one with "done":true
// carries the counts and ends the stream, and so does an {"error":"…"}
// line (the answer is already 200; its reservation stands).
func (ollamaDialect) streamEvent(data []byte, acc *usageAcc) bool {
	if ollamaDone(data) {
		acc.add(data, ollamaSpec.memberNames)
		acc.final = true
		return true
	}
	return jsonscan.MemberValue(data, "error", 0) >= 0
}

// streamUsage: the done line's counts, a missing one 0; none before it.
func (ollamaDialect) streamUsage(acc *usageAcc) (usage, bool) {
	if !acc.final {
		return usage{}, false
	}
	sl := &ollamaSpec.slots[0]
	var in, out int64
	if acc.has(sl[slotInput]) {
		in = acc.v[sl[slotInput]]
	}
	if acc.has(sl[slotOutput]) {
		out = acc.v[sl[slotOutput]]
	}
	return usage{Input: in, Output: out, Read: in}, true
}

// ollamaDone tells an object that holds "done": true.
func ollamaDone(b []byte) bool {
	v := jsonscan.MemberValue(b, "done", 0)
	return v >= 0 && bytes.HasPrefix(b[v:], []byte("true"))
}

// ollamaCount is the last non-negative integer member name in b.
func ollamaCount(b []byte, name string) (int64, bool) {
	var n int64
	found := false
	for i := 0; ; {
		v := jsonscan.MemberValue(b, name, i)
		if v < 0 {
			return n, found
		}
		end := v
		for end < len(b) && b[end] >= '0' && b[end] <= '9' {
			end++
		}
		if x, ok := jsonscan.ParseInt(b[v:end]); ok && end > v {
			n, found = x, true
		}
		i = v
	}
}

// appendOllamaError appends Ollama's error body: {"error":"<message>"}.
func appendOllamaError(dst []byte, _ errorName, e *apiError) []byte {
	dst = append(dst, `{"error":`...)
	dst = jsonscan.AppendString(dst, e.msg)
	return append(dst, '}')
}
