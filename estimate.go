package llmratelimit

import (
	"sync"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// This file is the estimator's front end: parseRequest, which reads a
// request body, and the helpers with which the dialects' body walkers
// (dialect.parse, in each dialect's file) count its fields.
//
// A walker goes over the body once with the JSON scanner
// (internal/jsonscan). Every string the model reads as text is decoded
// straight into a costmodel.Counter, the token counter of
// internal/costmodel, without building the string. The counter has no
// tokenizer: its cost model is measured. costtable.bin.gz, embedded in
// internal/costmodel and read at init by loadCostTable, holds the class of
// each byte value and, for every triple of byte classes, the expected
// number of o200k tokens that start at a byte in that context, as
// tools/corpus measured them on its corpus. Two more tables charge long
// runs of letters (random letters, base64 or DNA split more often than
// words do), and a correction for each CJK ideograph ends the file.
// Counting is a class lookup and a table lookup per byte; the package
// comment of internal/costmodel tells the model in full.
//
// What a walker finds is summed in costmodel.Parts (text cost, text bytes,
// token ids given as numbers, messages, images), which parseRequest turns
// into requestInfo's TextTokens, Messages and Images. demandFor
// (handler.go) makes the request's input of them: text tokens, 3 per
// message, and each image's cost, times the model's token_ratio, or, under
// calibrate, the factors learned for the model and the key
// (calibrate.go).

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
