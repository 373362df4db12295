package llmratelimit

import (
	"sync"
	"sync/atomic"
)

// This file is the estimator's front end: parseRequest, which reads a
// request body, and the helpers with which the dialects' body walkers
// (dialect.parse, in each dialect's file) count its fields.
//
// A walker goes over the body once with the JSON scanner (jsonscan.go).
// Every string the model reads as text is decoded straight into a
// textCounter, the token counter of costmodel.go, without building the
// string. The counter has no tokenizer: its cost model is measured.
// costtable.bin.gz, embedded and read at init by loadCostTable, holds the
// class of each byte value and, for every triple of byte classes, the
// expected number of o200k tokens that start at a byte in that context,
// as tools/corpus measured them on its corpus. Two more tables charge
// long runs of letters (random letters, base64 or DNA split more often
// than words do), and a correction for each CJK ideograph ends the file.
// Counting is a class lookup and a table lookup per byte; costmodel.go
// tells the model in full.
//
// What a walker finds is summed in parts (text cost, text bytes, token
// ids given as numbers, messages, images), which parseRequest turns into
// requestInfo's TextTokens, Messages and Images. demandFor (handler.go)
// makes the request's input of them: text tokens, 3 per message, and each
// image's cost, times the model's token_ratio, or, under calibrate, the
// factors learned for the model and the key (calibrate.go).

// part is what one piece of a body adds to the estimate. Walkers return
// parts instead of adding to a global so that a duplicate key can replace
// what its earlier occurrence added (the last occurrence wins).
type part struct {
	cost      int64 // text cost in costUnit
	bytes     int64 // decoded text bytes
	tokens    int64 // token ids given as numbers: one token each
	messages  int64
	images    int64
	imagesLow int64
}

func (p *part) add(q part) {
	p.cost += q.cost
	p.bytes += q.bytes
	p.tokens += q.tokens
	p.messages += q.messages
	p.images += q.images
	p.imagesLow += q.imagesLow
}

func sumParts(ps []part) (total part) {
	for _, p := range ps {
		total.add(p)
	}
	return total
}

// textTokens rounds the text cost up; non-empty text is at least 1 token.
func (p part) textTokens() int64 {
	t := int64(0)
	if p.cost > 0 {
		t = (p.cost + costUnit - 1) / costUnit
	}
	if t == 0 && p.bytes > 0 {
		t = 1
	}
	return t + p.tokens
}

// estimateText is the token estimate of one text.
func estimateText(text []byte) int64 {
	var tc textCounter
	tc.begin()
	tc.write(text)
	return part{cost: tc.acc, bytes: tc.bytes}.textTokens()
}

// countString counts the string at s.pos as one text.
func countString(s *jsonScanner, tc *textCounter) (part, error) {
	tc.begin()
	a, b := tc.acc, tc.bytes
	_, err := s.str(tc, nil)
	return part{cost: tc.acc - a, bytes: tc.bytes - b}, err
}

// countCompact counts the value at s.pos as its compact JSON.
func countCompact(s *jsonScanner, tc *textCounter) (part, error) {
	tc.begin()
	a, b := tc.acc, tc.bytes
	err := s.skip(tc)
	return part{cost: tc.acc - a, bytes: tc.bytes - b}, err
}

// countLoose counts a nested value where text is expected: a string as
// its text, null as nothing, anything else as its compact JSON.
func countLoose(s *jsonScanner, tc *textCounter) (part, error) {
	switch s.peek() {
	case jsonString:
		return countString(s, tc)
	case jsonNull:
		_, err := s.literal()
		return part{}, err
	}
	return countCompact(s, tc)
}

// textField reads a top-level field that must be a string or null.
func textField(s *jsonScanner, tc *textCounter, name string) (part, error) {
	if ok, err := s.nullOr(jsonString, name, "a string"); !ok {
		return part{}, err
	}
	return countString(s, tc)
}

// compactField reads a field that must be an array or null and counts it
// as compact JSON (tool definitions).
func compactField(s *jsonScanner, tc *textCounter, name string) (part, error) {
	if ok, err := s.nullOr(jsonArray, name, "an array"); !ok {
		return part{}, err
	}
	return countCompact(s, tc)
}

