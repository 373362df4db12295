package llmratelimit

import (
	"sync"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// This file turns text into an estimated token count without a tokenizer,
// and holds the entry points that read request and response bodies.
//
// The estimate imitates how BPE tokenizers of the o200k/cl100k family work:
// text is first cut into pieces (words with an optional leading space or
// punctuation mark, groups of up to 3 digits, punctuation runs, newline
// runs, runs of indentation), then each piece becomes one token or, if rare
// or long, a few. So instead of dividing bytes by 4 the counter charges each
// byte by what it does to that segmentation: starting a word costs about one
// token, further letters of the word cost a little (long words split), a
// space before a word costs nothing, and so on. The charge of a byte
// depends on its class and the classes of the two bytes before it, so the
// whole model is one 4096-entry table built from the few constants in
// defaultCostParams, and counting is one table lookup per byte.

// The readers below join the scanner (internal/jsonscan) and the counter
// (internal/costmodel) for the dialects' walkers: each consumes the value
// at s's position and returns what its text adds to the estimate.

// countString counts the string at s.pos as one text.
func countString(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	tc.Begin()
	a, b := tc.Cost(), tc.Bytes()
	_, err := s.Str(tc, nil)
	return costmodel.Part{Cost: tc.Cost() - a, Bytes: tc.Bytes() - b}, err
}

// countCompact counts the value at s.pos as its compact JSON.
func countCompact(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	tc.Begin()
	a, b := tc.Cost(), tc.Bytes()
	err := s.Skip(tc)
	return costmodel.Part{Cost: tc.Cost() - a, Bytes: tc.Bytes() - b}, err
}

// countLoose counts a nested value where text is expected: a string as
// its text, null as nothing, anything else as its compact JSON.
func countLoose(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	switch s.Peek() {
	case jsonscan.String:
		return countString(s, tc)
	case jsonscan.Null:
		_, err := s.Literal()
		return costmodel.Part{}, err
	}
	return countCompact(s, tc)
}

// textField reads a top-level field that must be a string or null.
func textField(s *jsonscan.Scanner, tc *costmodel.Counter, name string) (costmodel.Part, error) {
	if ok, err := s.NullOr(jsonscan.String, name, "a string"); !ok {
		return costmodel.Part{}, err
	}
	return countString(s, tc)
}

// compactField reads a field that must be an array or null and counts it
// as compact JSON (tool definitions).
func compactField(s *jsonscan.Scanner, tc *costmodel.Counter, name string) (costmodel.Part, error) {
	if ok, err := s.NullOr(jsonscan.Array, name, "an array"); !ok {
		return costmodel.Part{}, err
	}
	return countCompact(s, tc)
}

// sumArray reads the array at s.pos, reading each element with elem.
func sumArray(s *jsonscan.Scanner, tc *costmodel.Counter, elem func(*jsonscan.Scanner, *costmodel.Counter) (costmodel.Part, error)) (total costmodel.Part, err error) {
	err = s.Array(func(int) error {
		p, err := elem(s, tc)
		total.Add(p)
		return err
	})
	return total, err
}

// satMul multiplies non-negative a and b, saturating at the int64 maximum.
func satMul(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	if a > (1<<63-1)/b {
		return 1<<63 - 1
	}
	return a * b
}

// parseState is one parse's scanner, counter and findings.
type parseState struct {
	s    jsonscan.Scanner
	tc   costmodel.Counter
	info requestInfo
}

var parseStates = sync.Pool{New: func() any { return new(parseState) }}

// parseRequest fills info from the body of a request of dialect d to the
// URL path (the fields of info are reset first). An invalid body, or a
// field the estimator reads having the wrong type, gives a
// *jsonscan.Error. A nil dialect reads nothing.
//
// Duplicate keys: every occurrence is validated and type-checked; the last
// one counts, as in most JSON decoders.
func parseRequest(d dialect, path string, body []byte, info *requestInfo) error {
	*info = requestInfo{N: 1}
	if d == nil {
		return nil
	}
	// The scanner and counter go to the dialect through an interface, so
	// they would escape to the heap: they come from a pool instead.
	ps := parseStates.Get().(*parseState)
	defer func() {
		ps.s = jsonscan.Scanner{} // do not keep the body
		parseStates.Put(ps)
	}()
	ps.s, ps.tc, ps.info = jsonscan.New(body), costmodel.Counter{}, requestInfo{N: 1}
	s, tc := &ps.s, &ps.tc
	switch s.Peek() {
	case jsonscan.End:
		return jsonscan.Errorf("request body is empty")
	case jsonscan.Object:
	default:
		if err := s.Skip(nil); err != nil {
			return err
		}
		return jsonscan.Errorf("request body must be a JSON object")
	}
	total, err := d.parse(s, tc, path, &ps.info)
	*info = ps.info
	if err != nil {
		return err
	}
	if s.Peek() != jsonscan.End {
		return jsonscan.Errorf("invalid JSON: unexpected data after the top-level object at offset %d", s.Pos())
	}
	info.TextTokens = total.TextTokens()
	info.Messages = total.Messages
	info.Images = total.Images
	info.ImagesLow = total.ImagesLow
	return nil
}