// intField reads an integer field that must be >= lo; null gives absent.
func intField(s *jsonScanner, name string, lo, absent int64) (int64, error) {
	if ok, err := s.nullOr(jsonNumber, name, "an integer"); !ok {
		return absent, err
	}
	raw, err := s.number()
	if err != nil {
		return 0, err
	}
	v, ok := parseJSONInt(raw)
	if !ok {
		return 0, badRequestf("%s must be an integer, not %.40s", name, raw)
	}
	if v < lo {
		return 0, badRequestf("%s must be >= %d", name, lo)
	}
	return v, nil
}

// boolField reads a boolean field; null is false.
func boolField(s *jsonScanner, name string) (bool, error) {
	if ok, err := s.nullOr(jsonBool, name, "a boolean"); !ok {
		return false, err
	}
	raw, err := s.literal()
	return err == nil && raw[0] == 't', err
}

// sumArray reads the array at s.pos, reading each element with elem.
func sumArray(s *jsonScanner, tc *textCounter, elem func(*jsonScanner, *textCounter) (part, error)) (total part, err error) {
	err = s.array(func(int) error {
		p, err := elem(s, tc)
		total.add(p)
		return err
	})
	return total, err
}

// shortField reads a short string (a type or detail name) into buf; other
// kinds are skipped and read as "". n is the decoded length, cut to buf.
func shortField(s *jsonScanner, buf []byte) (n int, err error) {
	if s.peek() != jsonString {
		return 0, s.skip(nil)
	}
	n, err = s.str(nil, buf)
	return min(n, len(buf)), err
}

// stringValue reads a field that should be a string and returns it
// decoded (interned when it has no escapes: model names repeat); other
// kinds are skipped and give "".
func stringValue(s *jsonScanner) (string, error) {
	if s.peek() != jsonString {
		return "", s.skip(nil)
	}
	start := s.pos
	n, err := s.str(nil, nil)
	if err != nil {
		return "", err
	}
	raw := s.data[start+1 : s.pos-1]
	if n == len(raw) {
		return intern(raw), nil
	}
	buf := make([]byte, n)
	s.pos = start
	_, err = s.str(nil, buf)
	return string(buf), err
}

// internTable keeps the strings that stringValue read lately (model
// names, mostly), so that a request naming one seen before costs no
// allocation for it: a fixed table of slots by hash, each holding the last
// string that landed on it. Memory stays bounded whatever clients send.
var internTable [256]atomic.Pointer[string]

// maxInterned bounds the strings kept in internTable.
const maxInterned = 64

// intern is string(b), from internTable when it holds it.
func intern(b []byte) string {
	if len(b) == 0 || len(b) > maxInterned {
		return string(b)
	}
	h := uint32(2166136261) // FNV-1a
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	slot := &internTable[h%uint32(len(internTable))]
	if p := slot.Load(); p != nil && *p == string(b) {
		return *p
	}
	str := string(b)
	slot.Store(&str)
	return str
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
	s    jsonScanner
	tc   textCounter
	info requestInfo
}

var parseStates = sync.Pool{New: func() any { return new(parseState) }}

// parseRequest fills info from the body of a request of dialect d to the
// URL path (the fields of info are reset first). An invalid body, or a
// field the estimator reads having the wrong type, gives a
// *badRequestError. A nil dialect reads nothing.
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
		ps.s.data = nil // do not keep the body
		parseStates.Put(ps)
	}()
	ps.s, ps.tc, ps.info = jsonScanner{data: body}, textCounter{}, requestInfo{N: 1}
	s, tc := &ps.s, &ps.tc
	switch s.peek() {
	case jsonEnd:
		return badRequestf("request body is empty")
	case jsonObject:
	default:
		if err := s.skip(nil); err != nil {
			return err
		}
		return badRequestf("request body must be a JSON object")
	}
	total, err := d.parse(s, tc, path, &ps.info)
	*info = ps.info
	if err != nil {
		return err
	}
	if s.ws(); s.pos < len(s.data) {
		return badRequestf("invalid JSON: unexpected data after the top-level object at offset %d", s.pos)
	}
	info.TextTokens = total.textTokens()
	info.Messages = total.messages
	info.Images = total.images
	info.ImagesLow = total.imagesLow
	return nil
}
